"""The small digit classifier whose penultimate features define FID on the embedded datasets.

Why our own network instead of Inception-v3: Inception's weights cannot be downloaded here, it is
~100 MB, slow on a CPU, and was trained on ImageNet photographs, not 28x28 digits. A ~100k-parameter
CNN trained on the embedded MNIST training split (``scripts/train_classifier.py``, seeded) gives a
feature space that is cheap (thousands of images per second on a CPU) and *about* digits, so FID in it
tracks sample quality of digit generators; its argmax gives the class accuracy of conditional samples.

Numbers computed with these features ("FID-clf") are **not** comparable with Inception FIDs of
papers; they are comparable between fasterdit runs at equal sample count and reference set.

Weights ship as safetensors in ``fasterdit/assets/classifier_<dataset>.safetensors``; the network's
configuration and its measured held-out accuracy are stored in the file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from fasterdit.errors import DataError


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of a :class:`DigitClassifier`; stored in the weights file so loading needs no code change."""

    resolution: int = 28
    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    num_classes: int = 10


CONFIGS: dict[str, ClassifierConfig] = {
    "mnist": ClassifierConfig(resolution=28, widths=(16, 32, 64), feature_dim=128),
    "digits": ClassifierConfig(resolution=8, widths=(16, 32), feature_dim=32),
}


class DigitClassifier(nn.Module):
    """VGG-style CNN: per stage two 3x3 conv + BN + SiLU, 2x2 max-pool between stages, global average
    pool, a ``feature_dim`` SiLU layer (the penultimate features used for FID), a linear head.

    SiLU rather than ReLU so that the penultimate features have no dead (always-zero) units, which
    would make the feature covariance singular.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for i, width in enumerate(config.widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.SiLU()]
                c_in = width
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c_in, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded initialisation (He for convolutions, LeCun-uniform for linear layers)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim) of images in [-1, 1]."""
        h = self.body(x).mean(dim=(2, 3))
        return F.silu(self.embed(h))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) in one pass."""
        f = self.features(x)
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_classifier_input(images: torch.Tensor | np.ndarray, resolution: int | None = None) -> torch.Tensor:
    """Images -> float32 (N, 1, H, W) in [-1, 1], quantised to 8 bits exactly like a saved PNG.

    Accepts float tensors/arrays (N, 1, H, W) or (N, H, W) in [-1, 1] (values outside are clamped, as
    any image writer would), or uint8 arrays (N, H, W), (N, H, W, 1) or (N, 1, H, W) in 0..255 such as
    the ``arr_0`` of a samples ``.npz``. Quantising generated samples puts them in the same
    pipeline as the (8-bit) real images, so FID does not reward sub-quantum noise.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.float().div(127.5).sub(1.0)
    else:
        x = x.detach().float()
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().div(127.5).sub(1.0)
    if x.ndim != 4:
        raise DataError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 3:  # RGB samples of a gray dataset: luminance (ITU-R 601, like PIL's "L")
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(-1.0, 1.0)
    if x.shape[1] != 1:
        raise DataError(f"the digit classifier takes 1-channel images, got {x.shape[1]} channels")
    if resolution is not None and tuple(x.shape[-2:]) != (resolution, resolution):
        raise DataError(
            f"images are {x.shape[-2]}x{x.shape[-1]} but the classifier expects {resolution}x{resolution}"
        )
    if not torch.isfinite(x).all():
        raise DataError("images contain NaN or inf (did sampling diverge?)")
    return x.contiguous()


@torch.no_grad()
def classifier_outputs(
    model: DigitClassifier, images: torch.Tensor | np.ndarray, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float64 (N, D), logits float64 (N, K)) of images, batched, in eval mode."""
    x = to_classifier_input(images, model.config.resolution)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        f, lg = model.forward_features(x[i : i + batch_size].to(device))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(logits)


def save_classifier(model: DigitClassifier, path: str | Path, **metadata: object) -> Path:
    """Write weights (float32) + config + free-form metadata (e.g. held-out accuracy) as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    meta = {"config": json.dumps(asdict(model.config))}
    meta.update({k: json.dumps(v) for k, v in metadata.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # package data must be readable by every user of an installed package
    tmp.replace(path)
    return path


def asset_path(dataset: str) -> Path:
    """Path of the shipped weights for ``dataset`` (inside the installed package)."""
    return Path(str(resources.files("fasterdit").joinpath("assets", f"classifier_{dataset}.safetensors")))


def read_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[DigitClassifier, dict]:
    """Load a classifier and its metadata (config, held-out accuracy, seed, ...) from safetensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classifier weights not found: {path} (train them with scripts/train_classifier.py)")
    with safe_open(str(path), framework="pt") as f:
        raw_meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if "config" not in raw_meta:
        raise DataError(f"{path} is not a fasterdit classifier file (no 'config' metadata)")
    cfg = json.loads(raw_meta["config"])
    cfg["widths"] = tuple(cfg["widths"])
    model = DigitClassifier(ClassifierConfig(**cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not match the stored config (missing {missing}, unexpected {unexpected})"
        )
    meta = {k: json.loads(v) for k, v in raw_meta.items()}
    model.eval().requires_grad_(False).to(device)
    return model, meta


_CACHE: dict[tuple[str, str], tuple[DigitClassifier, dict]] = {}


def load_classifier(
    dataset: str = "mnist", path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[DigitClassifier, dict]:
    """The shipped (or a given) classifier for an embedded dataset, cached per (file, device)."""
    if path is None:
        if dataset not in CONFIGS:
            raise DataError(f"no shipped classifier for dataset {dataset!r}; available: {', '.join(CONFIGS)}")
        path = asset_path(dataset)
    key = (str(Path(path).resolve()), str(device))
    if key not in _CACHE:
        _CACHE[key] = read_classifier(path, device)
    return _CACHE[key]
