"""Probability-flow ODE samplers (Euler, Heun, adaptive dopri5) and the Euler–Maruyama SDE sampler.

The probability-flow ODE of the path ``x_t = α(t)·x + σ(t)·ε`` is ``dx/dt = u(x, t)`` with the
velocity ``u = E[α'·x + σ'·ε | x_t]``; any prediction target gives it through
:func:`fasterdit.diffusion.targets.convert`, so these samplers work for every schedule and target.
They integrate from ``t_max`` (1 when possible) down to 0; see :mod:`.sampling_base` for the endpoint
rules. NFE conventions: Euler N; Heun 2N where the velocity is finite at t = 0 (flow paths), else
2N − 1 (an EDM-style last step); dopri5 whatever the adaptive solver needed (+1 when it stops at
t_min > 0 and jumps to x̂₀); Euler–Maruyama N.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fasterdit.diffusion.sampling_base import (
    CountingFn,
    ModelFn,
    NoiseSource,
    SampleResult,
    Trajectory,
    check_steps,
    default_t_min,
    denoise,
    resolve_t_max,
    split_prediction,
    step_noise,
    t_vector,
    time_grid,
    velocity,
)
from fasterdit.diffusion.schedules import Schedule
from fasterdit.diffusion.targets import check_target, convert
from fasterdit.errors import ConfigError

SDE_DIFFUSIONS = ("sigma", "constant", "linear", "decreasing", "increasing-decreasing", "none")
LAST_STEPS = ("mean", "euler", "x0")
_STEP_T_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


EULER_LAST_STEPS = ("euler", "x0")
HEUN_LAST_STEPS = ("heun", "euler", "x0")


def _check_last_step(last_step: str, allowed: tuple[str, ...]) -> str:
    if last_step not in allowed:
        raise ConfigError("last_step", f"got {last_step!r}; choose one of {', '.join(allowed)}")
    return last_step


def _final_step(
    fn: CountingFn, x: Tensor, t: float, schedule: Schedule, target: str, last_step: str
) -> Tensor:
    """The step from the last positive grid time ``t`` into 0 that evaluates the model at ``t`` only:
    ``euler`` (``x − t·u``) or ``x0`` (the denoising jump to x̂₀; the same on flow-linear)."""
    if last_step == "x0":
        return denoise(fn, x, t, schedule, target)
    return x - t * velocity(fn, x, t, schedule, target)


def euler(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    steps: int,
    shift: float | None = None,
    t_max: float | None = None,
    last_step: str = "euler",
    return_trajectory: bool = False,
) -> SampleResult:
    """Explicit Euler on the probability-flow ODE: ``x ← x + (t_{k+1} − t_k)·u(x, t_k)``; N evaluations.

    Every step is an Euler step, the last one into t = 0 too (as SiT's and torchdiffeq's Euler), so
    the model is never evaluated at t = 0. ``last_step="x0"`` replaces the last step by the denoising
    jump to x̂₀(x, t_{N−1}): identical on flow-linear, more accurate on VP paths, where σ ∝ √t makes
    the last Euler step remove only half of the remaining noise.
    """
    check_target(target)
    _check_last_step(last_step, EULER_LAST_STEPS)
    fn = CountingFn(model_fn)
    grid = time_grid(steps, resolve_t_max(t_max, schedule, target), 0.0, shift)
    traj = Trajectory(return_trajectory)
    x = noise
    traj.add(x, grid[0])
    for k in range(len(grid) - 2):
        x = x + (grid[k + 1] - grid[k]) * velocity(fn, x, grid[k], schedule, target)
        traj.add(x, grid[k + 1])
    x = _final_step(fn, x, grid[-2], schedule, target, last_step)
    traj.add(x, 0.0)
    return traj.result(x, fn.calls)


def heun(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    steps: int,
    shift: float | None = None,
    t_max: float | None = None,
    last_step: str | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Heun's second-order method (explicit trapezoid): each step averages the slopes at both ends of
    an Euler predictor.

    ``last_step`` decides the step into t = 0. ``heun`` (the default wherever the velocity is finite
    at t = 0: flow paths with velocity, ε, x₀ or v targets) is a full Heun step, so the method is
    second order throughout: 2N evaluations, equal to torchdiffeq's fixed-grid ``heun2`` that SiT
    uses. ``euler`` (the default on VP paths, whose dσ/dt is infinite at 0) or ``x0`` (the
    denoising jump) end EDM-style with one evaluation, 2N − 1 in all; there, with σ ∝ √t, the last
    step's error is O(σ²) = O(h) unless the grid is refined near t = 0.
    """
    check_target(target)
    if last_step is None:
        last_step = "heun" if default_t_min(schedule, target) == 0.0 else "euler"
    _check_last_step(last_step, HEUN_LAST_STEPS)
    if last_step == "heun" and default_t_min(schedule, target) > 0.0:
        raise ConfigError(
            "last_step",
            f"'heun' evaluates the model at t = 0, where {target!r} on {schedule.name} has "
            "no finite velocity; use 'euler' or 'x0'",
        )
    fn = CountingFn(model_fn)
    grid = time_grid(steps, resolve_t_max(t_max, schedule, target), 0.0, shift)
    traj = Trajectory(return_trajectory)
    x = noise
    traj.add(x, grid[0])
    full = len(grid) - 1 if last_step == "heun" else len(grid) - 2
    for k in range(full):
        h = grid[k + 1] - grid[k]
        d1 = velocity(fn, x, grid[k], schedule, target)
        x_pred = x + h * d1
        d2 = velocity(fn, x_pred, grid[k + 1], schedule, target)
        x = x + (0.5 * h) * (d1 + d2)
        traj.add(x, grid[k + 1])
    if last_step != "heun":
        x = _final_step(fn, x, grid[-2], schedule, target, last_step)
        traj.add(x, 0.0)
    return traj.result(x, fn.calls)


def dopri5(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    shift: float | None = None,
    t_max: float | None = None,
    t_min: float | None = None,
    method: str = "dopri5",
    return_trajectory: bool = False,
) -> SampleResult:
    """Adaptive Dormand–Prince (torchdiffeq's ``odeint``) from ``t_max`` to ``t_min``.

    ``t_min`` defaults to 0 when the velocity is finite there (flow paths with velocity/ε/v targets),
    else to 10⁻³, followed by the denoising jump to x̂₀ (one more evaluation). ``steps`` (optional) only
    sets how many intermediate states the trajectory records (torchdiffeq interpolates them); the
    solver picks its own steps from ``rtol``/``atol``. ``method`` may name another torchdiffeq solver.
    """
    from torchdiffeq import odeint  # lazy: ~0.8 s to import, and only dopri5 needs it

    check_target(target)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, int | float) and tol > 0):
            raise ConfigError(name, f"must be a positive number, got {tol!r}")
    t_hi = resolve_t_max(t_max, schedule, target)
    t_lo = default_t_min(schedule, target) if t_min is None else float(t_min)
    if not 0.0 <= t_lo < t_hi:
        raise ConfigError("t_min", f"must be in [0, t_max={t_hi}), got {t_min!r}")
    n_points = check_steps(steps) if (return_trajectory and steps is not None) else 1
    grid = time_grid(n_points, t_hi, t_lo, shift)
    fn = CountingFn(model_fn)

    def rhs(t: Tensor, x: Tensor) -> Tensor:
        return velocity(fn, x, float(t), schedule, target)

    t_tensor = torch.tensor(grid, dtype=noise.dtype, device=noise.device)
    try:
        # step_t makes the solver land exactly on t_min: without it dopri5 steps past the end and
        # interpolates back, evaluating the model at t < t_min (even t < 0, where σ is undefined).
        options = {"step_t": t_tensor[-1:]} if method in _STEP_T_METHODS else None
        states = odeint(rhs, noise, t_tensor, rtol=rtol, atol=atol, method=method, options=options)
    except (ValueError, KeyError) as err:
        raise ConfigError("method", f"torchdiffeq rejected method {method!r}: {err}") from err
    x = states[-1]
    if t_lo > 0.0:
        x = denoise(fn, x, t_lo, schedule, target)
    if not return_trajectory:
        return SampleResult(x=x, nfe=fn.calls)
    traj, times = list(states.unbind(0)), list(grid)
    if t_lo > 0.0:
        traj.append(x)
        times.append(0.0)
    return SampleResult(x=x, nfe=fn.calls, trajectory=traj, times=times)


def sde_diffusion(name: str, t: float, schedule: Schedule, norm: float = 1.0) -> float:
    """The Langevin weight w(t) of the reverse SDE (SiT's ``diffusion_form``, in this library's time).

    SiT runs time from noise (0) to data (1); with ``t_SiT = 1 − t``: ``sigma`` is ``norm·σ(t)`` (SiT's
    default), ``constant`` ``norm``, ``linear`` ``norm·t``, ``decreasing`` ``¼(1 − norm·cos πt)²``,
    ``increasing-decreasing`` ``norm·sin²(πt)``; ``none`` gives 0 (the probability-flow ODE).
    """
    if name == "sigma":
        return norm * float(schedule.sigma(torch.tensor(t, dtype=torch.float64)))
    if name == "constant":
        return norm
    if name == "linear":
        return norm * t
    if name == "decreasing":
        return 0.25 * (1.0 - norm * math.cos(math.pi * t)) ** 2
    if name == "increasing-decreasing":
        return norm * math.sin(math.pi * t) ** 2
    if name == "none":
        return 0.0
    raise ConfigError("diffusion", f"unknown diffusion {name!r}; choose one of {', '.join(SDE_DIFFUSIONS)}")


def euler_maruyama(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    target: str,
    *,
    steps: int,
    generator: NoiseSource = None,
    diffusion: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str = "mean",
    last_step_size: float | None = None,
    shift: float | None = None,
    t_max: float | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Euler–Maruyama on the reverse-time SDE with the same marginals as the path (SiT's SDE sampler).

    The SDE, integrated backwards from t_max to 0 (dt < 0, W̄ a reverse-time Brownian motion), is

        dx = [u(x, t) − w(t)·∇log p_t(x)] dt + √(2 w(t)) dW̄,

    i.e. the probability-flow ODE plus Langevin dynamics of strength w(t) (:func:`sde_diffusion`),
    which leave every marginal p_t unchanged. The score ``∇log p_t = −ε̂/σ`` and the velocity u both
    come from the one prediction through ``targets.convert``. One step of size h = t_k − t_{k+1} > 0:

        x ← x − h·u + h·w·score + √(2 w h)·z,   z ~ N(0, I) from ``generator``.

    The final step, of size ``last_step_size`` (default: one grid interval) into t = 0, is
    deterministic: ``mean`` takes the step without its noise (SiT's default "Mean"), ``euler`` the
    probability-flow ODE step, ``x0`` the denoising jump (SiT's "Tweedie"). SiT's sampler is
    ``steps=250, last_step_size=0.04``. N steps cost N evaluations.
    """
    check_target(target)
    steps = check_steps(steps)
    if last_step not in LAST_STEPS:
        raise ConfigError(
            "last_step", f"unknown last step {last_step!r}; choose one of {', '.join(LAST_STEPS)}"
        )
    sde_diffusion(diffusion, 0.5, schedule, diffusion_norm)  # validates the name early
    t_hi = resolve_t_max(t_max, schedule, target)
    if last_step_size is None:
        grid = time_grid(steps, t_hi, 0.0, shift)
    else:
        if not 0.0 < float(last_step_size) < t_hi:
            raise ConfigError("last_step_size", f"must be in (0, t_max={t_hi}), got {last_step_size!r}")
        grid = [*time_grid(steps - 1, t_hi, float(last_step_size), shift), 0.0] if steps > 1 else [t_hi, 0.0]
    fn = CountingFn(model_fn)
    traj = Trajectory(return_trajectory)
    x = noise
    traj.add(x, grid[0])
    for k in range(len(grid) - 1):
        t, h = grid[k], grid[k] - grid[k + 1]
        pred = split_prediction(fn(x, t_vector(t, x)), x)
        if k == len(grid) - 2 and last_step == "x0":
            x = convert(pred, target, "x0", x, t, schedule)
        else:
            u = convert(pred, target, "velocity", x, t, schedule)
            w = sde_diffusion(diffusion, t, schedule, diffusion_norm)
            drift = -u
            if w != 0.0 and not (k == len(grid) - 2 and last_step == "euler"):
                drift = drift + w * convert(pred, target, "score", x, t, schedule)
            x = x + h * drift
            if k < len(grid) - 2 and w != 0.0:
                z = step_noise(x, generator)
                x = x + math.sqrt(2.0 * w * h) * z
        traj.add(x, grid[k + 1])
    return traj.result(x, fn.calls)
