"""Timestep samplers: how training draws t ∈ [0, 1], each with its exact density p(t).

The density matters as much as the draws: FasterDiT's analysis looks at the PDF of the (extended)
SNR seen during training, which is p(t) pushed through λ(t). So every sampler exposes ``pdf(t)``
and ``cdf(t)`` in closed form (or by a monotone root solve), and draws only through a
``torch.Generator``.

* ``uniform``: U(t_min, t_max) (SiT; ``t_min``/``t_max`` give SiT's train-eps margins).
* ``uniform-discrete``: the DDPM index i ~ U{0..N-1}, returned as t = (i+1)/N. Its ``pdf`` is the
  continuous relaxation (density 1 on (0, 1]: each grid value stands for the bin ((i)/N, (i+1)/N]).
* ``lognorm``: SD3's logit-normal, t = sigmoid(n), n ~ N(m, s²); FasterDiT uses lognorm(0, 1).
* ``mode``: SD3's mode sampling with heavy tails, t = 1 − u − scale·(cos²(πu/2) − 1 + u), u ~ U(0, 1).
* ``cosmap``: SD3's CosMap, t = 1 − 1/(tan(πu/2) + 1).
* ``edm-lognormal``: EDM's ln σ_e ~ N(P_mean, P_std²), placed on any schedule through the log-SNR
  λ = −2 ln σ_e and truncated to the schedule's λ range. On flow-linear it is exactly lognorm(P_mean, P_std).

Any sampler except ``uniform-discrete`` takes ``shift``: SD3's resolution shift
t' = s·t / (1 + (s−1)·t), applied to the draws with the density transformed accordingly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fasterdit.diffusion.schedules import Schedule, TimeLike, _back, _f64, get_schedule
from fasterdit.errors import ConfigError

TIMESTEP_SAMPLERS = ("uniform", "uniform-discrete", "lognorm", "mode", "cosmap", "edm-lognormal")

_SQRT2 = math.sqrt(2.0)


def _norm_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _norm_cdf(z: Tensor) -> Tensor:
    return torch.special.ndtr(z)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's time shift t' = s·t/(1 + (s−1)·t); s > 1 moves mass towards noise (t → 1)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_time(t: Tensor, shift: float) -> Tensor:
    """Inverse of :func:`shift_time`: t = t'/(s − (s−1)·t')."""
    return t / (shift - (shift - 1.0) * t)


def _uniform(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """float64 U[0, 1) drawn on the generator's device (a CPU generator can serve CUDA data), then moved."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
    return u.to(device) if device is not None else u


def _normal(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    z = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64)
    return z.to(device) if device is not None else z


class TimestepSampler:
    """Base class: ``sample`` draws, ``pdf``/``cdf`` describe the law of the draws on (0, 1)."""

    name: str = ""

    def __init__(self, **params: Any):
        self.params = dict(params)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """n times in [0, 1], drawn with ``generator`` (on its own device) and returned on ``device``."""
        return self._sample(int(n), generator, device).clamp(0.0, 1.0).to(dtype)

    def pdf(self, t: TimeLike) -> Tensor:
        """Density of the draws at t (0 outside (0, 1))."""
        t64 = _f64(t)
        inside = (t64 > 0) & (t64 < 1)
        tc = t64.clamp(1e-300, 1.0 - 1e-16)
        return _back(torch.where(inside, self._pdf(tc), torch.zeros_like(t64)), t)

    def cdf(self, t: TimeLike) -> Tensor:
        """P(T ≤ t)."""
        t64 = _f64(t)
        tc = t64.clamp(0.0, 1.0)
        val = self._cdf(tc)
        val = torch.where(t64 <= 0, torch.zeros_like(val), torch.where(t64 >= 1, torch.ones_like(val), val))
        return _back(val, t)

    def _sample(self, n: int, generator: torch.Generator | None, device: Any) -> Tensor:
        raise NotImplementedError

    def _pdf(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _cdf(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Uniform(TimestepSampler):
    """t ~ U(t_min, t_max)."""

    name = "uniform"

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ConfigError(
                "timesteps.t_min", f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}"
            )
        super().__init__(t_min=t_min, t_max=t_max)
        self.t_min, self.t_max = t_min, t_max

    def _sample(self, n, generator, device):
        return self.t_min + (self.t_max - self.t_min) * _uniform(n, generator, device)

    def _pdf(self, t):
        inside = (t >= self.t_min) & (t <= self.t_max)
        return torch.where(inside, 1.0 / (self.t_max - self.t_min), 0.0).to(t.dtype)

    def _cdf(self, t):
        return ((t - self.t_min) / (self.t_max - self.t_min)).clamp(0.0, 1.0)


class UniformDiscrete(TimestepSampler):
    """DDPM's index i ~ U{0..N−1} as t = (i+1)/N; pdf/cdf are the continuous relaxation U(0, 1)."""

    name = "uniform-discrete"

    def __init__(self, num_steps: int = 1000):
        if int(num_steps) != num_steps or num_steps < 1:
            raise ConfigError("timesteps.num_steps", f"must be a positive integer, got {num_steps}")
        super().__init__(num_steps=int(num_steps))
        self.num_steps = int(num_steps)

    def _sample(self, n, generator, device):
        gen_device = generator.device if generator is not None else device
        i = torch.randint(0, self.num_steps, (n,), generator=generator, device=gen_device)
        i = i.to(device) if device is not None else i
        return (i.to(torch.float64) + 1.0) / self.num_steps

    def _pdf(self, t):
        return torch.ones_like(t)

    def _cdf(self, t):
        return t.clone()


class LogitNormal(TimestepSampler):
    """SD3/FasterDiT ``lognorm(m, s)``: t = sigmoid(n), n ~ N(m, s²).

    p(t) = φ((logit t − m)/s) / (s·t·(1−t)),  P(T ≤ t) = Φ((logit t − m)/s).
    """

    name = "lognorm"

    def __init__(self, m: float = 0.0, s: float = 1.0):
        if not s > 0:
            raise ConfigError("timesteps.s", f"must be > 0, got {s}")
        super().__init__(m=m, s=s)
        self.m, self.s = m, s

    def _sample(self, n, generator, device):
        return torch.sigmoid(self.m + self.s * _normal(n, generator, device))

    def _pdf(self, t):
        z = (torch.log(t) - torch.log1p(-t) - self.m) / self.s
        return _norm_pdf(z) / (self.s * t * (1.0 - t))

    def _cdf(self, t):
        return _norm_cdf((torch.log(t) - torch.log1p(-t) - self.m) / self.s)


class ModeSampler(TimestepSampler):
    """SD3's mode sampling: t = f(u) = 1 − u − scale·(cos²(πu/2) − 1 + u), u ~ U(0, 1).

    f is decreasing for −1 < scale < 2/(π−2) ≈ 1.75, so P(T ≤ t) = 1 − f⁻¹(t) and p(t) = 1/|f'(f⁻¹(t))|
    with f'(u) = −1 − scale + scale·(π/2)·sin(πu). f⁻¹ is found by bisection + Newton (float64).
    """

    name = "mode"
    SCALE_MAX = 2.0 / (math.pi - 2.0)

    def __init__(self, scale: float = 1.29):
        if not -1.0 < scale < self.SCALE_MAX:
            raise ConfigError(
                "timesteps.scale", f"must be in (-1, {self.SCALE_MAX:.4f}) for a monotone map, got {scale}"
            )
        super().__init__(scale=scale)
        self.scale = scale

    def _f(self, u: Tensor) -> Tensor:
        return 1.0 - u - self.scale * (torch.cos(math.pi / 2 * u) ** 2 - 1.0 + u)

    def _df(self, u: Tensor) -> Tensor:
        return -1.0 - self.scale + self.scale * (math.pi / 2) * torch.sin(math.pi * u)

    def _inverse(self, t: Tensor) -> Tensor:
        # Bisection to a 2⁻¹⁰ bracket, then Newton (|f'| ≥ 0.26 and |f''| ≤ 6.4 on (0, 1) for the allowed
        # scales, so four quadratic steps take the error from 1e-3 to below float64 resolution).
        lo, hi = torch.zeros_like(t), torch.ones_like(t)
        for _ in range(10):  # f decreasing: f(lo) >= t >= f(hi)
            mid = 0.5 * (lo + hi)
            right = self._f(mid) > t
            lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
        u = 0.5 * (lo + hi)
        for _ in range(5):
            u = (u - (self._f(u) - t) / self._df(u)).clamp(0.0, 1.0)
        return u

    def _sample(self, n, generator, device):
        return self._f(_uniform(n, generator, device))

    def _pdf(self, t):
        return 1.0 / self._df(self._inverse(t)).abs()

    def _cdf(self, t):
        return 1.0 - self._inverse(t)


class CosMap(TimestepSampler):
    """SD3's CosMap: t = 1 − 1/(tan(πu/2) + 1); p(t) = 2/(π(1 − 2t + 2t²)), P(T ≤ t) = (2/π)·atan(t/(1−t))."""

    name = "cosmap"

    def __init__(self) -> None:
        super().__init__()

    def _sample(self, n, generator, device):
        u = _uniform(n, generator, device)
        return 1.0 - 1.0 / (torch.tan(math.pi / 2 * u) + 1.0)

    def _pdf(self, t):
        return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t * t))

    def _cdf(self, t):
        return (2.0 / math.pi) * torch.atan2(t, 1.0 - t)


class EDMLogNormal(TimestepSampler):
    """EDM's training noise law ln σ_e ~ N(P_mean, P_std²) placed on a schedule through λ = −2·ln σ_e.

    ℓ(t) = −λ(t)/2 is increasing in t, so with a = (ℓ(0)−P_mean)/P_std, b = (ℓ(1)−P_mean)/P_std and
    Z = Φ(b) − Φ(a) (truncation to the schedule's λ range):
    P(T ≤ t) = (Φ((ℓ(t)−P_mean)/P_std) − Φ(a))/Z and p(t) = φ(·)/(P_std·Z)·|λ'(t)|/2.
    λ = −2 ln σ_e equates the SNR of data in EDM's units (σ_data = 0.5 for [-1, 1] pixels) with the
    schedule's SNR for data of the same scale.
    """

    name = "edm-lognormal"

    def __init__(self, schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ConfigError("timesteps.p_std", f"must be > 0, got {p_std}")
        super().__init__(p_mean=p_mean, p_std=p_std)
        self.schedule = schedule
        self.p_mean, self.p_std = p_mean, p_std
        # the schedule's λ range as numbers, once: each draw clamps to it without evaluating λ(0), λ(1)
        self._lam_min, self._lam_max = schedule.lambda_min, schedule.lambda_max
        self._a = (-self._lam_max / 2 - p_mean) / p_std
        self._b = (-self._lam_min / 2 - p_mean) / p_std
        self._Phi_a = 0.5 * math.erfc(-self._a / _SQRT2)
        self._Phi_b = 0.5 * math.erfc(-self._b / _SQRT2)
        self._Z = self._Phi_b - self._Phi_a
        if not self._Z > 0:
            raise ConfigError("timesteps.p_mean", "puts no mass inside the schedule's noise-level range")

    def _sample(self, n, generator, device):
        u = self._Phi_a + self._Z * _uniform(n, generator, device)
        ell = self.p_mean + self.p_std * torch.special.ndtri(u.clamp(1e-300, 1.0 - 1e-16))
        return self.schedule._t_from_log_snr((-2.0 * ell).clamp(self._lam_min, self._lam_max))

    def _pdf(self, t):
        z = (-0.5 * self.schedule._log_snr(t) - self.p_mean) / self.p_std
        return _norm_pdf(z) / (self.p_std * self._Z) * 0.5 * self.schedule._d_log_snr(t).abs()

    def _cdf(self, t):
        z = (-0.5 * self.schedule._log_snr(t) - self.p_mean) / self.p_std
        return ((_norm_cdf(z) - self._Phi_a) / self._Z).clamp(0.0, 1.0)


class Shifted(TimestepSampler):
    """Any sampler followed by SD3's shift t' = s·t/(1+(s−1)t); p'(t') = p(t)·s/(s − (s−1)t')²."""

    def __init__(self, base: TimestepSampler, shift: float):
        if not shift > 0:
            raise ConfigError("timesteps.shift", f"must be > 0, got {shift}")
        super().__init__(**base.params, shift=shift)
        self.name = base.name
        self.base, self.shift = base, shift

    def _sample(self, n, generator, device):
        return shift_time(self.base._sample(n, generator, device), self.shift)

    def _pdf(self, t):
        s = self.shift
        return self.base.pdf(unshift_time(t, s)) * s / (s - (s - 1.0) * t) ** 2

    def _cdf(self, t):
        return self.base.cdf(unshift_time(t, self.shift))


_REGISTRY: dict[str, type[TimestepSampler]] = {
    "uniform": Uniform,
    "uniform-discrete": UniformDiscrete,
    "lognorm": LogitNormal,
    "mode": ModeSampler,
    "cosmap": CosMap,
    "edm-lognormal": EDMLogNormal,
}


def get_timestep_sampler(
    name: str, *, schedule: Schedule | str | None = None, shift: float = 1.0, **kw: Any
) -> TimestepSampler:
    """Build a timestep sampler by name (one of :data:`TIMESTEP_SAMPLERS`).

    ``schedule`` is needed only by ``edm-lognormal`` (a name or a Schedule); ``shift != 1`` wraps the
    sampler in SD3's time shift (not allowed for ``uniform-discrete``, whose draws must stay on the grid).
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(
            "timesteps", f"unknown timestep sampler {name!r}; choose one of {', '.join(TIMESTEP_SAMPLERS)}"
        )
    if cls is EDMLogNormal:
        if schedule is None:
            raise ConfigError("timesteps.schedule", "'edm-lognormal' needs the schedule it is placed on")
        kw["schedule"] = get_schedule(schedule)
    try:
        sampler = cls(**kw)
    except TypeError as err:
        raise ConfigError("timesteps", f"bad parameters {kw} for {name!r}: {err}") from err
    if shift != 1.0:
        if cls is UniformDiscrete:
            raise ConfigError(
                "timesteps.shift", "'uniform-discrete' draws grid indices and cannot be shifted"
            )
        sampler = Shifted(sampler, float(shift))
    return sampler
