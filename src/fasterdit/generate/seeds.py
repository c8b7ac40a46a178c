"""Per-index randomness of a sampling job: the starting noise, the label and the step noise of sample i.

Why per index: FID-50K jobs run on any number of GPUs, with any per-GPU batch, and get killed and
resumed. If the randomness came from one generator per process (DiT's ``sample_ddp.py`` seeds
``seed * world_size + rank``), the samples would depend on the world size and the batch size, and a
resumed job could not continue the stream where it stopped. Here every sample ``i`` has its own
generators, seeded from a hash of ``(seed, stream, i)``, so its noise and its label are the same
wherever and whenever it is sampled. Everything is drawn on the CPU (the same numbers on every
device) and moved to the sampling device.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fasterdit.diffusion.sampling_base import PerSampleNoise
from fasterdit.errors import ConfigError

LABEL_MODES = ("uniform", "balanced", "given")


def index_seed(seed: int, stream: str, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of stream ``stream`` ("noise", "label", "steps")."""
    digest = hashlib.sha256(f"fasterdit/{stream}/{int(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(seed: int, stream: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(index_seed(seed, stream, index))


def initial_noise(seed: int, start: int, end: int, shape: tuple[int, ...]) -> torch.Tensor:
    """ε of samples ``start..end-1``, float32 (end − start, *shape) on the CPU."""
    rows = [torch.randn(shape, generator=_generator(seed, "noise", i)) for i in range(start, end)]
    return torch.stack(rows)


def step_noise(seed: int, start: int, end: int) -> PerSampleNoise:
    """The per-step noise source of samples ``start..end-1`` for the stochastic samplers."""
    return PerSampleNoise([_generator(seed, "steps", i) for i in range(start, end)])


def check_labels(mode: str, num_classes: int, given: tuple[int, ...] | None) -> None:
    """Refuse a label mode that cannot work for this model (before any sampling)."""
    if mode not in LABEL_MODES:
        raise ConfigError("labels", f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if num_classes <= 0 and mode == "given":
        raise ConfigError("--labels", "this model is unconditional")
    if mode == "given" and (not given or any(not 0 <= c < num_classes for c in given)):
        raise ConfigError("--labels", f"labels must be in 0..{num_classes - 1}, got {list(given or ())}")


def labels_for(
    seed: int,
    start: int,
    end: int,
    *,
    num_classes: int,
    mode: str = "uniform",
    num_samples: int | None = None,
    given: tuple[int, ...] | None = None,
) -> torch.Tensor | None:
    """Class labels of samples ``start..end-1`` (long, CPU), or None for an unconditional model.

    * ``uniform``: each label uniform in 0..K−1 from the sample's own generator (DiT's protocol:
      uniform random classes from the seed);
    * ``balanced``: ``i mod K``, so every class gets N/K samples when K divides N (e.g. 50 per class
      at N = 50,000 on ImageNet);
    * ``given``: the listed classes, each an equal consecutive share of ``num_samples`` (a grid row
      per label).
    """
    if num_classes <= 0:
        return None
    check_labels(mode, num_classes, given)
    idx = range(start, end)
    if mode == "balanced":
        return torch.tensor([i % num_classes for i in idx], dtype=torch.long)
    if mode == "given":
        assert given is not None and num_samples is not None
        per = math.ceil(num_samples / len(given))
        return torch.tensor([given[i // per] for i in idx], dtype=torch.long)
    draws = [int(torch.randint(num_classes, (1,), generator=_generator(seed, "label", i))) for i in idx]
    return torch.tensor(draws, dtype=torch.long)
