"""Where training batches come from: one ``get_batch(indices, generator)`` protocol for every source,
and a seeded epoch-permutation index stream that splits each global batch into disjoint rank shards.

Why indices and not a DataLoader: the embedded sets fit in memory (MNIST is 14 MB), so a batch is one
fancy-indexing op on a resident tensor -- no worker processes, no collation, no host copies. Prepared
shards are memory-mapped and indexed the same way. And because the index stream is a pure function of
(seed, images consumed so far), the data position saved in a checkpoint is a single integer and resuming
continues the exact sequence; it also stays correct when the world size changes between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from fasterdit.data.embedded import EMBEDDED, Origin, load_embedded
from fasterdit.data.prepared import PreparedDataset
from fasterdit.errors import ConfigError

__all__ = ["BatchSource", "EmbeddedSource", "IndexStream", "derive_seed", "open_source", "rank_slice"]


class BatchSource(Protocol):
    """What the trainer needs from a dataset."""

    channels: int
    resolution: int
    num_classes: int
    is_latent: bool
    vae: str | None
    origin: Origin | None  # the embedded dataset the images come from (offline evaluation), if any
    channel_mean: list[float]
    channel_std: list[float]

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
        self.channel_mean = xd.mean(dim=(0, 2, 3)).tolist()
        self.channel_std = xd.std(dim=(0, 2, 3), correction=0).tolist()

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


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and integers (purpose tag, step, ...), stable across runs.

    SplitMix64 mixing, so nearby inputs give unrelated streams (seed 0 step 1 vs seed 1 step 0).
    """
    mask = (1 << 64) - 1
    h = (int(seed) * 0x9E3779B97F4A7C15) & mask
    for p in parts:
        h = (h ^ (int(p) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


DATA_TAG = 1  # derive_seed purpose tags
STEP_TAG = 2
SAMPLE_TAG = 3
LATENT_TAG = 4


@dataclass
class IndexStream:
    """Dataset indices as the concatenation of seeded random permutations, one per epoch.

    ``take(position, count)`` returns the indices at stream positions ``position .. position+count-1``:
    every item is seen once per epoch, batches may straddle an epoch boundary, and no item is dropped.
    """

    size: int
    seed: int
    device: torch.device | str = "cpu"  #: where the permutations live (the data's device: no copy per step)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError("data.source", "the dataset is empty")
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        perm = self._cache.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_TAG, epoch))
            perm = torch.randperm(self.size, generator=g).to(self.device)
            self._cache = {epoch: perm}  # keep only the current epoch (ImageNet: 10 MB per epoch)
        return perm

    def take(self, position: int, count: int) -> torch.Tensor:
        out = []
        while count > 0:
            epoch, offset = divmod(position, self.size)
            n = min(count, self.size - offset)
            out.append(self.permutation(epoch)[offset : offset + n])
            position += n
            count -= n
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=self.device)


def rank_slice(batch_size: int, world_size: int, rank: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch (the batch is divisible by the world size)."""
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)
