"""The SNR-PDF analyser: the density of the extended log-SNR a training recipe puts on real data.

FasterDiT (§3) extends the signal-to-noise ratio with the standard deviation of the data the
network actually sees, ``SNR(t) = α(t)²·std² / σ(t)²``, and argues that what makes a training
strategy fast — or fail to transfer to new data — is the *probability density* of that SNR over the
training timesteps. Everything here works with the extended log-SNR in **nats**::

    λ = ln(α(t)²·std² / σ(t)²) = λ_sched(t) + 2·ln std        (dB = 10/ln 10 · λ ≈ 4.343·λ)

For a timestep sampler with density ``p_t`` the density of λ follows by change of variables; λ(t)
is strictly decreasing, so ``p(λ) = p_t(t(λ)) · |dt/dλ| = p_t(t(λ)) / |λ'(t(λ))|``, with ``t(λ)`` the
schedule's exact inverse and ``λ'(t) = 2(α'/α − σ'/σ)`` the schedule's analytic derivative (autograd,
then a float64 central difference, only for third-party schedules that lack one). Its CDF is exact
too, ``P(Λ ≤ λ) = 1 − P_t(T ≤ t(λ))``, so quantiles and window masses need no numerical integration;
only the mean, std and mode are taken on a fine float64 grid. A Monte-Carlo estimate (draw t with the
recipe's own sampler, histogram ``λ(t)``) is offered beside it as an independent check.

Which std: the recipe's :class:`~fasterdit.diffusion.scaling.DataScaling` says, through
:meth:`~fasterdit.diffusion.scaling.DataScaling.effective_stds` (an unresolved scaling as if resolved on the
given data), so the PDF is that of the data the model trains on — a recipe that standardises
its data (FasterDiT's preset) shows the same PDF for any raw data std, which is the point of the
"std modulation". Per-channel stds give either one curve per channel (``per_channel=True``) or one
curve for the pooled std of all channels (default; a RunningStats gives the exact pooled std,
a bare list of channel stds the same formula with equal channel means, ``√mean(s_c²)``; see
:func:`fasterdit.data.stats.pooled_std`).

Why one module of ~700 lines: the law (:class:`LogSNRDistribution`, its exact density, CDF and
summaries), the recipe adapters and the scale recommendation that inverts the law share the private
grid and std helpers; the dataset reading and the figure, which did not, live elsewhere. Where the rest
lives: reading a dataset's std is :func:`fasterdit.data.measure.measure_data_std`, the
figure is :func:`fasterdit.viz.snr.save_snr_plot`.

Discrete DDPM samplers (index i uniform in 0..N−1, t = (i+1)/N) are treated through their continuous
relaxation: each grid time stands for the bin ((i)/N, (i+1)/N], i.e. t ~ U(0, 1] pushed through the
schedule's smooth continuous extension (exact at every grid point). The Monte-Carlo check uses the
same relaxation (every drawn grid time is spread uniformly over its bin), so it checks the exact
density rather than a comb of 1000 spikes.

Scaling the data by k multiplies std by k and therefore shifts every λ — and every quantile, the
mode and the mean — by exactly ``2·ln k``; :func:`recommend_scale` inverts that relation.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.data.stats import DataStats, RunningStats
from fasterdit.diffusion.recipe import Recipe, RecipeSpec, load_recipe
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.diffusion.schedules import Schedule
from fasterdit.diffusion.timesteps import Shifted, TimestepSampler, UniformDiscrete
from fasterdit.errors import ConfigError

__all__ = [
    "NATS_TO_DB",
    "QUANTILE_LEVELS",
    "LogSNRDistribution",
    "SNRSummary",
    "ScaleRecommendation",
    "check_window",
    "default_window",
    "is_schedule_pair",
    "recipe_label",
    "recommend_scale",
    "snr_distribution",
    "snr_distributions",
    "unit_factor",
]

NATS_TO_DB = 10.0 / math.log(10.0)  # λ[dB] = NATS_TO_DB · λ[nats]
QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
UNITS = ("nats", "dB")
_TAIL = 1e-10  # probability left out at each end of the internal grid
_GRID_POINTS = 20_001  # internal float64 grid for mean/std/mode
# shift-free grids per timestep sampler (weakly held) and schedule: the std only translates them
_BASE_GRIDS: weakref.WeakKeyDictionary[
    TimestepSampler, dict[int, tuple[Schedule, tuple[np.ndarray, np.ndarray]]]
] = weakref.WeakKeyDictionary()

#: λ values (nats) or probability levels: a number, a sequence or an array
Points = float | Sequence[float] | np.ndarray
#: a bare strategy, without data scaling: (schedule, timestep sampler)
SchedulePair = tuple[Schedule, TimestepSampler]
#: what the analyser reads as a recipe: anything :func:`load_recipe` takes, or a bare pair
RecipeLike = RecipeSpec | SchedulePair
#: the raw data's std: one number, channel stds (a sequence, tensor or array), or measured statistics
DataStd = float | Sequence[float] | torch.Tensor | np.ndarray | DataStats | RunningStats

# ----------------------------------------------------------------------------------------- helpers


def unit_factor(units: str) -> float:
    if units not in UNITS:
        raise ConfigError("units", f"must be one of {', '.join(UNITS)}, got {units!r}")
    return 1.0 if units == "nats" else NATS_TO_DB


def _check_std(value: object, field_name: str = "data_std") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field_name, f"must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(field_name, f"must be a finite number > 0, got {value!r}")
    return v


def check_window(window: Sequence[float] | None, field_name: str = "window") -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(field_name, f"must be two numbers LO,HI (nats), got {window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(field_name, f"needs finite LO < HI (nats), got {window!r}")
    return lo, hi


def _d_log_snr(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """dλ/dt in float64: the schedule's analytic derivative (all built-in schedules), else autograd
    through ``log_snr``, else a central finite difference: a third-party :class:`Schedule` may leave
    α' and σ' unimplemented (``NotImplementedError``, the base class's contract)."""
    try:
        return schedule.d_log_snr(t).to(torch.float64)
    except NotImplementedError:
        pass
    try:
        tt = t.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(schedule.log_snr(tt).sum(), tt)
        if torch.isfinite(grad).any():
            return grad.detach().to(torch.float64)
    except RuntimeError:
        pass
    h = 1e-6
    hi, lo = (t + h).clamp(max=1.0), (t - h).clamp(min=0.0)
    return (schedule.log_snr(hi).double() - schedule.log_snr(lo).double()) / (hi - lo)


def _is_discrete_sampler(sampler: TimestepSampler) -> int | None:
    """Number of grid steps of a DDPM-style discrete sampler (t = (i+1)/N), else None."""
    return sampler.num_steps if isinstance(sampler, UniformDiscrete) else None


# ------------------------------------------------------------------------------------ the law of λ


@dataclass(frozen=True)
class SNRSummary:
    """Summary statistics of one log-SNR law, all locations in nats (see :meth:`to_dict` for dB).

    ``mass_on_grid`` is ∫p(λ)dλ over the internal grid (which omits 1e-10 of probability at each
    end): it should be 1 to ~1e-9 and is reported as the "integrates to 1" check.
    """

    mode: float
    mean: float
    std: float
    quantiles: dict[float, float]
    window: tuple[float, float] | None
    mass_in_window: float | None
    mass_on_grid: float

    @property
    def median(self) -> float:
        return self.quantiles[0.5]

    def to_dict(self, units: str = "nats") -> dict[str, Any]:
        f = unit_factor(units)
        u = units
        out: dict[str, Any] = {
            f"mode_{u}": self.mode * f,
            f"mean_{u}": self.mean * f,
            f"std_{u}": self.std * f,
            f"median_{u}": self.median * f,
            f"quantiles_{u}": {f"{round(q * 100):d}%": v * f for q, v in self.quantiles.items()},
            "integral_of_pdf": self.mass_on_grid,
        }
        if self.window is not None:
            out[f"window_{u}"] = [self.window[0] * f, self.window[1] * f]
            out["mass_in_window"] = self.mass_in_window
        return out


class LogSNRDistribution:
    """The law of the extended log-SNR ``λ = λ_sched(t) + 2·ln(effective_std)``, t ~ ``sampler``.

    Args:
        schedule: the path; its ``d_log_snr`` is used where it is implemented (see :func:`_d_log_snr`).
        sampler: the timestep law: ``pdf`` for the density, ``cdf`` for quantiles and window masses,
            ``sample`` for the Monte-Carlo check.
        effective_std: the std of the data *as the model sees it* (after the recipe's scaling).
        label: the recipe's name, for legends and tables.
        data_std: the raw data std this was computed for (informational).
        channel: the channel index for per-channel curves, else None (pooled).
        scaling_note: a short description of the recipe's data scaling, for legends.
    """

    def __init__(
        self,
        schedule: Schedule,
        sampler: TimestepSampler,
        effective_std: float = 1.0,
        *,
        label: str = "",
        data_std: float | None = None,
        channel: int | None = None,
        scaling_note: str = "",
    ):
        self.schedule = schedule
        self.sampler = sampler
        self.effective_std = _check_std(effective_std, "effective_std")
        self.label = label
        self.data_std = float(data_std) if data_std is not None else self.effective_std
        self.channel = channel
        self.scaling_note = scaling_note
        self.shift = 2.0 * math.log(self.effective_std)  # nats added to the schedule's λ
        self._grid_cache: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"LogSNRDistribution({self.label!r}, data_std={self.data_std:.4g}, "
            f"effective_std={self.effective_std:.4g}, channel={self.channel})"
        )

    def scaled(self, k: float) -> LogSNRDistribution:
        """The law after multiplying the data the model sees by ``k`` (λ shifts by 2·ln k)."""
        k = _check_std(k, "k")
        return LogSNRDistribution(
            self.schedule,
            self.sampler,
            self.effective_std * k,
            label=self.label,
            data_std=self.data_std * k,
            channel=self.channel,
            scaling_note=self.scaling_note,
        )

    # --- exact density and CDF ---------------------------------------------------------------------
    def _base(self, lam: Points) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam64 = torch.as_tensor(np.asarray(lam, dtype=np.float64))
        base = lam64 - self.shift
        lo, hi = float(self.schedule.lambda_min), float(self.schedule.lambda_max)
        inside = (base > lo) & (base < hi)
        t = self.schedule.t_from_log_snr(base).to(torch.float64)
        return base, t, inside

    def pdf(self, lam: Points) -> np.ndarray:
        """Exact density of λ at ``lam`` (nats), per nat: ``p_t(t(λ)) / |λ'(t(λ))|``; 0 off the support."""
        _, t, inside = self._base(lam)
        pt = torch.as_tensor(self.sampler.pdf(t), dtype=torch.float64)
        dl = _d_log_snr(self.schedule, t).abs()
        p = pt / dl
        p = torch.where(inside & torch.isfinite(p), p, torch.zeros_like(p))
        return p.numpy()

    def cdf(self, lam: Points) -> np.ndarray:
        """Exact ``P(Λ ≤ λ) = 1 − P_t(T ≤ t(λ))`` (λ decreases with t)."""
        base, t, _ = self._base(lam)
        ft = torch.as_tensor(self.sampler.cdf(t), dtype=torch.float64)
        out = 1.0 - ft
        out = torch.where(base >= float(self.schedule.lambda_max), torch.ones_like(out), out)
        out = torch.where(base <= float(self.schedule.lambda_min), torch.zeros_like(out), out)
        return out.clamp(0.0, 1.0).numpy()

    def mass_between(self, lo: float, hi: float) -> float:
        """Probability that λ falls in [lo, hi] (nats)."""
        c = self.cdf(np.array([lo, hi]))
        return float(max(c[1] - c[0], 0.0))

    def quantile(self, q: Points) -> np.ndarray:
        """λ (nats) at probability levels ``q``, exact: P(Λ ≤ λ_q) = q ⇔ t = the (1−q)-quantile of the
        timestep law (found by bisection of the sampler's CDF in logit t, float64), λ_q = λ(t) + shift."""
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if np.any((q <= 0) | (q >= 1)):
            raise ConfigError("quantile", f"levels must be in (0, 1), got {q.tolist()}")
        t = self._t_quantile(1.0 - q)
        return self.schedule.log_snr(torch.as_tensor(t)).double().numpy() + self.shift

    def _t_quantile(self, levels: np.ndarray) -> np.ndarray:
        """Quantiles of the timestep law, by bisection of its CDF in u = logit(t) ∈ [−60, 60] (so t is
        resolved down to ~1e-26 near either end, where logit-normal laws put their tails)."""
        lv = torch.as_tensor(np.asarray(levels, dtype=np.float64))
        a = torch.full_like(lv, -60.0)
        b = torch.full_like(lv, 60.0)
        for _ in range(100):
            m = 0.5 * (a + b)
            below = torch.as_tensor(self.sampler.cdf(torch.sigmoid(m)), dtype=torch.float64) < lv
            a, b = torch.where(below, m, a), torch.where(below, b, m)
        return torch.sigmoid(0.5 * (a + b)).numpy()

    # --- the internal grid -------------------------------------------------------------------------
    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(λ grid ascending, exact pdf on it), covering all but 2·1e-10 of the probability.

        The grid is laid out in t (uniform in logit t between the sampler's 1e-10 and 1−1e-10
        quantiles) and mapped forward, ``λ_i = λ(t_i)``, ``p_i = p_t(t_i)/|λ'(t_i)|``: no inverse
        schedule evaluations, and the points follow the mass. It is non-uniform in λ; integrals
        use the trapezoid rule on it. The std only translates it, so the shift-free grid is
        computed once per (schedule, sampler) and shared.
        """
        if self._grid_cache is None:
            try:
                per_sampler = _BASE_GRIDS.setdefault(self.sampler, {})
            except TypeError:  # a third-party sampler that cannot be weakly referenced or hashed
                per_sampler = {}
            entry = per_sampler.get(id(self.schedule))
            if entry is None or entry[0] is not self.schedule:
                entry = (self.schedule, self._base_grid())
                per_sampler[id(self.schedule)] = entry
            lam, p = entry[1]
            self._grid_cache = (lam + self.shift, p)
        return self._grid_cache

    def _base_grid(self) -> tuple[np.ndarray, np.ndarray]:
        t_lo, t_hi = (float(v) for v in self._t_quantile(np.array([_TAIL, 1.0 - _TAIL])))
        t_lo, t_hi = max(t_lo, 1e-300), min(t_hi, 1.0 - 1e-16)
        u = torch.linspace(
            math.log(t_lo) - math.log1p(-t_lo),
            math.log(t_hi) - math.log1p(-t_hi),
            _GRID_POINTS,
            dtype=torch.float64,
        )
        t = torch.sigmoid(u).flip(0)  # descending t = ascending λ
        lam = self.schedule.log_snr(t).double()
        pt = torch.as_tensor(self.sampler.pdf(t), dtype=torch.float64)
        p = pt / _d_log_snr(self.schedule, t).abs()
        ok = torch.isfinite(lam) & torch.isfinite(p)
        lam, p = lam[ok].numpy(), p[ok].numpy()
        keep = np.concatenate([[True], np.diff(lam) > 0])  # strictly increasing (flat λ at clamps)
        if keep.sum() < 3:
            raise ConfigError("recipe", f"cannot bracket the log-SNR range of {self.label or 'the recipe'}")
        return lam[keep], p[keep]

    def _grid_cdf(self, lam: np.ndarray) -> np.ndarray:
        grid, p = self._grid()
        c = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
        return np.interp(lam, grid, c / c[-1], left=0.0, right=1.0)

    # --- summary -------------------------------------------------------------------------------------
    def summary(
        self, window: tuple[float, float] | None = None, levels: Sequence[float] = QUANTILE_LEVELS
    ) -> SNRSummary:
        """Mode, mean, std (grid), quantiles and window mass (exact CDF); all in nats."""
        window = check_window(window)
        lam, p = self._grid()
        mass = float(np.trapezoid(p, lam))
        mean = float(np.trapezoid(lam * p, lam) / mass)
        var = float(np.trapezoid((lam - mean) ** 2 * p, lam) / mass)
        i = int(np.argmax(p))
        mode = float(lam[i])
        if 0 < i < len(p) - 1:  # vertex of the parabola through the three grid points around the max
            x0, x1, x2 = lam[i - 1 : i + 2]
            y0, y1, y2 = p[i - 1 : i + 2]
            num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
            den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
            if den != 0 and (y1 - y0) * (y1 - y2) >= 0:
                mode = float(np.clip(x1 - 0.5 * num / den, x0, x2))
        qs = self.quantile(list(levels))
        return SNRSummary(
            mode=mode,
            mean=mean,
            std=math.sqrt(max(var, 0.0)),
            quantiles={float(q): float(v) for q, v in zip(levels, qs)},
            window=window,
            mass_in_window=self.mass_between(*window) if window else None,
            mass_on_grid=mass,
        )

    # --- Monte Carlo ---------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> np.ndarray:
        """n draws of λ (nats) with the recipe's own sampler; discrete samplers are relaxed to their bins.

        Draws at t = 0 or 1 exactly (λ = ±inf) are dropped, so fewer than n values may come back.
        """
        t = self.sampler.sample(int(n), generator=generator, dtype=torch.float64).to(torch.float64)
        steps = _is_discrete_sampler(self.sampler)
        if steps:  # spread each grid time (i+1)/N uniformly over its bin (i/N, (i+1)/N]
            gen_device = generator.device if generator is not None else "cpu"
            u = torch.rand(t.shape, generator=generator, device=gen_device, dtype=torch.float64)
            t = t - u.to(t.device) / steps
        lam = self.schedule.log_snr(t.cpu()).double().numpy() + self.shift
        return lam[np.isfinite(lam)]

    def monte_carlo_check(self, n: int = 200_000, seed: int = 0, bins: int = 60) -> dict[str, float | int]:
        """Compare the exact law with ``n`` seeded draws of ``λ(t) + shift`` (t from the recipe's sampler).

        Two statistics, both through the *inverse* path (``t_from_log_snr``, ``λ'``) that the draws do
        not use: the Kolmogorov–Smirnov distance between the empirical CDF and the exact CDF on 1000
        probe points of the central 99.8 % (the 1 % critical value is ≈ 1.63/√n), and a histogram of
        the central 99 % against the exact pdf integrated over each bin (Simpson, 8 panels), as the
        largest deviation in binomial standard errors (|z| ≲ 4 expected for 60 bins).
        """
        g = torch.Generator().manual_seed(int(seed))
        x = np.sort(self.sample(n, g))
        m = len(x)
        probe = np.linspace(*self.quantile([0.001, 0.999]), 1000)
        emp = np.searchsorted(x, probe, side="right") / m
        ks = float(np.max(np.abs(emp - self.cdf(probe))))
        edges = np.linspace(*self.quantile([0.005, 0.995]), bins + 1)
        counts, _ = np.histogram(x, edges)
        sub = np.linspace(0.0, 1.0, 9)
        pts = edges[:-1, None] + sub[None, :] * np.diff(edges)[:, None]
        w = np.array([1, 4, 2, 4, 2, 4, 2, 4, 1], dtype=np.float64) / 24.0
        prob = (self.pdf(pts.ravel()).reshape(pts.shape) * w).sum(1) * np.diff(edges)
        expected = m * prob
        z = (counts - expected) / np.sqrt(np.maximum(expected * (1 - prob), 1e-12))
        return {
            "n": m,
            "ks_distance": ks,
            "ks_critical_1pct": 1.628 / math.sqrt(m),
            "hist_max_abs_z": float(np.max(np.abs(z))),
            "hist_bins": int(bins),
        }

    def histogram(
        self, n: int = 1_000_000, bins: int | Sequence[float] | np.ndarray = 200, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """MC density estimate: (bin edges in nats, density per nat) from ``n`` seeded draws."""
        x = self.sample(n, torch.Generator().manual_seed(int(seed)))
        dens, edges = np.histogram(x, bins=bins, density=False)
        return edges, dens / (len(x) * np.diff(edges))


# ----------------------------------------------------------------------------- recipes and data std


def recipe_label(recipe: Recipe, spec: RecipeSpec) -> str:
    """The recipe's name for legends and tables, or its file's name for an unnamed (``custom``) recipe read
    from ``spec``, a file; with its timestep shift when it has one (the shift moves the law as a data
    scale does, so two curves that differ only by it must not share a name)."""
    name = Path(spec).stem if recipe.name == "custom" and isinstance(spec, (str, Path)) else recipe.name
    return name if recipe.time_shift == 1.0 else f"{name}@shift{recipe.time_shift:g}"


def is_schedule_pair(obj: object) -> bool:
    """A ``(schedule, timestep_sampler)`` pair rather than a recipe (or a tuple of recipes)."""
    return (
        isinstance(obj, tuple)
        and len(obj) == 2
        and isinstance(obj[0], Schedule)
        and isinstance(obj[1], TimestepSampler)
    )


def _raw_stats(data_std: DataStd) -> DataStats | float:
    """The raw data as :meth:`DataScaling.effective_stds` reads it, every std checked: a number, a
    DataStats or a RunningStats (the channel stds are always reported), or channel stds (a sequence,
    tensor or array: the channel means count as equal; one value is a number)."""
    if isinstance(data_std, RunningStats):
        data_std = data_std.data_stats()
    if isinstance(data_std, DataStats):
        _check_std(data_std.pooled_std)
        for v in data_std.std:
            _check_std(v)
        return data_std
    if isinstance(data_std, torch.Tensor):
        data_std = data_std.detach().double().flatten().tolist()
    if isinstance(data_std, np.ndarray):
        data_std = data_std.astype(np.float64).ravel().tolist()
    if isinstance(data_std, (list, tuple)):
        if not data_std:
            raise ConfigError("data_std", "got an empty list of channel stds")
        chans = [_check_std(v) for v in data_std]
        if len(chans) == 1:
            return chans[0]
        stats = DataStats.from_stds(chans)
        _check_std(stats.pooled_std)
        return stats
    return _check_std(data_std)


def snr_distributions(
    recipe: RecipeLike,
    data_std: DataStd = 1.0,
    *,
    per_channel: bool = False,
    timesteps: TimestepSampler | None = None,
    label: str | None = None,
) -> list[LogSNRDistribution]:
    """The log-SNR law(s) a recipe induces on data of the given std.

    Args:
        recipe: a Recipe, a preset name ("dit", "sit", "fasterdit"), a recipe YAML path, a mapping,
            or a ``(schedule, timestep_sampler)`` pair (no data scaling).
        data_std: the raw data's std: a number, per-channel stds (list/tensor), a DataStats or a
            RunningStats. The recipe's :meth:`DataScaling.effective_stds` turns it into what the model sees.
        per_channel: one law per channel instead of one for the pooled std.
        timesteps: override the recipe's timestep sampler.
        label: legend label (default: the recipe's name).
    """
    if is_schedule_pair(recipe):
        schedule, sampler = recipe
        scaling, name = DataScaling(), "custom"
    else:
        r = load_recipe(recipe)
        schedule, sampler, scaling = r.schedule_obj, r.timestep_sampler_obj, r.scaling
        name = recipe_label(r, recipe)
    if timesteps is not None:
        sampler = timesteps
    label = label or name
    note = scaling.describe()
    raw = _raw_stats(data_std)
    pooled, chans = scaling.effective_stds(raw)
    if per_channel and chans and isinstance(raw, DataStats):
        return [
            LogSNRDistribution(schedule, sampler, s, label=label, data_std=r_c, channel=c, scaling_note=note)
            for c, (s, r_c) in enumerate(zip(chans, raw.std))
        ]
    pooled_raw = raw.pooled_std if isinstance(raw, DataStats) else raw
    return [
        LogSNRDistribution(schedule, sampler, pooled, label=label, data_std=pooled_raw, scaling_note=note)
    ]


def snr_distribution(
    recipe: RecipeLike,
    data_std: DataStd = 1.0,
    *,
    timesteps: TimestepSampler | None = None,
    label: str | None = None,
) -> LogSNRDistribution:
    """The pooled-std log-SNR law of a recipe (see :func:`snr_distributions`)."""
    return snr_distributions(recipe, data_std, timesteps=timesteps, label=label)[0]


# ---------------------------------------------------------------------------------- default window


@lru_cache(maxsize=8)
def default_window(mass: float = 0.8) -> tuple[float, float]:
    """The "good" λ range (nats): the central ``mass`` interval of FasterDiT's own recommended setting.

    FasterDiT's preset (rectified flow, lognorm(0, 1) timesteps, data standardised to its target
    std) is the strategy the paper found fastest on ImageNet latents; the central 80 % of the λ it
    trains on is taken as the target window. For the shipped preset (std 1) λ is exactly
    N(0, 2²), so the window is ±2·Φ⁻¹(0.9) = ±2.563 nats. Derived from the preset, so it follows
    the preset if that changes; a user window (``--window``) always wins.
    """
    if not 0.0 < mass < 1.0:
        raise ConfigError("window", f"the default window's mass must be in (0, 1), got {mass}")
    dist = snr_distribution("fasterdit", 1.0)
    lo, hi = dist.quantile([(1.0 - mass) / 2.0, (1.0 + mass) / 2.0])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------- recommendation


@dataclass(frozen=True)
class ScaleRecommendation:
    """The multiplier k for the data the model sees, and what it does to the log-SNR law.

    Multiplying the (scaled) data by k shifts every λ by ``shift_nats = 2·ln k``. In a recipe this
    means: ``scalar`` mode → multiplier × k; ``std``/``channel`` modes → target_std × k; ``none`` →
    switch to ``scalar`` with multiplier k.

    The same law as a timestep shift: on the linear flow path (α = 1 − t, σ = t) SD3's shift
    t' = s·t/(1 + (s − 1)·t) gives (1 − t')/t' = (1 − t)/(s·t), so λ moves by exactly −2·ln s, for every t:
    scaling the data by k is the time shift s = 1/k, and a recipe that already shifts by s₀ gets
    ``time_shift = s₀/k``. On other paths the shift does not translate λ uniformly (``time_shift`` None).
    """

    k: float
    shift_nats: float
    method: str
    label: str
    data_std: float
    effective_std_before: float
    effective_std_after: float
    target: str
    median_before: float
    median_after: float
    mass_in_window_before: float | None
    mass_in_window_after: float | None
    window: tuple[float, float] | None
    time_shift: float | None  # the recipe's time_shift with the same PDF as k (linear flow path only)

    def to_dict(self, units: str = "nats") -> dict[str, Any]:
        f = unit_factor(units)
        out = {
            "recipe": self.label,
            "k": self.k,
            "method": self.method,
            "target": self.target,
            f"shift_{units}": self.shift_nats * f,
            "data_std": self.data_std,
            "effective_std_before": self.effective_std_before,
            "effective_std_after": self.effective_std_after,
            f"median_before_{units}": self.median_before * f,
            f"median_after_{units}": self.median_after * f,
            "time_shift": self.time_shift,
        }
        if self.window is not None:
            out[f"window_{units}"] = [self.window[0] * f, self.window[1] * f]
            out["mass_in_window_before"] = self.mass_in_window_before
            out["mass_in_window_after"] = self.mass_in_window_after
        return out


def _best_shift_for_window(dist: LogSNRDistribution, window: tuple[float, float]) -> float:
    """The shift d (nats) maximising P(lo ≤ Λ + d ≤ hi): a scan over the bulk, then golden section,
    both on the internal grid's CDF (cheap; the reported masses are then recomputed exactly)."""
    lo, hi = window
    q01, q99 = dist.quantile([0.001, 0.999])
    d = np.linspace(lo - q99, hi - q01, 2001)

    def mass(x: float | np.ndarray) -> np.ndarray:
        return dist._grid_cdf(hi - np.asarray(x)) - dist._grid_cdf(lo - np.asarray(x))

    i = int(np.argmax(mass(d)))
    a, b = d[max(i - 1, 0)], d[min(i + 1, len(d) - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, e = b - g * (b - a), a + g * (b - a)
    fc, fe = mass(c), mass(e)
    for _ in range(60):
        if fc >= fe:
            b, e, fe = e, c, fc
            c = b - g * (b - a)
            fc = mass(c)
        else:
            a, c, fc = c, e, fe
            e = a + g * (b - a)
            fe = mass(e)
    d0 = float(0.5 * (a + b))
    # polish with the exact pdf: at the optimum the density is equal at both window edges
    lo_b, hi_b = d0 - 0.05, d0 + 0.05

    def gap(x: float) -> float:
        p = dist.pdf(np.array([hi - x, lo - x]))
        return float(p[0] - p[1])

    g_lo, g_hi = gap(lo_b), gap(hi_b)
    if g_lo * g_hi < 0:
        for _ in range(50):
            mid = 0.5 * (lo_b + hi_b)
            g_mid = gap(mid)
            if g_mid * g_lo > 0:
                lo_b, g_lo = mid, g_mid
            else:
                hi_b = mid
        return 0.5 * (lo_b + hi_b)
    return d0


def recommend_scale(
    recipe: RecipeLike | LogSNRDistribution,
    data_std: DataStd = 1.0,
    *,
    window: tuple[float, float] | None = None,
    reference: RecipeLike | LogSNRDistribution | None = None,
    reference_std: DataStd | None = None,
    method: str = "median",
    tail: tuple[float, float] | None = None,
) -> ScaleRecommendation:
    """The multiplier k that moves a recipe's log-SNR law where it should be.

    * ``reference`` given (a recipe / preset name / LogSNRDistribution): match its law —
      ``method="median"`` (default) gives ``k = exp((λ_ref_med − λ_med)/2)``; ``"mean"``/``"mode"``
      match those instead. ``reference_std`` is the data std for the reference (default ``data_std``).
    * otherwise a target window (default :func:`default_window`): ``"median"`` puts the median at the
      window's centre; ``"mass"`` maximises the probability inside the window.
    * ``method="tail"``: a target PDF by its low-SNR tail, ``tail = (λ_lo, q)``: k puts the ``q``-quantile
      of λ_data at ``λ_lo`` nats, so at most a fraction ``q`` of training sits below ``λ_lo`` whatever the
      law's spread (a wider law gets larger data). ``(0, 0.5)`` is the median rule; the calibration of
      ``benchmarks/snr_validation.py`` fitted ``(−2.42, 0.09)`` by training on two latent sets, and that
      fit failed its held-out test on pixels (docs/snr.md), so it is an option, not the default.

    ``recipe`` may also be a LogSNRDistribution (then ``data_std`` is ignored).
    """
    if method not in ("median", "mean", "mode", "mass", "tail"):
        raise ConfigError("method", f"must be median, mean, mode, mass or tail, got {method!r}")
    if (method == "tail") != (tail is not None):
        raise ConfigError("tail", "give (λ_lo, q) exactly when the method is 'tail'")
    if tail is not None and not (math.isfinite(tail[0]) and 0.0 < tail[1] < 1.0):
        raise ConfigError("tail", f"needs a finite λ_lo (nats) and 0 < q < 1, got {tail!r}")
    dist = recipe if isinstance(recipe, LogSNRDistribution) else snr_distribution(recipe, data_std)
    s = dist.summary(window)
    stat = {"median": s.median, "mean": s.mean, "mode": s.mode}
    if reference is not None:
        if method in ("mass", "tail"):
            raise ConfigError("method", f"{method!r} sets its own target, not a reference recipe")
        ref = (
            reference
            if isinstance(reference, LogSNRDistribution)
            else snr_distribution(reference, data_std if reference_std is None else reference_std)
        )
        rs = ref.summary()
        shift = {"median": rs.median, "mean": rs.mean, "mode": rs.mode}[method] - stat[method]
        target = f"{method} of {ref.label} (effective std {ref.effective_std:.4g})"
        window = check_window(window)
    else:
        window = check_window(window) or default_window()
        if method == "mass":
            shift = _best_shift_for_window(dist, window)
            target = "maximum mass in window"
        elif tail is not None:
            shift = tail[0] - float(dist.quantile([tail[1]])[0])
            target = f"{tail[1]:.3g}-quantile at {tail[0]:+.4g} nats"
        else:
            shift = 0.5 * (window[0] + window[1]) - stat[method]
            target = f"{method} at window centre"
    k = math.exp(shift / 2.0)
    after = dist.scaled(k)
    sa = after.summary(window)
    return ScaleRecommendation(
        k=k,
        shift_nats=shift,
        method=method,
        label=dist.label,
        data_std=dist.data_std,
        effective_std_before=dist.effective_std,
        effective_std_after=after.effective_std,
        target=target,
        median_before=s.median,
        median_after=sa.median,
        mass_in_window_before=dist.mass_between(*window) if window else None,
        mass_in_window_after=after.mass_between(*window) if window else None,
        window=window,
        time_shift=equivalent_time_shift(dist, k),
    )


def equivalent_time_shift(dist: LogSNRDistribution, k: float) -> float | None:
    """The timestep shift that puts ``dist``'s law where scaling its data by ``k`` would: ``s₀/k`` on the
    linear flow path (see :class:`ScaleRecommendation`), None on paths where a shift is not a translation."""
    if dist.schedule.name != "flow-linear":
        return None
    current = dist.sampler.shift if isinstance(dist.sampler, Shifted) else 1.0
    return current / k


# ---------------------------------------------------------------------------------- the silent-failure guard

#: how far (nats) a recipe's log-SNR law may move from where it sits on unit-std data before fasterdit
#: warns: 2 nats is a data std outside [e^-1, e^1] = [0.37, 2.7] after the recipe's scaling. Raw SD-VAE
#: latents (std ~5.5, +3.4 nats) and latents multiplied twice (x5: +3.2) are past it; the raw mnist-ae
#: latents (1.65: +1.0) and MNIST pixels in [-1, 1] (0.62: -0.96) are not.
PLACEMENT_LIMIT_NATS = 2.0


@dataclass(frozen=True)
class Placement:
    """Where a recipe's log-SNR law sits on this data, relative to where it sits on unit-std data (the std
    every preset is designed for: SD-VAE latents x 0.18215, or data standardised by the recipe)."""

    label: str
    data_std: float  # the measured (raw) pooled std
    effective_std: float  # after the recipe's scaling
    shift_nats: float  # 2·ln(effective_std): how far the law moved
    k: float  # the data multiplier that moves it back (1 / effective_std)
    fix: str  # the --set flags that apply k
    time_shift: float | None  # the same as a timestep shift (linear flow path only)
    median_nats: float
    mass_in_window: float

    @property
    def far(self) -> bool:
        return abs(self.shift_nats) > PLACEMENT_LIMIT_NATS

    def warning(self) -> str:
        """One line naming the measured std, the shift in nats and the flags that fix it."""
        shift = f" or --set recipe.time_shift={self.time_shift:.4g}" if self.time_shift is not None else ""
        return (
            f"warning: {self.label} sees data of std {self.effective_std:.4g} "
            f"(measured {self.data_std:.4g}), which moves its log-SNR law by {self.shift_nats:+.2f} nats "
            "from where it sits on unit-std data "
            f"(mass in the good window {self.mass_in_window:.2f}); fix: {self.fix}{shift} "
            "(fasterdit snr --recommend; silence with --set train.snr_warning=false)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.label,
            "data_std": self.data_std,
            "effective_std": self.effective_std,
            "shift_nats": self.shift_nats,
            "far": self.far,
            "k": self.k,
            "fix": self.fix,
            "time_shift": self.time_shift,
            "median_nats": self.median_nats,
            "mass_in_window": self.mass_in_window,
            "limit_nats": PLACEMENT_LIMIT_NATS,
        }


def scale_flags(scaling: DataScaling, k: float) -> str:
    """The ``--set`` flags that multiply the data the model sees by ``k`` under ``scaling``'s mode."""
    if scaling.mode == "none":
        return f"--set recipe.scaling.mode=scalar --set recipe.scaling.multiplier={k:.4g}"
    if scaling.mode == "scalar":
        return f"--set recipe.scaling.multiplier={scaling.multiplier * k:.4g}"
    return f"--set recipe.scaling.target_std={scaling.target_std * k:.4g}"


def placement(recipe: Recipe, data_std: DataStd) -> Placement:
    """Where ``recipe``'s law sits on data of ``data_std`` (see :class:`Placement`)."""
    dist = snr_distribution(recipe, data_std)
    k = 1.0 / dist.effective_std
    return Placement(
        label=dist.label,
        data_std=dist.data_std,
        effective_std=dist.effective_std,
        shift_nats=dist.shift,
        k=k,
        fix=scale_flags(recipe.scaling, k),
        time_shift=equivalent_time_shift(dist, k),
        median_nats=dist.summary().median,
        mass_in_window=dist.mass_between(*default_window()),
    )
