"""Streaming per-channel mean / variance, exact in float64 and mergeable across chunks and ranks.

Why not ``x.std()`` over the whole dataset: a dataset of VAE latents or images does not fit in
memory, and the data standard deviation drives the extended log-SNR (see
:mod:`fasterdit.diffusion.snr`), so it must be exact, not an estimate from "a few batches".

The running state per channel is ``(count, mean, M2)`` with ``M2 = Σ (x - mean)²``. Two states are
combined with the parallel formula of Chan, Golub & LeVeque (1979)::

    n = n_a + n_b,   δ = mean_b - mean_a
    mean = mean_a + δ · n_b / n
    M2   = M2_a + M2_b + δ² · n_a · n_b / n

which is numerically stable (no catastrophic ``E[x²] - E[x]²`` cancellation), so per-batch
statistics, chunks of a shard, and ranks of a distributed job all merge into the same numbers a
single pass over all the data would give. Everything is accumulated in float64 even for bf16/fp16
inputs. Variances are population variances (``ddof = 0``, as ``numpy.var``): the data std that
enters the SNR is a property of the distribution, not an unbiased estimate from a sample.

What the rest of the library reads is one :class:`DataStats` value (per-channel mean and std, measured
once by the data source), and its :attr:`DataStats.pooled_std` is the one pooled-std formula: the
recipe's ``std`` scaling, the SNR analyser and the run's summary all take it from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DataStats", "RunningStats", "pooled_std"]


def pooled_std(mean: Sequence[float], std: Sequence[float]) -> float:
    """THE pooled std: the std of all values of all channels together, from per-channel population
    mean and std (equal counts per channel)::

        pooled² = mean_c(std_c² + mean_c²) − (mean_c mean_c)²

    i.e. the second moment minus the squared mean, which is the within-channel spread plus the spread of
    the channel means (what ``x.std(correction=0)`` over the whole dataset gives). Every pooled std in
    the library is this function.
    """
    n = len(std)
    m = sum(mean) / n
    second = sum(s * s + mu * mu for mu, s in zip(mean, std)) / n
    return max(second - m * m, 0.0) ** 0.5


@dataclass(frozen=True)
class DataStats:
    """The data's measured statistics in data space (before the recipe's scaling), per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.std or len(self.mean) != len(self.std):
            raise ValueError(f"DataStats needs equal-length, non-empty mean and std: {self.mean}, {self.std}")

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> DataStats:
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    @classmethod
    def from_stds(cls, std: Sequence[float]) -> DataStats:
        """Only the channel stds are known: the channel means are taken as equal (their spread is 0)."""
        return cls.of([0.0] * len(std), std)

    @property
    def channels(self) -> int:
        return len(self.std)

    @property
    def pooled_std(self) -> float:
        """The std of all values together (:func:`pooled_std`)."""
        return pooled_std(self.mean, self.std)


class RunningStats:
    """Per-channel running mean and variance (float64), fed batch by batch.

    Example::

        stats = RunningStats()
        for x, _ in loader:               # x: (N, C, H, W)
            stats.update(x)               # channel_dim=1
        stats.all_reduce()                # no-op unless torch.distributed is initialised
        stats.mean, stats.std, stats.pooled_std
    """

    def __init__(self, num_channels: int | None = None):
        self.num_channels: int | None = None
        self.count: int = 0  # number of values seen *per channel* (the same for every channel)
        self._mean = torch.zeros(0, dtype=torch.float64)
        self._m2 = torch.zeros(0, dtype=torch.float64)
        if num_channels is not None:
            self._init_channels(int(num_channels))

    # ------------------------------------------------------------------ state
    def _init_channels(self, c: int) -> None:
        if c <= 0:
            raise ValueError(f"RunningStats needs at least one channel, got {c}")
        self.num_channels = c
        self._mean = torch.zeros(c, dtype=torch.float64)
        self._m2 = torch.zeros(c, dtype=torch.float64)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al. parallel update of this state with a second (count, mean, M2) state."""
        if n_b == 0:
            return
        if self.num_channels is None:
            self._init_channels(mean_b.numel())
        if mean_b.numel() != self.num_channels:
            raise ValueError(
                f"RunningStats has {self.num_channels} channels but the new data has {mean_b.numel()}"
            )
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta.square() * (n_a * n_b / n)
        self.count = n

    def update(self, x: torch.Tensor | np.ndarray, channel_dim: int | None = 1) -> RunningStats:
        """Add a batch. ``x`` may have any shape; ``channel_dim`` says which axis holds the channels
        (default 1, i.e. ``(N, C, ...)``); ``None`` treats every value as one channel.

        Non-finite values raise: a NaN silently poisoning the data std would mis-scale a whole run.
        """
        x = torch.as_tensor(x)
        if channel_dim is None:
            flat = x.reshape(-1, 1)
        else:
            if x.dim() == 0:
                raise ValueError("RunningStats.update needs a tensor with a channel axis; got a scalar")
            flat = x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
        if flat.shape[0] == 0:
            return self
        flat = flat.detach().to(torch.float64)
        if not torch.isfinite(flat).all():
            raise ValueError("RunningStats.update got NaN or infinite values")
        mean_b = flat.mean(dim=0)
        m2_b = (flat - mean_b).square().sum(dim=0)
        self._combine(int(flat.shape[0]), mean_b.cpu(), m2_b.cpu())
        return self

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold another RunningStats into this one (in place); returns self."""
        self._combine(other.count, other._mean, other._m2)
        return self

    # -------------------------------------------------------------- results
    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("RunningStats has seen no data yet")

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean, float64 tensor (C,)."""
        self._require_data()
        return self._mean.clone()

    @property
    def var(self) -> torch.Tensor:
        """Per-channel population variance (ddof=0), float64 tensor (C,)."""
        self._require_data()
        return self._m2 / self.count

    @property
    def std(self) -> torch.Tensor:
        """Per-channel population standard deviation, float64 tensor (C,)."""
        return self.var.sqrt()

    @property
    def pooled_mean(self) -> float:
        """Mean of all values of all channels together."""
        self._require_data()
        return float(self._mean.mean())

    @property
    def pooled_var(self) -> float:
        """Variance of all values of all channels together, i.e. what ``x.var()`` over the whole
        dataset gives: within-channel spread plus the spread of the channel means."""
        self._require_data()
        between = (self._mean - self._mean.mean()).square().sum() * self.count
        return float((self._m2.sum() + between) / (self.count * self.num_channels))

    @property
    def pooled_std(self) -> float:
        """Standard deviation of all values of all channels together (``x.std(unbiased=False)``), by the
        one formula of :func:`pooled_std`."""
        return self.data_stats().pooled_std

    def data_stats(self) -> DataStats:
        """The measured statistics as the value the rest of the library reads."""
        self._require_data()
        return DataStats.of(self.mean.tolist(), self.std.tolist())

    # ---------------------------------------------------------- distributed
    def all_reduce(self, group: Any = None) -> RunningStats:
        """Combine the statistics of every rank in place, so all ranks end with the global result.

        Exact (not an average of per-rank stds): first the global count and mean
        (Σ n_r and Σ n_r·mean_r), then ``M2 = Σ_r [M2_r + n_r (mean_r - mean)²]``. Ranks that saw
        no data take part with zeros. A no-op when torch.distributed is not initialised. Tensors
        travel on the current CUDA device for the NCCL backend, on the CPU otherwise.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        backend = dist.get_backend(group)
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if str(backend).lower() == "nccl"
            else torch.device("cpu")
        )
        # Agree on the channel count first; every rank reaches the same decision, so no deadlock.
        c = self.num_channels or 0
        c_max = torch.tensor([c], dtype=torch.int64, device=device)
        c_min = torch.tensor([c if c else 2**62], dtype=torch.int64, device=device)
        dist.all_reduce(c_max, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(c_min, op=dist.ReduceOp.MIN, group=group)
        c_max_i, c_min_i = int(c_max.item()), int(c_min.item())
        if c_max_i == 0:
            return self  # nobody has data
        if c_min_i != c_max_i:
            raise ValueError(
                f"RunningStats.all_reduce: ranks disagree on the channel count ({c_min_i} vs {c_max_i})"
            )
        if self.num_channels is None:
            self._init_channels(c_max_i)
        n = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        weighted = (self._mean * self.count).to(device)
        dist.all_reduce(n, group=group)
        dist.all_reduce(weighted, group=group)
        total = float(n.item())
        mean = weighted / total
        m2 = self._m2.to(device) + (self._mean.to(device) - mean).square() * self.count
        dist.all_reduce(m2, group=group)
        self.count = round(total)
        self._mean = mean.cpu()
        self._m2 = m2.cpu()
        return self

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON- and torch.save-friendly) state for resumable jobs."""
        return {
            "count": int(self.count),
            "num_channels": self.num_channels,
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningStats:
        """Rebuild a RunningStats saved by :meth:`state_dict`."""
        try:
            out = cls(state.get("num_channels"))
            mean = torch.tensor(state["mean"], dtype=torch.float64)
            m2 = torch.tensor(state["m2"], dtype=torch.float64)
            count = int(state["count"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a RunningStats state dict: {err}") from err
        if out.num_channels is not None and (mean.numel() != out.num_channels or m2.numel() != mean.numel()):
            raise ValueError("RunningStats state dict: mean/m2 lengths do not match num_channels")
        if out.num_channels is not None:
            out._mean, out._m2 = mean, m2
        out.count = count
        return out

    def __repr__(self) -> str:
        if self.count == 0:
            return f"RunningStats(num_channels={self.num_channels}, count=0)"
        mean = ", ".join(f"{v:.4g}" for v in self._mean.tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.tolist())
        return (
            f"RunningStats(count={self.count}, mean=[{mean}], std=[{std}], pooled_std={self.pooled_std:.4g})"
        )
