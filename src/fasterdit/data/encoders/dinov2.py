"""DINOv2 (Oquab et al. 2024) through transformers' ``Dinov2Model``: REPA's default encoder.

REPA's preprocessing (its ``train.py``): pixels to [0, 1], ImageNet mean/std normalisation, bicubic resize
to 224 px for a 256 px image (16 x 16 patches of 14 px: the DiT-XL/2 token grid), and the normalised patch
tokens (timm/hub ``x_norm_patchtokens``, i.e. transformers' ``last_hidden_state`` without the CLS token:
the final layer norm is applied in both). Here the resize targets ``grid x 14`` for any grid.

transformers is an optional dependency (``pip install transformers``), imported when a DINOv2 is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fasterdit.data.encoders.base import FeatureEncoder
from fasterdit.errors import ConfigError

__all__ = ["DINOV2_NAMES", "Dinov2Encoder", "load_dinov2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: short names (REPA's ``dinov2-vit-b`` and its siblings) -> hub ids of the transformers checkpoints
DINOV2_NAMES = {
    "dinov2-vits14": "facebook/dinov2-small",
    "dinov2-vitb14": "facebook/dinov2-base",
    "dinov2-vitl14": "facebook/dinov2-large",
    "dinov2-vitg14": "facebook/dinov2-giant",
}


class Dinov2Encoder(FeatureEncoder):
    """A transformers ``Dinov2Model`` as a :class:`FeatureEncoder` (frozen, eval mode)."""

    channels = 3

    def __init__(self, model, name: str):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.dim = int(model.config.hidden_size)
        self.patch = int(model.config.patch_size)

    def grid_features(self, x: Tensor) -> Tensor:
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        hidden = self.model(pixel_values=x).last_hidden_state  # (N, 1 + T, D), after the final layernorm
        patches = hidden[:, 1:]  # drop CLS: DINOv2's normalised patch tokens
        return patches.transpose(1, 2).reshape(x.shape[0], self.dim, gh, gw)


def load_dinov2(spec: str, device: torch.device | str = "cpu") -> Dinov2Encoder:
    """A DINOv2 by short name (:data:`DINOV2_NAMES`), hub id or local folder of a ``Dinov2Model``."""
    try:
        from transformers import Dinov2Model  # lazy: an optional, heavy dependency
    except ImportError:
        raise ConfigError(
            "recipe.align.encoder", f"{spec!r} needs transformers: pip install transformers"
        ) from None
    source = DINOV2_NAMES.get(spec, spec)
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
    try:
        # use_kernels=False: transformers 5 would otherwise fetch hub kernels (and fail without `kernels`)
        model = Dinov2Model.from_pretrained(source, use_kernels=False)
    except OSError as err:
        raise ConfigError(
            "recipe.align.encoder", f"cannot load a Dinov2Model from {source!r} ({str(err).splitlines()[0]})"
        ) from None
    return Dinov2Encoder(model, spec).to(device)
