"""The order of the data and the seeds of every draw: a pure function of (seed, position).

The index stream is a seeded epoch-permutation stream that each global batch takes the next
``batch_size`` positions of, split into disjoint rank shards (:func:`rank_slice`). Because it is a pure
function of (seed, images consumed so far), the data position saved in a checkpoint is a single
integer and resuming continues the exact sequence; it also stays correct when the world size changes
between runs. :func:`derive_seed` gives every other draw (a step's t/noise/dropout, the grid noise, the
latent sampling) its own stream from the run seed and a purpose tag.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fasterdit.errors import ConfigError

__all__ = ["IndexStream", "derive_seed", "rank_slice"]


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


#: derive_seed purpose tags of training's own draws (3 was the grids' noise, which now comes from
#: fasterdit.generate.seeds like every sample's; numbers are never reused)
DATA_TAG = 1
STEP_TAG = 2
LATENT_TAG = 4
INIT_TAG = 5  # the model's initialisation


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
