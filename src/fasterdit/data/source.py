"""Where training batches come from: one ``get_batch(indices, generator)`` protocol for every dataset.

Why indices and not a DataLoader: the embedded sets fit in memory (MNIST is 14 MB), so a batch is one
fancy-indexing op on a resident tensor -- no worker processes, no collation, no host copies. Prepared
shards (:class:`~fasterdit.data.prepared.PreparedDataset`) are memory-mapped and indexed the same way.
Which indices, in which order, is the trainer's business (:mod:`fasterdit.train.data_order`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from fasterdit.data.embedded import EMBEDDED, Origin, load_embedded
from fasterdit.data.prepared import PreparedDataset
from fasterdit.data.stats import DataStats
from fasterdit.errors import ConfigError

__all__ = ["BatchSource", "EmbeddedSource", "open_source"]


class BatchSource(Protocol):
    """What the trainer needs from a dataset."""

    channels: int
    resolution: int
    num_classes: int
    is_latent: bool
    vae: str | None
    origin: Origin | None  # the embedded dataset the images come from (offline evaluation), if any
    stats: DataStats  # per-channel mean and std in data space, measured once (the pooled std is its)

    def __len__(self) -> int: ...

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class EmbeddedSource:
    """An embedded dataset split held as one tensor (optionally on the training device)."""

    is_latent = False
    vae = None

    def __init__(self, name: str, split: str = "train", device: torch.device | str = "cpu"):
        self.name = name
        self.split = split
        x, y = load_embedded(name, split)
        self.images = x.to(device)
        self.labels = y.to(device)
        self.channels = int(x.shape[1])
        self.resolution = int(x.shape[-1])
        self.num_classes = int(y.max()) + 1
        self.origin = Origin(name, split, self.resolution)
        # population statistics in float64: they feed the recipe's data scaling and the SNR plot
        xd = x.double()
        dims = (0, 2, 3)
        self.stats = DataStats.of(xd.mean(dim=dims).tolist(), xd.std(dim=dims, correction=0).tolist())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` of the resident tensors (no randomness: the generator is unused)."""
        idx = indices.to(self.images.device)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def __repr__(self) -> str:
        shape = f"{self.channels}x{self.resolution}x{self.resolution}"
        return f"EmbeddedSource({self.name}/{self.split}, {len(self)} images, {shape})"


def open_source(spec: str, split: str = "train", device: torch.device | str = "cpu") -> BatchSource:
    """An embedded dataset by name, or a folder written by ``fasterdit prepare``."""
    if spec in EMBEDDED:
        return EmbeddedSource(spec, split, device)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            "data.source",
            f"{spec!r} is neither an embedded dataset ({', '.join(EMBEDDED)}) nor an existing directory",
        )

    return PreparedDataset(path)
