"""A training step's statistics by name, and the one-tensor form they travel in.

Why a tensor form at all: a step's numbers (loss, loss terms, the stop flag, finite-or-not, gradient
norm) leave the device as ONE tensor -- one all-reduce over the ranks and one non-blocking copy to the
host a step later (the trainer's "lagged read"), so the GPU queue never waits for the host. Why this
module: the tensor's layout is written once, here, and read back by name (:class:`StepStats`), instead
of being packed in the step and decoded by position in the monitor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StatsLayout", "StepStats"]


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, as the host reads it (means over the ranks and micro-batches)."""

    loss: float
    terms: dict[str, float]  # the loss's named terms ("mse", "direction", "vb", ...)
    stop: bool  # some rank had a stop request (the flag is all-reduced with the stats)
    ok: bool  # loss and gradient norm were finite, so the update was applied
    grad_norm: float


@dataclass(frozen=True)
class StatsLayout:
    """The layout ``[loss, *terms, stop, ok, grad_norm]`` for a fixed set of term names."""

    term_names: tuple[str, ...]

    def reduced_part(
        self, loss: torch.Tensor, terms: dict[str, torch.Tensor], stop: torch.Tensor
    ) -> torch.Tensor:
        """``[loss, *terms, stop]``: what is all-reduced over the ranks (the caller divides all but
        ``stop`` by the world size)."""
        return torch.stack([loss, *[terms[k] for k in self.term_names], stop])

    @staticmethod
    def complete(reduced: torch.Tensor, ok: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """The full stats tensor: the reduced part, then the finite flag and the gradient norm."""
        return torch.cat([reduced, ok.float().reshape(1), grad_norm.detach().float().reshape(1)])

    def read(self, values: list[float]) -> StepStats:
        """The named stats of a stats tensor copied to the host (``tensor.tolist()``)."""
        n = len(self.term_names)
        return StepStats(
            loss=values[0],
            terms=dict(zip(self.term_names, values[1 : 1 + n])),
            stop=values[1 + n] > 0,
            ok=values[2 + n] > 0.5,
            grad_norm=values[3 + n],
        )
