"""DDPM ancestral sampling (with iDDPM's learned-range variance) and DDIM, plus DiT's timestep respacing.

On a discrete schedule (DDPM-linear / DDPM-cosine, ``schedule.is_discrete``) both samplers walk a
*respaced* subset of the 1000-step chain, chosen exactly as the official DiT/ADM ``space_timesteps``
does (``respacing=250`` keeps indices ``round(k·999/249)``); the model receives the ORIGINAL index
``i`` through ``t = (i+1)/1000`` (the recipe's ``model_time`` maps it back), and ᾱ is the chain's own
float64 ``alphas_cumprod``. On a continuous schedule they walk a uniform (optionally shifted) t-grid.

One step from (t, α, σ) to the next point (s, α_s, σ_s), written for any Gaussian path; for VP paths
``a² = ᾱ_t/ᾱ_s`` and ``τ²`` is the respaced β of the official code:

    a = α/α_s,  τ² = σ² − a²·σ_s²                       (x_t | x_s ~ N(a·x_s, τ²))
    posterior mean  μ = (a·σ_s²/σ²)·x_t + (α_s·τ²/σ²)·x̂₀,   posterior variance β̃ = τ²·σ_s²/σ²
    DDPM:  x_s = μ + std·z, with std² = β̃ (``fixed-small``), τ² (``fixed-large``), or
           exp(f·ln τ² + (1−f)·ln β̃), f = (v+1)/2 (``learned-range``; v = the model's channels C..2C)
    DDIM:  x_s = α_s·x̂₀ + √(σ_s² − c²)·ε̂ + c·z,  c = η·σ_s·√(1 − (α·σ_s/(α_s·σ))²)

The last point is followed by s = 0 (α_s = 1, σ_s = 0), where both reduce to ``x ← x̂₀`` without noise.
N chain points cost N evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fasterdit.diffusion.sampling_base import (
    CountingFn,
    ModelFn,
    NoiseSource,
    SampleResult,
    Trajectory,
    check_shift,
    check_steps,
    resolve_t_max,
    split_prediction,
    step_noise,
    t_vector,
    time_grid,
)
from fasterdit.diffusion.schedules import Schedule
from fasterdit.diffusion.targets import check_target, to_x0_eps
from fasterdit.errors import ConfigError

VARIANCES = ("auto", "learned-range", "fixed-small", "fixed-large")
ChainPoint = tuple[float, float, float]  # (t, α, σ)


def space_timesteps(num_timesteps: int, respacing: int | str | Sequence[int]) -> list[int]:
    """The chain indices kept by the official (ADM/DiT) respacing, sorted ascending.

    ``respacing`` is a step count (``250``), comma-separated per-section counts (``"10,15,20"``: the
    chain is cut into equal sections, each strided to its count), or ``"ddimN"`` (the integer stride of
    the DDIM paper that gives exactly N steps). Within a section of ``size`` indices, ``count`` steps are
    taken at ``round(k·(size−1)/(count−1))``, with the position accumulated in floating point and Python's
    round-half-to-even, as the official code does, so the indices are identical.
    """
    if isinstance(respacing, str):
        spec = respacing.strip()
        if spec.startswith("ddim"):
            try:
                want = int(spec[4:])
            except ValueError as err:
                raise ConfigError(
                    "respacing", f"bad DDIM respacing {respacing!r}; use e.g. 'ddim50'"
                ) from err
            for stride in range(1, num_timesteps):
                kept = list(range(0, num_timesteps, stride))
                if len(kept) == want:
                    return kept
            raise ConfigError("respacing", f"no integer stride gives exactly {want} of {num_timesteps} steps")
        try:
            counts = [int(p) for p in spec.split(",")]
        except ValueError as err:
            raise ConfigError(
                "respacing", f"bad respacing {respacing!r}; use e.g. '250' or '10,15,20'"
            ) from err
    elif isinstance(respacing, int):
        counts = [respacing]
    else:
        counts = [int(c) for c in respacing]
    if not counts or any(c < 0 for c in counts) or sum(counts) < 1:
        raise ConfigError("respacing", f"need positive step counts, got {respacing!r}")
    base, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ConfigError("respacing", f"cannot take {count} steps from a section of {size} steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))


def respaced_chain(
    schedule: Schedule, respacing: int | str | Sequence[int]
) -> tuple[list[int], Tensor, Tensor]:
    """(indices, ᾱ at them, respaced β) of a discrete chain.

    ``β'_k = 1 − ᾱ_{i_k}/ᾱ_{i_{k−1}}`` with ᾱ_{i_{−1}} = 1, as the official ``SpacedDiffusion`` builds them.
    """
    if not schedule.is_discrete or schedule.alphas_cumprod is None:
        raise ConfigError(
            "schedule", f"{schedule.name!r} is continuous; respacing needs a discrete DDPM chain"
        )
    idx = space_timesteps(int(schedule.num_steps), respacing)
    abar = schedule.alphas_cumprod.to(torch.float64)[torch.tensor(idx)]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return idx, abar, 1.0 - abar / prev


def sampling_chain(
    schedule: Schedule,
    target: str,
    steps: int,
    *,
    respacing: int | str | Sequence[int] | None = None,
    shift: float | None = None,
    t_max: float | None = None,
) -> list[ChainPoint]:
    """The (t, α, σ) points a DDPM/DDIM run visits, from high noise down (t = 0 is implied at the end)."""
    if schedule.is_discrete:
        if check_shift(shift) not in (None, 1.0):
            raise ConfigError(
                "shift", "a time shift applies to continuous grids, not to the discrete DDPM chain"
            )
        if t_max is not None:
            raise ConfigError(
                "t_max", "the discrete DDPM chain starts at its last index; t_max does not apply"
            )
        idx, abar, _ = respaced_chain(schedule, check_steps(steps) if respacing is None else respacing)
        n = int(schedule.num_steps)
        points = [((i + 1) / n, math.sqrt(a), math.sqrt(1.0 - a)) for i, a in zip(idx, abar.tolist())]
        return points[::-1]
    if respacing is not None:
        raise ConfigError("respacing", f"{schedule.name!r} is continuous; use steps (and shift) instead")
    grid = time_grid(steps, resolve_t_max(t_max, schedule, target), 0.0, shift)[:-1]
    t = torch.tensor(grid, dtype=torch.float64)
    return list(zip(grid, schedule.alpha(t).tolist(), schedule.sigma(t).tolist()))


def predict_x0_eps(
    pred: Tensor, target: str, x: Tensor, point: ChainPoint, schedule: Schedule, clip_x0: float | None
) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) with the chain's own α, σ (exact ᾱ of the discrete chain, not its continuous extension).

    With ``clip_x0`` the data estimate is clamped to ±clip_x0 and ε̂ re-derived from it (ADM's
    ``clip_denoised``); DiT samples latents without clipping.
    """
    t, a, s = point
    if target == "eps":
        x0, eps = (x - s * pred) / a, pred
    elif target == "x0":
        x0, eps = pred, (x - a * pred) / s
    elif target == "v":
        det = a * a + s * s
        x0, eps = (a * x - s * pred) / det, (s * x + a * pred) / det
    else:  # velocity needs dα/dt, dσ/dt: the continuous schedule supplies them
        x0, eps = to_x0_eps(pred, target, x, t, schedule)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - a * x0) / s
    return x0, eps


def learned_range_log_variance(v: Tensor, log_small: float | Tensor, log_large: float | Tensor) -> Tensor:
    """iDDPM's learned range: ``ln Σ = f·ln β + (1−f)·ln β̃`` with ``f = (v+1)/2`` and v ∈ [−1, 1]."""
    frac = (v + 1.0) / 2.0
    return frac * log_large + (1.0 - frac) * log_small


def _check_clip(clip_x0: float | None) -> float | None:
    if clip_x0 is not None and not (isinstance(clip_x0, int | float) and clip_x0 > 0):
        raise ConfigError("clip_x0", f"must be a positive number or None, got {clip_x0!r}")
    return None if clip_x0 is None else float(clip_x0)


def ddpm(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    steps: int,
    generator: NoiseSource = None,
    variance: str = "auto",
    respacing: int | str | Sequence[int] | None = None,
    clip_x0: float | None = None,
    shift: float | None = None,
    t_max: float | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Ancestral sampling of the (respaced) chain, as DiT's ``p_sample_loop`` does.

    ``variance``: ``learned-range`` uses the model's extra C channels (official DiT, ``learn_sigma``),
    ``fixed-small`` the posterior variance β̃, ``fixed-large`` the step's β; ``auto`` picks
    learned-range when the model outputs 2C channels and fixed-large otherwise (DiT's choice).
    ``respacing`` overrides ``steps`` with an official respacing string (see :func:`space_timesteps`).
    """
    check_target(target)
    if variance not in VARIANCES:
        raise ConfigError("variance", f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    clip_x0 = _check_clip(clip_x0)
    chain = sampling_chain(schedule, target, steps, respacing=respacing, shift=shift, t_max=t_max)
    fn = CountingFn(model_fn)
    traj = Trajectory(return_trajectory)
    x, c = noise, noise.shape[1]
    traj.add(x, chain[0][0])
    for k, point in enumerate(chain):
        out = fn(x, t_vector(point[0], x))
        x0, _ = predict_x0_eps(split_prediction(out, x), target, x, point, schedule, clip_x0)
        if k == len(chain) - 1:
            x = x0
            traj.add(x, 0.0)
            break
        _, a, s = point
        t_next, a_next, s_next = chain[k + 1]
        ratio = a / a_next
        tau2 = s * s - ratio * ratio * s_next * s_next
        small = tau2 * s_next * s_next / (s * s)
        mean = (ratio * s_next * s_next / (s * s)) * x + (a_next * tau2 / (s * s)) * x0
        kind = variance
        if kind == "auto":
            kind = "learned-range" if out.shape[1] == 2 * c else "fixed-large"
        if kind == "learned-range":
            if out.shape[1] != 2 * c:
                raise ConfigError(
                    "variance", f"learned-range needs {2 * c} output channels, got {out.shape[1]}"
                )
            v = out[:, c:].to(x.dtype)
            std = torch.exp(0.5 * learned_range_log_variance(v, math.log(small), math.log(tau2)))
        else:
            std = math.sqrt(small if kind == "fixed-small" else tau2)
        z = step_noise(x, generator)
        x = mean + std * z
        traj.add(x, t_next)
    return traj.result(x, fn.calls)


def ddim(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    steps: int,
    eta: float = 0.0,
    generator: NoiseSource = None,
    respacing: int | str | Sequence[int] | None = None,
    clip_x0: float | None = None,
    shift: float | None = None,
    t_max: float | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """DDIM (Song et al. 2021): deterministic for ``eta = 0``; ``eta = 1`` is ancestral with β̃.

    Meant for ε-models on the DDPM chain, but written for any path and target: with η = 0 the update
    ``x_s = α_s·x̂₀ + σ_s·ε̂`` is exact whenever the model's (x̂₀, ε̂) stay constant over the step.
    """
    check_target(target)
    if not (isinstance(eta, int | float) and eta >= 0.0):
        raise ConfigError("eta", f"must be a number >= 0, got {eta!r}")
    clip_x0 = _check_clip(clip_x0)
    chain = sampling_chain(schedule, target, steps, respacing=respacing, shift=shift, t_max=t_max)
    fn = CountingFn(model_fn)
    traj = Trajectory(return_trajectory)
    x = noise
    traj.add(x, chain[0][0])
    for k, point in enumerate(chain):
        pred = split_prediction(fn(x, t_vector(point[0], x)), x)
        x0, eps = predict_x0_eps(pred, target, x, point, schedule, clip_x0)
        if k == len(chain) - 1:
            x = x0
            traj.add(x, 0.0)
            break
        _, a, s = point
        t_next, a_next, s_next = chain[k + 1]
        c = eta * s_next * math.sqrt(max(0.0, 1.0 - (a * s_next / (a_next * s)) ** 2))
        x = a_next * x0 + math.sqrt(max(0.0, s_next * s_next - c * c)) * eps
        if c > 0.0:
            x = x + c * step_noise(x, generator)
        traj.add(x, t_next)
    return traj.result(x, fn.calls)
