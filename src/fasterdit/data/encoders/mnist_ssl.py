"""The small self-supervised encoder fasterdit ships for REPA on the embedded digits (``mnist-ssl``).

DINOv2 is trained on 142M natural images and means nothing to 28 x 28 digits, and a 300 MB download
would defeat the laptop test bed. This is the stand-in: a 5-layer ConvNet (~0.17M parameters) trained by
``scripts/train_ssl_encoder.py`` **without labels** (SimCLR: two augmented views of each digit, InfoNCE
on the pooled features) on the MNIST training split only, so it is neither the evaluation classifier
(``eval/classifier.py``, trained with labels) nor trained on the held-out digits the evaluation scores
against. Its last feature map has stride 8: a 32 x 32 input (the digits padded as for ``mnist-ae``) gives
the 4 x 4 grid of DiT-Ti/2 on 8 x 8 latents. docs/repa.md says why it is a fair stand-in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fasterdit.data.encoders.base import FeatureEncoder
from fasterdit.errors import DataError

__all__ = ["ASSET", "MNIST_SSL", "MnistSSLEncoder", "MnistSSLNet", "load_mnist_ssl"]

MNIST_SSL = "mnist-ssl"
ASSET = "encoder_mnist_ssl.safetensors"
WIDTHS = (32, 64, 96)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class MnistSSLNet(nn.Module):
    """1 x H x W -> 128 x H/8 x W/8: three stride-2 convolutions, a 3x3 and a 1x1 at the final resolution."""

    dim = 128
    stride = 8

    def __init__(self):
        super().__init__()
        w1, w2, w3 = WIDTHS
        self.body = nn.Sequential(
            _conv(1, w1, 2), _conv(w1, w2, 2), _conv(w2, w3, 2), _conv(w3, w3, 1),
            nn.Conv2d(w3, self.dim, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MnistSSLEncoder(FeatureEncoder):
    """:class:`MnistSSLNet` as a frozen :class:`FeatureEncoder`: gray input in [-1, 1] (mean 0.5, std 0.5
    after the shift to [0, 1], i.e. the [-1, 1] values it was trained on)."""

    channels = 1

    def __init__(self, net: MnistSSLNet):
        super().__init__((0.5,), (0.5,))
        self.net = net.eval().requires_grad_(False)
        self.name = MNIST_SSL
        self.dim = net.dim
        self.patch = net.stride

    def grid_features(self, x: Tensor) -> Tensor:
        return self.net(x)


def asset_path() -> Path:
    return Path(str(resources.files("fasterdit").joinpath("assets", ASSET)))


def load_mnist_ssl(device: torch.device | str = "cpu", path: Path | None = None) -> MnistSSLEncoder:
    """The shipped encoder (or the weights at ``path``, e.g. a fresh run of the training script)."""
    path = path or asset_path()
    if not path.is_file():
        raise DataError(
            f"{path}: the {MNIST_SSL} encoder weights are missing; run scripts/train_ssl_encoder.py"
        )
    net = MnistSSLNet()
    net.load_state_dict(load_file(str(path)))
    return MnistSSLEncoder(net).to(device)
