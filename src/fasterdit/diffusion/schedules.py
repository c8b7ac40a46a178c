"""Noise schedules (probability paths) ``x_t = α(t)·x + σ(t)·ε`` on ``t ∈ [0, 1]``.

Every schedule uses the same time convention: ``t = 0`` is clean data, ``t = 1`` (almost) pure
noise. Keeping one convention is what lets a single loss, sampler and SNR analyser serve DDPM,
rectified flow and EDM alike; only α and σ change.

Each schedule exposes α, σ, their time derivatives, the log-SNR ``λ(t) = ln(α²/σ²)`` (nats, *without*
the data's std) and the exact inverse ``t(λ)``. All arithmetic is done in float64 and cast back to
the dtype of ``t`` (float32 input gives float32 output), because the DDPM chain's product formula
loses precision in float32 and samplers step in λ where small errors matter.

Schedules (see docs/diffusion.md for every formula):

* ``ddpm-linear``: the official DiT/ADM chain, ``β_j = linspace(1e-4, 0.02, 1000)``, ``ᾱ_i = Π_{j≤i}(1-β_j)``,
  index ``i ↔ t = (i+1)/1000``. Its continuous extension is the same product written with the
  Gamma function, so it agrees with the discrete ``ᾱ`` at every grid point and is smooth between them.
* ``ddpm-cosine``: improved-DDPM's cosine ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²((t+s)/(1+s)·π/2)``.
* ``flow-linear``: rectified flow, ``α = 1-t, σ = t``.
* ``flow-cosine``: ``α = cos(πt/2), σ = sin(πt/2)`` (SiT's "GVP").
* ``edm``: Karras et al.'s ρ-schedule of the VE noise level ``σ_e(t)``, written as a VP path
  ``α = 1/√(1+σ_e²), σ = σ_e/√(1+σ_e²)`` (the same ``x_t`` up to the scale EDM's ``c_in`` removes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fasterdit.errors import ConfigError

SCHEDULES = ("ddpm-linear", "ddpm-cosine", "flow-linear", "flow-cosine", "edm")

TimeLike = Tensor | float


def _f64(t: TimeLike) -> Tensor:
    """Any time-like input as a float64 tensor on its own device."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64)


def _back(v: Tensor, like: TimeLike) -> Tensor:
    """Cast a float64 result back to the caller's floating dtype (default dtype for ints/Python floats)."""
    if isinstance(like, Tensor) and like.is_floating_point():
        return v.to(like.dtype)
    return v.to(torch.get_default_dtype())


class Schedule:
    """A path ``x_t = α(t)·x + σ(t)·ε``. Subclasses implement the float64 ``_…`` methods.

    Attributes:
        name: the registry name (``get_schedule(name)`` rebuilds it with ``params``).
        params: constructor keyword arguments, for YAML round-trips.
        is_discrete: True for the DDPM chains (they also define ``num_steps``, ``betas`` and
            ``alphas_cumprod``, float64 tensors of length ``num_steps``).
        variance_preserving: α² + σ² = 1 (DDPM, flow-cosine, EDM-as-VP).
    """

    name: str = ""
    is_discrete: bool = False
    num_steps: int | None = None
    betas: Tensor | None = None
    alphas_cumprod: Tensor | None = None
    variance_preserving: bool = False

    def __init__(self, **params: Any):
        self.params = dict(params)
        #: :func:`ddpm_posterior`'s tables per (device, dtype): copied to a device once, not per loss call
        self._posterior: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    # --- float64 kernels, overridden by subclasses -------------------------------------------------
    def _alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def _d_log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (self._d_alpha(t) / self._alpha(t) - self._d_sigma(t) / self._sigma(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    # --- public API ---------------------------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        """Signal coefficient α(t)."""
        return _back(self._alpha(_f64(t)), t)

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise coefficient σ(t)."""
        return _back(self._sigma(_f64(t)), t)

    def d_alpha(self, t: TimeLike) -> Tensor:
        """dα/dt."""
        return _back(self._d_alpha(_f64(t)), t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        """dσ/dt (infinite at t = 0 for VP schedules, where σ ~ √t)."""
        return _back(self._d_sigma(_f64(t)), t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """λ(t) = ln(α²/σ²) in nats, without the data std; +inf at clean t=0, -inf where α = 0."""
        return _back(self._log_snr(_f64(t)), t)

    def d_log_snr(self, t: TimeLike) -> Tensor:
        """dλ/dt = 2(α'/α − σ'/σ) (negative: SNR falls with t)."""
        return _back(self._d_log_snr(_f64(t)), t)

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """Inverse of :meth:`log_snr`, clamped to [0, 1] for λ outside the schedule's range."""
        lam64 = _f64(lam)
        t = self._t_from_log_snr(lam64.clamp(self.lambda_min, self.lambda_max)).clamp(0.0, 1.0)
        t = torch.where(lam64 >= self.lambda_max, torch.zeros_like(t), t)
        t = torch.where(lam64 <= self.lambda_min, torch.ones_like(t), t)
        t = torch.where(torch.isnan(lam64), lam64, t)
        return _back(t, lam)

    @property
    def lambda_max(self) -> float:
        """λ(0) (+inf when t = 0 is exactly clean)."""
        return float(self._log_snr(torch.tensor(0.0, dtype=torch.float64)))

    @property
    def lambda_min(self) -> float:
        """λ(1) (-inf when t = 1 is exactly pure noise)."""
        return float(self._log_snr(torch.tensor(1.0, dtype=torch.float64)))

    def clamp_t(self, t: Tensor, eps: float = 1e-5) -> Tensor:
        """Clamp t to [eps, 1-eps], away from the endpoints where λ = ±inf or dividing by α or σ fails."""
        return t.clamp(eps, 1.0 - eps)

    def index_to_t(self, i: Tensor) -> Tensor:
        """Discrete step index 0..N-1 -> t = (i+1)/N (the DDPM chains' grid)."""
        n = self._require_discrete()
        return (i.to(torch.float64) + 1.0) / n

    def t_to_index(self, t: Tensor) -> Tensor:
        """t -> nearest discrete step index, the inverse of :meth:`index_to_t`, clamped to 0..N-1."""
        n = self._require_discrete()
        return (torch.round(_f64(t) * n) - 1.0).clamp(0, n - 1).to(torch.long)

    def _require_discrete(self) -> int:
        if not self.is_discrete or self.num_steps is None:
            raise ConfigError("schedule", f"{self.name!r} is continuous; it has no discrete step indices")
        return self.num_steps

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class DDPMLinear(Schedule):
    """The official DiT/ADM linear-β chain, extended to continuous t through the Gamma function.

    With ``1-β_j = a - jΔ`` (``a = 1-β_start``, ``Δ = (β_end-β_start)/(N-1)``) the product of the first
    ``n`` factors is ``Δⁿ·Γ(A+1)/Γ(A+1-n)`` with ``A = a/Δ``. Putting ``n = N·t`` gives a smooth
    ``ln ᾱ(t) = n·lnΔ + lnΓ(A+1) − lnΓ(A+1−n)`` that equals the discrete ``ᾱ_i`` exactly at
    ``t = (i+1)/N`` and has the closed-form derivative ``N·(lnΔ + ψ(A+1−n))``. Its inverse ``t(λ)`` is
    found by Newton's method, which converges monotonically because ``ln ᾱ`` is concave in ``n``.

    The difference of the two lnΓ terms (each ≈ 5·10⁵ for the default β) is evaluated with Stirling's
    series in a cancellation-free form, so ``ln ᾱ`` is accurate to ~1e-13 instead of ~1e-10.
    """

    name = "ddpm-linear"
    is_discrete = True
    variance_preserving = True
    #: Newton steps of :meth:`_t_from_log_snr`, always all of them (no host-side convergence test)
    NEWTON_STEPS = 8

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        if not 0.0 < beta_start < 1.0:
            raise ConfigError("schedule.beta_start", f"must be in (0, 1), got {beta_start}")
        if not beta_start < beta_end < 1.0:
            raise ConfigError("schedule.beta_end", f"must be in (beta_start, 1), got {beta_end}")
        if int(num_steps) != num_steps or num_steps < 2:
            raise ConfigError("schedule.num_steps", f"must be an integer >= 2, got {num_steps}")
        super().__init__(beta_start=beta_start, beta_end=beta_end, num_steps=int(num_steps))
        self.num_steps = int(num_steps)
        self.betas = torch.linspace(beta_start, beta_end, self.num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._delta = (beta_end - beta_start) / (self.num_steps - 1)
        self._A = (1.0 - beta_start) / self._delta
        self._log_delta = math.log(self._delta)
        self._lgamma_A1 = math.lgamma(self._A + 1.0)
        self._log_delta_z1 = math.log1p(self._delta - beta_start)  # ln(Δ·(A+1)) = ln(1 − β_start + Δ)
        self._stirling = self._A + 1.0 - self.num_steps >= 50.0  # Stirling's series exact to float64

    @staticmethod
    def _stirling_tail(z: Tensor | float) -> Tensor | float:
        """lnΓ(z) − [(z−½)ln z − z + ½ln 2π], accurate to < 1e-18 for z ≥ 50."""
        r = 1.0 / z
        r2 = r * r
        return r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 / 1680)))

    def _log_abar_n(self, n: Tensor) -> Tensor:
        """ln Π_{j<n}(1 − β_j) for real n ∈ [0, N]."""
        if not self._stirling:
            return n * self._log_delta + self._lgamma_A1 - torch.lgamma(self._A + 1.0 - n)
        z1 = self._A + 1.0
        z2 = z1 - n
        return (
            n * (self._log_delta_z1 - 1.0)
            - (z2 - 0.5) * torch.log1p(-n / z1)
            + (self._stirling_tail(z1) - self._stirling_tail(z2))
        )

    def _log_abar(self, t: Tensor) -> Tensor:
        return self._log_abar_n(t * self.num_steps)

    def _d_log_abar(self, t: Tensor) -> Tensor:
        n = t * self.num_steps
        return self.num_steps * (self._log_delta + torch.digamma(self._A + 1.0 - n))

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._log_abar(t))

    def _sigma(self, t: Tensor) -> Tensor:
        # "+ 0.0" turns the -0.0 of -expm1(0) into +0.0, so that σ'(0) = +inf rather than -inf
        return torch.sqrt((-torch.expm1(self._log_abar(t))).clamp(min=0.0) + 0.0)

    def _d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * self._alpha(t) * self._d_log_abar(t)

    def _d_sigma(self, t: Tensor) -> Tensor:
        la = self._log_abar(t)
        return -torch.exp(la) * self._d_log_abar(t) / (2.0 * torch.sqrt(-torch.expm1(la) + 0.0))

    def _log_snr(self, t: Tensor) -> Tensor:
        la = self._log_abar(t)
        return la - torch.log(-torch.expm1(la))

    def _d_log_snr(self, t: Tensor) -> Tensor:
        # λ = L - ln(1 - e^L)  =>  dλ/dt = L' / (1 - e^L)
        la = self._log_abar(t)
        return self._d_log_abar(t) / (-torch.expm1(la))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        target = -torch.nn.functional.softplus(-lam)  # ln ᾱ = ln sigmoid(λ)
        n_max = float(self.num_steps)
        # Start right of the root (then Newton decreases monotonically): since −ln(1−β) ≥ β, the root of
        # the first-order approximation −ln ᾱ ≈ β_start·n + Δ·n²/2 lies at or beyond the true one.
        b0 = self.params["beta_start"]
        n = ((torch.sqrt(b0 * b0 - 2.0 * self._delta * target) - b0) / self._delta).clamp(0.0, n_max)
        n = torch.where(torch.isfinite(n), n, torch.full_like(n, n_max))
        # A fixed number of steps, and "converged" kept as a device flag: asking the host whether to stop
        # would be a GPU->CPU sync per step in the training step (the edm-lognormal law draws through
        # here). Once every step of an iteration is below the tolerance, later iterations leave n as it
        # is, so the result equals Newton stopped at convergence (at most 4 steps over the whole λ range
        # from this start, tests/test_schedules.py; NEWTON_STEPS leaves a margin).
        done = torch.zeros((), dtype=torch.bool, device=n.device)
        for _ in range(self.NEWTON_STEPS):
            g = self._log_abar_n(n) - target
            dg = self._log_delta + torch.digamma(self._A + 1.0 - n)
            step = torch.where(torch.isfinite(target), g / dg, torch.zeros_like(g))
            n = torch.where(done, n, (n - step).clamp(0.0, n_max))
            done = done | (step.abs() <= 1e-10 * n_max).all()
        n = torch.where(target == 0, torch.zeros_like(n), n)  # λ = +inf -> exactly clean
        return n / self.num_steps


class DDPMCosine(Schedule):
    """Improved-DDPM's cosine schedule ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²(φ(t))``, ``φ = (t+s)/(1+s)·π/2``.

    The discrete chain uses iDDPM's ``β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), max_beta)``; its ``ᾱ_i`` telescopes
    to the continuous ``ᾱ((i+1)/N)`` at every index except the last, where the clipping (β = 0.999
    instead of 1) leaves ``ᾱ_{N-1} = 0.001·ᾱ_{N-2}`` while the continuous ``ᾱ(1) = 0``.
    """

    name = "ddpm-cosine"
    is_discrete = True
    variance_preserving = True

    def __init__(self, s: float = 0.008, num_steps: int = 1000, max_beta: float = 0.999):
        if not 0.0 <= s < 1.0:
            raise ConfigError("schedule.s", f"must be in [0, 1), got {s}")
        if int(num_steps) != num_steps or num_steps < 2:
            raise ConfigError("schedule.num_steps", f"must be an integer >= 2, got {num_steps}")
        if not 0.0 < max_beta < 1.0:
            raise ConfigError("schedule.max_beta", f"must be in (0, 1), got {max_beta}")
        super().__init__(s=s, num_steps=int(num_steps), max_beta=max_beta)
        self.s = s
        self.num_steps = int(num_steps)
        self._phi0 = s / (1.0 + s) * math.pi / 2
        self._c0 = math.cos(self._phi0)
        self._dphi = math.pi / (2.0 * (1.0 + s))
        grid = torch.arange(self.num_steps + 1, dtype=torch.float64) / self.num_steps
        abar = self._alpha(grid) ** 2
        self.betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def _phi(self, t: Tensor) -> Tensor:
        return self._phi0 + t * self._dphi

    def _alpha(self, t: Tensor) -> Tensor:
        # cos(φ) written as sin(π/2 − φ) so that α(1) is exactly 0
        return (torch.sin((1.0 - t) * self._dphi) / self._c0).clamp(min=0.0)

    def _sigma(self, t: Tensor) -> Tensor:
        # 1 − cos²φ/cos²φ0 = sin(φ−φ0)·sin(φ+φ0)/cos²φ0, free of cancellation at small t
        phi = self._phi(t)
        return (
            torch.sqrt((torch.sin(phi - self._phi0) * torch.sin(phi + self._phi0)).clamp(min=0.0)) / self._c0
        )

    def _d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(self._phi(t)) * self._dphi / self._c0

    def _d_sigma(self, t: Tensor) -> Tensor:
        return torch.sin(2.0 * self._phi(t)) * self._dphi / (2.0 * self._sigma(t) * self._c0**2)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # ᾱ = sigmoid(λ) and cos φ = √ᾱ·cos φ0
        sqrt_abar = torch.exp(-0.5 * torch.nn.functional.softplus(-lam))
        phi = torch.acos((sqrt_abar * self._c0).clamp(-1.0, 1.0))
        t = ((phi - self._phi0) / self._dphi).clamp(0.0, 1.0)
        # acos near cos φ0 cancels (t ~ 1e-8 at λ = 20); two Newton steps on the accurate λ(t) repair it
        for _ in range(2):
            step = (self._log_snr(t) - lam) / self._d_log_snr(t)
            t = torch.where(torch.isfinite(step), (t - step).clamp(0.0, 1.0), t)
        return t


class FlowLinear(Schedule):
    """Rectified flow / SiT "Linear": α = 1 − t, σ = t; the velocity is x₁ − x₀ = ε − x."""

    name = "flow-linear"

    def __init__(self) -> None:
        super().__init__()

    def _alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def _sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def _d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * lam)


class FlowCosine(Schedule):
    """SiT's "GVP" path: α = cos(πt/2), σ = sin(πt/2), variance preserving."""

    name = "flow-cosine"
    variance_preserving = True

    def __init__(self) -> None:
        super().__init__()

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.sin((1.0 - t) * (math.pi / 2))  # = cos(πt/2), exactly 0 at t = 1

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sin(t * (math.pi / 2))

    def _d_alpha(self, t: Tensor) -> Tensor:
        return -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def _d_sigma(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.sin((1.0 - t) * (math.pi / 2))

    def _d_log_snr(self, t: Tensor) -> Tensor:
        # λ = −2 ln tan(πt/2)  =>  λ' = −2π / sin(πt)
        return -2.0 * math.pi / torch.sin(math.pi * t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.atan(torch.exp(-0.5 * lam)) * (2.0 / math.pi)


class EDM(Schedule):
    """Karras et al. (EDM) noise levels as a VP path.

    EDM corrupts ``x + σ_e·ε`` with ``σ_e(t) = (σ_min^{1/ρ} + t·(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ`` (the
    ρ-schedule of its sampler, here used as the time parameterisation). Dividing by ``√(1+σ_e²)``
    gives ``α = 1/√(1+σ_e²)``, ``σ = σ_e/√(1+σ_e²)`` and ``λ = −2 ln σ_e``: the same SNR for data in
    EDM's units (σ_data = 0.5 for [-1, 1] pixels). ``t = 0`` is ``σ_e = σ_min`` (nearly clean, λ ≈ 12.4
    for the default); pass ``sigma_min=0`` for an exactly clean endpoint.
    """

    name = "edm"
    variance_preserving = True

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not sigma_min >= 0.0:
            raise ConfigError("schedule.sigma_min", f"must be >= 0, got {sigma_min}")
        if not sigma_max > sigma_min:
            raise ConfigError("schedule.sigma_max", f"must be > sigma_min, got {sigma_max}")
        if not rho > 0.0:
            raise ConfigError("schedule.rho", f"must be > 0, got {rho}")
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.rho = rho
        self._a = sigma_min ** (1.0 / rho)
        self._b = sigma_max ** (1.0 / rho)

    def sigma_edm(self, t: TimeLike) -> Tensor:
        """EDM's VE noise level σ_e(t)."""
        return _back(self._sigma_e(_f64(t)), t)

    def _sigma_e(self, t: Tensor) -> Tensor:
        return (self._a + t * (self._b - self._a)) ** self.rho

    def _d_sigma_e(self, t: Tensor) -> Tensor:
        return self.rho * (self._a + t * (self._b - self._a)) ** (self.rho - 1.0) * (self._b - self._a)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.rsqrt(1.0 + self._sigma_e(t) ** 2)

    def _sigma(self, t: Tensor) -> Tensor:
        se = self._sigma_e(t)
        return se * torch.rsqrt(1.0 + se**2)

    def _d_alpha(self, t: Tensor) -> Tensor:
        se = self._sigma_e(t)
        return -se * self._d_sigma_e(t) * (1.0 + se**2) ** -1.5

    def _d_sigma(self, t: Tensor) -> Tensor:
        se = self._sigma_e(t)
        return self._d_sigma_e(t) * (1.0 + se**2) ** -1.5

    def _log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(self._sigma_e(t))

    def _d_log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * self.rho * (self._b - self._a) / (self._a + t * (self._b - self._a))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (torch.exp(-0.5 * lam / self.rho) - self._a) / (self._b - self._a)


def ddpm_posterior(
    sched: Schedule, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """float64 tables of the discrete chain's posterior q(x_{i−1} | x_i, x₀), indexed by step i = 0..N−1.

    Keys (ADM/DiT names): ``betas``, ``alphas_cumprod``, ``alphas_cumprod_prev`` (ᾱ_{i−1}, 1 at i = 0),
    ``posterior_variance`` β̃_i = β_i(1−ᾱ_{i−1})/(1−ᾱ_i), ``posterior_log_variance_clipped`` (ln β̃ with
    β̃_0 replaced by β̃_1, since β̃_0 = 0), ``posterior_mean_coef1`` β_i√ᾱ_{i−1}/(1−ᾱ_i) (times x₀) and
    ``posterior_mean_coef2`` (1−ᾱ_{i−1})√(1−β_i)/(1−ᾱ_i) (times x_i). Used by the hybrid VB loss and by
    DDPM ancestral sampling with learned-range variance.

    ``device``/``dtype``: the same tables (computed in float64) cast and copied there once and kept on the
    schedule. Why: the loss reads them every micro-step, and a copy from pageable host memory blocks the
    host until the device's whole queue has run, which would undo the training step's look-ahead.
    """
    if not sched.is_discrete or sched.betas is None or sched.alphas_cumprod is None:
        raise ConfigError("schedule", f"{sched.name!r} has no discrete DDPM chain")
    key = (torch.device(device), dtype)
    if key not in sched._posterior:
        host = (torch.device("cpu"), torch.float64)
        if host not in sched._posterior:
            sched._posterior[host] = _posterior_tables(sched.betas, sched.alphas_cumprod)
        sched._posterior[key] = {k: v.to(key[0], dtype) for k, v in sched._posterior[host].items()}
    return sched._posterior[key]


def _posterior_tables(betas: Tensor, abar: Tensor) -> dict[str, Tensor]:
    """The float64 tables of :func:`ddpm_posterior` from the chain's β and ᾱ."""
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        "posterior_mean_coef1": betas * torch.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * torch.sqrt(1.0 - betas) / (1.0 - abar),
    }


_REGISTRY: dict[str, type[Schedule]] = {
    "ddpm-linear": DDPMLinear,
    "ddpm-cosine": DDPMCosine,
    "flow-linear": FlowLinear,
    "flow-cosine": FlowCosine,
    "edm": EDM,
}


def get_schedule(name: str | Schedule, **kw: Any) -> Schedule:
    """Build a schedule by name (one of :data:`SCHEDULES`); a Schedule instance is returned as is."""
    if isinstance(name, Schedule):
        return name
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError("schedule", f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    try:
        return cls(**kw)
    except TypeError as err:
        raise ConfigError("schedule", f"bad parameters {kw} for {name!r}: {err}") from err
