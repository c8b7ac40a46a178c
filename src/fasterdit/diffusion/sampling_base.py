"""Shared pieces of the samplers: the result type, NFE counting, time grids and endpoint handling.

Every sampler integrates from noise (large t) to data (t = 0) on a *model function*
``model_fn(x_t, t) -> prediction`` whose output is in the recipe's target (``eps``, ``x0``, ``v`` or
``velocity``), possibly with extra channels after the first C (the learned variance of iDDPM). The
model function receives ``t`` as a tensor of shape (N,) in [0, 1]; it is float64 wherever the device
supports it, so that the DDPM chain's ``t = (i+1)/1000`` maps back to the integer index ``i`` exactly.

Endpoints (why the grids look the way they do):

* ``t = 1``: for flow paths α(1) = 0, so an ε prediction cannot be turned into a velocity there (it
  divides by α). The grid starts at ``t_max = 1`` whenever the conversion is finite at 1 (velocity,
  x0 and v targets, and every target on DDPM-linear whose α(1) = 0.0064 > 0), otherwise at
  ``t_max = 1 − 10⁻³`` (the caller may override ``t_max``).
* ``t = 0``: σ(0) = 0, and VP schedules have σ ∝ √t so dσ/dt is infinite there. Euler's last step
  evaluates the model at the last positive grid time and steps into 0 (optionally the *denoising
  jump* ``x ← x̂₀(x, t)`` instead, the prediction converted to x₀: the same on flow-linear, the exact
  limit of a DDIM step elsewhere). Heun evaluates the model at t = 0 wherever the velocity is finite
  there (flow paths), and otherwise ends with such a one-evaluation step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fasterdit.diffusion.schedules import Schedule
from fasterdit.diffusion.targets import check_target, convert
from fasterdit.errors import ConfigError

ModelFn = Callable[[Tensor, Tensor], Tensor]


class Network(Protocol):
    """What :func:`~fasterdit.diffusion.sampling.sample` needs of a network: the DiT's call
    ``net(x, t_model, y)`` and its class count (0: unconditional; guidance's null label is
    ``num_classes``). The DiT is one; a test double needs only these two."""

    num_classes: int

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor: ...


#: t_max used when the target cannot be converted to a velocity at t = 1 (ε on a path with α(1) = 0).
FALLBACK_T_MAX = 1.0 - 1e-3
#: where adaptive solvers stop (then jump to x̂₀) when the velocity is not finite at t = 0.
FALLBACK_T_MIN = 1e-3
#: the most sampling steps: the published samplers use at most 1000, and the time grid is built in memory
#: (``sample.steps=1e9`` used to train, checkpoint, and then be killed for memory here)
MAX_STEPS = 100_000


@dataclass
class SampleResult:
    """What every sampler returns.

    Attributes:
        x: the final sample. Diffusion space for the individual samplers; :func:`sample` replaces it by
            the data-space sample (the recipe's scaling inverted).
        nfe: number of function evaluations, i.e. calls of the model function. A classifier-free-guidance
            pair evaluated as one doubled batch counts as ONE evaluation.
        trajectory: with ``return_trajectory=True``, the diffusion-space states at ``times`` (the first
            is the input noise, the last the final sample before any scaling inversion).
        times: the t of each trajectory entry.
    """

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None
    times: list[float] | None = field(default=None)


class CountingFn:
    """Wraps a model function and counts its calls (the NFE every sampler reports)."""

    def __init__(self, fn: ModelFn):
        self.fn = fn
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(x, t)


class PerSampleNoise:
    """One CPU ``torch.Generator`` per sample: the step noise of the stochastic samplers, row by row.

    Why: with one generator for the whole batch, the noise a sample receives depends on its position
    in the batch and on the batch size, so a sharded or resumed job (``fasterdit sample`` under
    ``torchrun``) could not reproduce a single-process run. Here row ``r`` always draws from its own
    generator, on the CPU (the same stream on every device), and the batch is moved to ``x``'s device.
    Pass it as the ``generator`` of :func:`fasterdit.diffusion.sampling.sample`.
    """

    def __init__(self, generators: list[torch.Generator]):
        if not generators or any(g.device.type != "cpu" for g in generators):
            raise ConfigError("generator", "PerSampleNoise needs one CPU torch.Generator per sample")
        self.generators = list(generators)

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            n = len(self.generators)
            raise ConfigError("generator", f"{n} per-sample generators for a batch of {x.shape[0]}")
        rows = [torch.randn(tuple(x.shape[1:]), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=x.device, dtype=x.dtype)


NoiseSource = torch.Generator | PerSampleNoise | None


def step_noise(x: Tensor, generator: NoiseSource) -> Tensor:
    """Standard normal noise shaped like ``x`` from a batch generator (on x's device) or per sample."""
    if isinstance(generator, PerSampleNoise):
        return generator.randn_like(x)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class Trajectory:
    """Collects states when asked to, and nothing otherwise (so long runs do not hold every step)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.states: list[Tensor] = []
        self.times: list[float] = []

    def add(self, x: Tensor, t: float) -> None:
        if self.enabled:
            self.states.append(x.detach().clone())
            self.times.append(float(t))

    def result(self, x: Tensor, nfe: int) -> SampleResult:
        if not self.enabled:
            return SampleResult(x=x, nfe=nfe)
        return SampleResult(x=x, nfe=nfe, trajectory=self.states, times=self.times)


def time_dtype(x: Tensor) -> torch.dtype:
    """float64 for the model's time input, except on devices without float64 (Apple MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def t_vector(t: float, x: Tensor) -> Tensor:
    """The time ``t`` for every sample of the batch ``x``, as the model function receives it."""
    return torch.full((x.shape[0],), float(t), dtype=time_dtype(x), device=x.device)


def check_steps(steps: int, field_name: str = "steps") -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(field_name, f"must be a positive integer, got {steps!r}")
    if steps > MAX_STEPS:
        raise ConfigError(field_name, f"must be at most {MAX_STEPS}, got {steps}")
    return int(steps)


def check_shift(shift: float | None) -> float | None:
    if shift is None:
        return None
    if not (isinstance(shift, int | float) and math.isfinite(shift) and shift > 0):
        raise ConfigError("shift", f"must be a positive number (1 = no shift), got {shift!r}")
    return float(shift)


def shift_time(t: float, shift: float) -> float:
    """SD3's time shift ``t' = s·t / (1 + (s−1)·t)``; s > 1 spends more steps at high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_time(t: float, shift: float) -> float:
    """Inverse of :func:`shift_time`."""
    return t / (shift - (shift - 1.0) * t)


def time_grid(steps: int, t_max: float = 1.0, t_end: float = 0.0, shift: float | None = None) -> list[float]:
    """``steps + 1`` decreasing times from ``t_max`` to ``t_end``, uniform in the *unshifted* time.

    With a shift the uniform grid lives between ``unshift(t_max)`` and ``unshift(t_end)`` and is mapped
    through :func:`shift_time`, so the endpoints are kept exactly while the interior moves.
    """
    steps = check_steps(steps)
    if not 0.0 <= t_end < t_max <= 1.0:
        raise ConfigError("t_max", f"need 0 <= t_end < t_max <= 1, got t_end={t_end}, t_max={t_max}")
    shift = check_shift(shift)
    if shift is None or shift == 1.0:
        lo, hi = t_end, t_max
        grid = [hi + (lo - hi) * k / steps for k in range(steps + 1)]
    else:
        lo, hi = unshift_time(t_end, shift), unshift_time(t_max, shift)
        grid = [shift_time(hi + (lo - hi) * k / steps, shift) for k in range(steps + 1)]
    grid[0], grid[-1] = t_max, t_end  # exact endpoints despite rounding
    return grid


def _velocity_finite(sched: Schedule, target: str, t: float) -> bool:
    """Whether a prediction of ``target`` can be turned into a finite velocity at time ``t``."""
    probe = torch.full((1, 1), 0.5, dtype=torch.float64)
    with torch.no_grad():
        u = convert(probe, target, "velocity", probe, t, sched)
    return bool(torch.isfinite(u).all())


def default_t_max(sched: Schedule, target: str) -> float:
    """1 when the prediction converts to a finite velocity at t = 1, else :data:`FALLBACK_T_MAX`."""
    check_target(target)
    return 1.0 if _velocity_finite(sched, target, 1.0) else FALLBACK_T_MAX


def default_t_min(sched: Schedule, target: str) -> float:
    """0 when the velocity is finite at t = 0 (flow paths with most targets), else :data:`FALLBACK_T_MIN`."""
    check_target(target)
    return 0.0 if _velocity_finite(sched, target, 0.0) else FALLBACK_T_MIN


def resolve_t_max(t_max: float | None, sched: Schedule, target: str) -> float:
    if t_max is None:
        return default_t_max(sched, target)
    if not 0.0 < float(t_max) <= 1.0:
        raise ConfigError("t_max", f"must be in (0, 1], got {t_max!r}")
    return float(t_max)


def split_prediction(pred: Tensor, x: Tensor) -> Tensor:
    """The first C channels of a prediction (drops iDDPM's variance channels), in x's dtype."""
    c = x.shape[1]
    if pred.shape[0] != x.shape[0] or pred.shape[2:] != x.shape[2:] or pred.shape[1] not in (c, 2 * c):
        raise ConfigError(
            "model",
            f"prediction of shape {tuple(pred.shape)} does not fit x of shape {tuple(x.shape)} "
            f"(expected {c} or {2 * c} channels)",
        )
    return pred[:, :c].to(x.dtype)


def velocity(fn: ModelFn, x: Tensor, t: float, sched: Schedule, target: str) -> Tensor:
    """One model evaluation turned into the probability-flow velocity dx/dt at time t."""
    pred = split_prediction(fn(x, t_vector(t, x)), x)
    return convert(pred, target, "velocity", x, t, sched)


def denoise(fn: ModelFn, x: Tensor, t: float, sched: Schedule, target: str) -> Tensor:
    """One model evaluation turned into the data estimate x̂₀(x, t) (the final jump to t = 0)."""
    pred = split_prediction(fn(x, t_vector(t, x)), x)
    return convert(pred, target, "x0", x, t, sched)
