"""Prediction targets and the exact conversions between them.

With ``x_t = α·x + σ·ε`` (see :mod:`fasterdit.diffusion.schedules`) a network can regress

* ``"eps"``: the noise ε (DDPM, DiT);
* ``"x0"``: the clean data x;
* ``"v"``: Salimans & Ho's ``v = α·ε − σ·x``;
* ``"velocity"``: the path's time derivative ``u = dx_t/dt = α'·x + σ'·ε`` (rectified flow, SiT,
  FasterDiT; for flow-linear it is ``ε − x``).

Any one of them, together with ``x_t``, determines the pair (x, ε), hence every other, and the score
``∇ log p_t(x_t) = −ε/σ`` (the posterior-mean identity of Tweedie). Conversions go through (x, ε) by
solving the 2×2 linear system of the source target with ``x_t``, so they hold for every schedule, VP
or not. They divide by α (from ε), σ (from x), α²+σ² (from v) or ``α·σ' − σ·α'`` (from velocity); at
the endpoints t = 0 / t = 1 some of these vanish, so samplers should clamp t first
(``Schedule.clamp_t``).
"""

from __future__ import annotations

from torch import Tensor

from fasterdit.diffusion.schedules import Schedule, TimeLike, _f64
from fasterdit.errors import ConfigError

TARGETS = ("eps", "x0", "v", "velocity")
CONVERTIBLE = (*TARGETS, "score")


def check_target(name: str, field: str = "target", allowed: tuple[str, ...] = TARGETS) -> str:
    """Validate a target name, raising a ConfigError that names ``field`` and the allowed values."""
    if name not in allowed:
        raise ConfigError(field, f"unknown target {name!r}; choose one of {', '.join(allowed)}")
    return name


def expand_like(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient (N,) or a scalar to broadcast against x (N, ...), in x's dtype."""
    c = c.to(device=x.device, dtype=x.dtype)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _coefs(sched: Schedule, t: TimeLike, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """α, σ, α', σ' computed in float64 and broadcast against x."""
    t64 = _f64(t)
    vals = (sched._alpha(t64), sched._sigma(t64), sched._d_alpha(t64), sched._d_sigma(t64))
    return tuple(expand_like(v, x) for v in vals)  # type: ignore[return-value]


def target_from_data(target: str, x0: Tensor, eps: Tensor, t: TimeLike, sched: Schedule) -> Tensor:
    """The regression target for clean data ``x0`` and noise ``eps`` at time ``t``."""
    check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    a, s, da, ds = _coefs(sched, t, x0)
    if target == "v":
        return a * eps - s * x0
    return da * x0 + ds * eps


def to_x0_eps(pred: Tensor, src: str, x_t: Tensor, t: TimeLike, sched: Schedule) -> tuple[Tensor, Tensor]:
    """Recover (x̂₀, ε̂) from a prediction of target ``src`` and the noisy input ``x_t``."""
    check_target(src, "src", CONVERTIBLE)
    a, s, da, ds = _coefs(sched, t, x_t)
    if src == "eps":
        return (x_t - s * pred) / a, pred
    if src == "score":
        eps = -s * pred
        return (x_t - s * eps) / a, eps
    if src == "x0":
        return pred, (x_t - a * pred) / s
    if src == "v":
        # [α σ; −σ α]·[x; ε] = [x_t; v]
        det = a * a + s * s
        return (a * x_t - s * pred) / det, (s * x_t + a * pred) / det
    # [α σ; α' σ']·[x; ε] = [x_t; u]
    det = a * ds - s * da
    return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det


def from_x0_eps(dst: str, x0: Tensor, eps: Tensor, t: TimeLike, sched: Schedule) -> Tensor:
    """Any target (or the score ``−ε/σ``) from the pair (x₀, ε) at time ``t``."""
    check_target(dst, "dst", CONVERTIBLE)
    if dst == "score":
        _, s, _, _ = _coefs(sched, t, eps)
        return -eps / s
    return target_from_data(dst, x0, eps, t, sched)


def convert(pred: Tensor, src: str, dst: str, x_t: Tensor, t: TimeLike, sched: Schedule) -> Tensor:
    """Convert a prediction of target ``src`` into target ``dst`` (``dst`` may be ``"score"``).

    ``t`` is a scalar or one time per sample (N,); ``pred`` and ``x_t`` are (N, ...). Exact for every
    schedule away from the endpoints (see the module docstring).
    """
    check_target(src, "src", CONVERTIBLE)
    check_target(dst, "dst", CONVERTIBLE)
    if src == dst:
        return pred
    x0, eps = to_x0_eps(pred, src, x_t, t, sched)
    return from_x0_eps(dst, x0, eps, t, sched)
