"""Samplers against closed forms and independent implementations (no training, no downloads).

The analytic case: data x ~ N(μ, diag(s²)) per dimension. Then for x_t = α·x + σ·ε the posterior is
Gaussian with r² = α²s² + σ²:

    E[x|x_t] = μ + α s²/r²·(x_t − αμ),   E[ε|x_t] = σ/r²·(x_t − αμ),   Var[x|x_t] = s²σ²/r²,

so the exact ε / x0 / v / velocity predictions are known at every t, and the probability-flow ODE
keeps the z-score: its exact solution from x(T) is x(0) = μ + s·(x(T) − α_T μ)/r_T.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fasterdit.diffusion.recipe import get_preset
from fasterdit.diffusion.sampling import (
    SAMPLERS,
    ddim,
    ddpm,
    dopri5,
    euler,
    euler_maruyama,
    guided_model_fn,
    heun,
    sample,
    space_timesteps,
)
from fasterdit.diffusion.sampling_base import shift_time, time_grid
from fasterdit.diffusion.sampling_ddpm import learned_range_log_variance, respaced_chain
from fasterdit.diffusion.schedules import get_schedule
from fasterdit.errors import ConfigError

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many small elementwise ops; on a shared 2-core machine OpenMP threads contend
    and slow them down ~50x, so run them single-threaded and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MU = torch.tensor([1.5, -0.5], dtype=F64)
S = torch.tensor([0.5, 0.8], dtype=F64)


# --- the analytic Gaussian model -------------------------------------------------------------------
def _coefs(sched, t):
    # samplers give every row the same t: evaluate the schedule once (it is float64 special functions)
    assert torch.all(t == t[0])
    t = t[:1].to(F64)
    return [f(t)[:, None] for f in (sched.alpha, sched.sigma, sched.d_alpha, sched.d_sigma)]


def gaussian_fn(sched, target, calls=None):
    """Exact prediction of ``target`` for Gaussian data, computed from α, σ, α', σ' only."""

    def fn(x, t):
        if calls is not None:
            calls.append(float(t[0]))
        a, sg, da, ds = _coefs(sched, t)
        r2 = a * a * S * S + sg * sg
        x0 = MU + a * S * S / r2 * (x - a * MU)
        eps = sg / r2 * (x - a * MU)
        return {"eps": eps, "x0": x0, "v": a * eps - sg * x0, "velocity": da * x0 + ds * eps}[target]

    return fn


def exact_endpoint(sched, x_start, t_start):
    t = torch.tensor([t_start], dtype=F64)
    a, sg = sched.alpha(t), sched.sigma(t)
    r = torch.sqrt(a * a * S * S + sg * sg)
    return MU + S * (x_start - a * MU) / r


def noise(n, seed=5):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def assert_gaussian_stats(x, mean_tol=4.5, var_rtol=0.05):
    """Sample mean within ``mean_tol`` standard errors of μ and variance within var_rtol of s²."""
    n = x.shape[0]
    assert torch.all((x.mean(0) - MU).abs() < mean_tol * S / math.sqrt(n)), x.mean(0)
    assert torch.all((x.var(0) / S**2 - 1).abs() < var_rtol), x.var(0)


# --- ODE samplers ----------------------------------------------------------------------------------
ODE_CASES = [
    ("euler", {"steps": 200}, 3e-2),
    ("heun", {"steps": 30}, 1e-2),
    ("dopri5", {"rtol": 1e-6, "atol": 1e-6}, 5e-4),
]


@pytest.mark.parametrize("name,kw,tol", ODE_CASES)
@pytest.mark.parametrize(
    "sched_name,target",
    [("flow-linear", "velocity"), ("flow-linear", "eps"), ("flow-cosine", "x0"), ("ddpm-linear", "eps")],
)
def test_ode_samplers_follow_the_exact_flow(name, kw, tol, sched_name, target):
    sched = get_schedule(sched_name)
    if (sched_name, name) == ("ddpm-linear", "heun"):
        # VP paths have σ ∝ √t: the last step into t=0 has an O(σ²) = O(h) error, so Heun is only
        # first order there (documented); it needs more steps for the same accuracy
        kw, tol = {"steps": 80}, 3e-2
    x1 = noise(4000)
    res = SAMPLERS[name](gaussian_fn(sched, target), x1, sched, target, **kw, return_trajectory=True)
    t_start = res.times[0]
    # flow-linear with an ε target cannot start at t=1 (α=0): the documented fallback start
    assert t_start == (0.999 if (sched_name, target) == ("flow-linear", "eps") else 1.0)
    exact = exact_endpoint(sched, x1, t_start)
    assert (res.x - exact).abs().max() < tol
    assert_gaussian_stats(res.x)
    assert res.times[-1] == 0.0 and torch.equal(res.trajectory[-1], res.x)


def _endpoint_error(method, sched, target, steps):
    x1 = noise(64, seed=1)
    res = method(gaussian_fn(sched, target), x1, sched, target, steps=steps)
    return float((res.x - exact_endpoint(sched, x1, 1.0)).abs().max())


@pytest.mark.parametrize("sched_name,target", [("flow-linear", "velocity"), ("flow-cosine", "x0")])
def test_euler_is_first_order_and_heun_second_order(sched_name, target):
    sched = get_schedule(sched_name)
    steps = np.array([8, 16, 32, 64])
    for method, order in ((euler, 1.0), (heun, 2.0)):
        errs = np.array([_endpoint_error(method, sched, target, int(n)) for n in steps])
        slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
        assert abs(slope - order) < 0.2, (method.__name__, slope, errs)


def test_dopri5_reaches_the_requested_tolerance_and_counts_evaluations():
    sched = get_schedule("flow-cosine")
    x1 = noise(256)
    exact = exact_endpoint(sched, x1, 1.0)
    nfes = []
    for tol in (1e-4, 1e-6, 1e-8):
        calls = []
        res = dopri5(gaussian_fn(sched, "velocity", calls), x1, sched, "velocity", rtol=tol, atol=tol)
        # global error in the solver's own mixed norm atol + rtol·|x|, within a factor 10 of the
        # requested (local) tolerance
        err = float(((res.x - exact).abs() / (tol + tol * exact.abs())).max())
        assert err < 10, (tol, err)
        assert res.nfe == len(calls)  # independent count of the model calls
        assert min(calls) >= 0.0  # never evaluated past the end (step_t)
        nfes.append(res.nfe)
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_stops_short_of_a_singular_end_and_jumps_to_x0():
    # DDPM-linear: σ ∝ √t so the velocity is infinite at t=0; the solver stops at t_min=1e-3
    sched = get_schedule("ddpm-linear")
    calls = []
    x1 = noise(256)
    res = dopri5(gaussian_fn(sched, "eps", calls), x1, sched, "eps", rtol=1e-6, atol=1e-6)
    assert min(calls) == pytest.approx(1e-3)
    assert res.nfe == len(calls)
    assert (res.x - exact_endpoint(sched, x1, 1.0)).abs().max() < 1e-3


def test_fixed_step_nfe_counts():
    sched = get_schedule("flow-linear")
    x1 = noise(8)
    fn = gaussian_fn(sched, "velocity")
    g = torch.Generator().manual_seed(0)
    assert euler(fn, x1, sched, "velocity", steps=7).nfe == 7
    assert heun(fn, x1, sched, "velocity", steps=7).nfe == 2 * 7  # full Heun step into t = 0
    assert heun(fn, x1, sched, "velocity", steps=7, last_step="x0").nfe == 2 * 7 - 1
    vp = get_schedule("ddpm-linear")  # no finite velocity at t = 0: an EDM-style last step
    assert heun(gaussian_fn(vp, "eps"), x1, vp, "eps", steps=7).nfe == 2 * 7 - 1
    with pytest.raises(ConfigError, match="no finite velocity"):
        heun(gaussian_fn(vp, "eps"), x1, vp, "eps", steps=7, last_step="heun")
    with pytest.raises(ConfigError, match="last_step"):
        euler(fn, x1, sched, "velocity", steps=7, last_step="jump")
    assert euler_maruyama(fn, x1, sched, "velocity", steps=7, generator=g).nfe == 7
    assert ddim(fn, x1, sched, "velocity", steps=7).nfe == 7
    dsched = get_schedule("ddpm-linear")
    assert ddpm(gaussian_fn(dsched, "eps"), x1, dsched, "eps", steps=25, generator=g).nfe == 25


def test_time_shift_grid():
    s = 3.0
    plain = time_grid(10)
    shifted = time_grid(10, shift=s)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    for u, t in zip(plain, shifted):
        assert t == pytest.approx(s * u / (1 + (s - 1) * u), abs=1e-12)  # SD3: t' = s·t/(1+(s−1)t)
    assert time_grid(10, shift=1.0) == plain
    assert shifted[5] > plain[5]  # s > 1 spends more steps at high noise
    assert shift_time(0.5, 1.0) == 0.5
    # a shifted grid with a t_max below 1 keeps both endpoints exactly
    g = time_grid(4, t_max=0.9, shift=2.0)
    assert g[0] == 0.9 and g[-1] == 0.0 and all(a > b for a, b in itertools.pairwise(g))
    # shifted Euler still converges to the exact flow
    sched = get_schedule("flow-linear")
    x1 = noise(64)
    res = euler(gaussian_fn(sched, "velocity"), x1, sched, "velocity", steps=200, shift=3.0)
    assert (res.x - exact_endpoint(sched, x1, 1.0)).abs().max() < 3e-2


# --- SDE ---------------------------------------------------------------------------------------------
def test_euler_maruyama_recovers_the_data_distribution():
    sched = get_schedule("flow-linear")
    x1 = noise(20000, seed=3)
    g = torch.Generator().manual_seed(4)
    res = euler_maruyama(gaussian_fn(sched, "velocity"), x1, sched, "velocity", steps=100, generator=g)
    assert_gaussian_stats(res.x)
    # the noise really moved the samples off the deterministic flow (it is an SDE)
    assert (res.x - exact_endpoint(sched, x1, 1.0)).abs().mean() > 0.1
    # SiT-style grid (uniform to 0.04, then one deterministic step to 0), here from an x0 target
    res = euler_maruyama(
        gaussian_fn(sched, "x0"), x1, sched, "x0", steps=60, generator=g, last_step_size=0.04, last_step="x0"
    )
    assert_gaussian_stats(res.x)


def test_euler_maruyama_without_diffusion_is_euler():
    sched = get_schedule("flow-cosine")
    x1 = noise(32)
    fn = gaussian_fn(sched, "v")
    for last in ("x0", "euler"):
        a = euler_maruyama(
            fn, x1, sched, "v", steps=20, diffusion="none", last_step=last, return_trajectory=True
        )
        b = euler(fn, x1, sched, "v", steps=20, last_step=last, return_trajectory=True)
        for xa, xb in zip(a.trajectory, b.trajectory):
            torch.testing.assert_close(xa, xb, rtol=1e-12, atol=1e-12)


# --- DDIM --------------------------------------------------------------------------------------------
def _diffusers_gaussian(sched, target):
    """The analytic model in diffusers' calling convention (integer index, float32)."""
    fn = gaussian_fn(sched, target)

    def model(x, i):
        t = torch.full((x.shape[0],), (int(i) + 1) / 1000, dtype=F64)
        return fn(x.to(F64), t).to(torch.float32)

    return model


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    sched = get_schedule("ddpm-linear")
    ref = DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    )  # fmt: skip
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == space_timesteps(1000, "ddim50")[::-1]
    x1 = noise(64, seed=5).to(torch.float32)
    model = _diffusers_gaussian(sched, "eps")
    g_ref = torch.Generator().manual_seed(11)
    x = x1.clone()
    for i in ref.timesteps:
        x = ref.step(model(x, i), i, x, eta=eta, generator=g_ref).prev_sample
    g = torch.Generator().manual_seed(11)
    res = ddim(
        gaussian_fn(sched, "eps"), x1, sched, "eps", steps=50, respacing="ddim50", eta=eta, generator=g
    )
    torch.testing.assert_close(res.x, x, rtol=2e-4, atol=2e-4)


def test_ddim_eta1_is_ddpm_with_posterior_variance():
    sched = get_schedule("ddpm-linear")
    x1 = noise(64)
    fn = gaussian_fn(sched, "eps")
    a = ddim(fn, x1, sched, "eps", steps=40, eta=1.0, generator=torch.Generator().manual_seed(2))
    b = ddpm(
        fn, x1, sched, "eps", steps=40, variance="fixed-small", generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


def test_ddim_recovers_the_data_distribution():
    sched = get_schedule("ddpm-linear")
    x1 = noise(4000)
    res = ddim(gaussian_fn(sched, "eps"), x1, sched, "eps", steps=250)
    assert (res.x - exact_endpoint(sched, x1, 1.0)).abs().max() < 4e-2
    assert_gaussian_stats(res.x)


# --- DDPM --------------------------------------------------------------------------------------------
def test_respacing_matches_official_and_diffusers():
    # diffusers' "linspace" spacing rounds np.linspace(0, 999, N): the official single-section rule
    for n in (10, 25, 50, 100, 250, 1000):
        assert space_timesteps(1000, n) == np.linspace(0, 999, n).round().astype(int).tolist()
        assert space_timesteps(1000, str(n)) == space_timesteps(1000, n)
    # the official docstring's example: 300 steps in 3 sections strided to 10, 15, 20. The official
    # code accumulates the fractional stride, so a position like 7·(99/14) lands at 49.4999… and
    # rounds down, where np.linspace would give exactly 49.5 -> 50; reproduce it with a float64 cumsum
    idx = space_timesteps(300, [10, 15, 20])
    ref = []
    for k, count in enumerate((10, 15, 20)):
        pos = np.cumsum([0.0] + [99 / (count - 1)] * (count - 1))
        ref += [100 * k + round(p) for p in pos]  # Python's round: half to even, as official
    assert idx == ref and len(idx) == 45
    assert 149 in idx and 150 not in idx  # the accumulated rounding, not linspace's
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    with pytest.raises(ConfigError, match="respacing"):
        space_timesteps(1000, "ddim600")  # strides 1, 2 give 1000, 500 steps


def test_respaced_betas_match_float64_reference():
    sched = get_schedule("ddpm-linear")
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    idx, abar_kept, betas = respaced_chain(sched, 250)
    prev = np.concatenate([[1.0], abar[idx][:-1]])
    np.testing.assert_allclose(betas.numpy(), 1.0 - abar[idx] / prev, rtol=1e-12)
    np.testing.assert_allclose(abar_kept.numpy(), abar[idx], rtol=1e-12)
    assert betas[0] == pytest.approx(1e-4)


def test_learned_range_log_variance_formula():
    small, large = math.log(0.3), math.log(0.7)
    v = torch.tensor([-1.0, 0.0, 1.0, 0.5], dtype=F64)
    out = learned_range_log_variance(v, small, large)
    frac = (v.numpy() + 1) / 2
    np.testing.assert_allclose(out.numpy(), frac * large + (1 - frac) * small, rtol=1e-14)


def _learned_fn(sched, extra):
    fn = gaussian_fn(sched, "eps")

    def model(x, t):
        return torch.cat([fn(x, t), extra(x, t)], dim=1)

    return model


@pytest.mark.parametrize("variance", ["learned-range", "fixed-large", "fixed-small"])
def test_ddpm_matches_diffusers_ddpm_scheduler(variance):
    from diffusers import DDPMScheduler

    sched = get_schedule("ddpm-linear")
    idx = space_timesteps(1000, 25)[::-1]
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=False, variance_type=variance.replace("-", "_"),
    )  # fmt: skip
    ref.set_timesteps(timesteps=idx)
    if variance == "learned-range":  # a non-trivial variance output in [-1, 1]
        model_fn = _learned_fn(sched, lambda x, t: torch.tanh(x - 1.0))
    else:
        model_fn = gaussian_fn(sched, "eps")
    x1 = noise(64, seed=7).to(torch.float32)
    g_ref = torch.Generator().manual_seed(3)
    x = x1.clone()
    for i in ref.timesteps:
        t = torch.full((x.shape[0],), (int(i) + 1) / 1000, dtype=F64)
        out = model_fn(x.to(F64), t).to(torch.float32)
        x = ref.step(out, i, x, generator=g_ref).prev_sample
    res = ddpm(
        model_fn, x1, sched, "eps", steps=25, variance=variance, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(res.x, x, rtol=5e-4, atol=5e-4)


def test_ddpm_learned_range_with_the_exact_variance_samples_exactly():
    """With v chosen so that Σ equals the true reverse variance β̃ + c²·Var[x|x_t], every step is exact.

    Computed independently in float64 from the official definitions: respaced β' = 1 − ᾱ_t/ᾱ_prev,
    β̃ = β'(1 − ᾱ_prev)/(1 − ᾱ_t), posterior-mean coefficient of x₀ c = √ᾱ_prev·β'/(1 − ᾱ_t).
    """
    sched = get_schedule("ddpm-linear")
    abar_all = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    idx = np.linspace(0, 999, 10).round().astype(int)
    v_at = {}
    for k, i in enumerate(idx):
        ab, ab_prev = abar_all[i], (abar_all[idx[k - 1]] if k > 0 else 1.0)
        beta = 1.0 - ab / ab_prev
        post = beta * (1.0 - ab_prev) / (1.0 - ab)
        c = math.sqrt(ab_prev) * beta / (1.0 - ab)
        var_x0 = (S.numpy() ** 2) * (1.0 - ab) / (ab * S.numpy() ** 2 + 1.0 - ab)
        want = post + c * c * var_x0
        if k > 0:
            v_at[i] = 2.0 * (np.log(want) - np.log(post)) / (np.log(beta) - np.log(post)) - 1.0
            assert np.all(np.abs(v_at[i]) <= 1.0)
        else:
            v_at[i] = np.zeros(2)

    def extra(x, t):
        i = round(float(t[0]) * 1000) - 1
        return torch.tensor(v_at[i], dtype=F64).expand_as(x)

    # start from the exact marginal at index 999 (its α is 0.0064, not 0)
    a_t, s_t = math.sqrt(abar_all[999]), math.sqrt(1 - abar_all[999])
    z = noise(20000, seed=8)
    x_start = a_t * MU + torch.sqrt(a_t**2 * S**2 + s_t**2) * z
    g = torch.Generator().manual_seed(9)
    res = ddpm(
        _learned_fn(sched, extra), x_start, sched, "eps", steps=10, variance="learned-range", generator=g
    )
    assert_gaussian_stats(res.x, var_rtol=0.04)


def test_ddpm_many_steps_recovers_the_data_distribution():
    sched = get_schedule("ddpm-linear")
    x1 = noise(20000, seed=10)
    res = ddpm(
        gaussian_fn(sched, "eps"), x1, sched, "eps", steps=250, generator=torch.Generator().manual_seed(1)
    )
    assert_gaussian_stats(res.x, var_rtol=0.06)


def test_ddpm_runs_on_a_continuous_path():
    sched = get_schedule("flow-linear")
    x1 = noise(20000, seed=12)
    res = ddpm(
        gaussian_fn(sched, "velocity"), x1, sched, "velocity", steps=200, variance="fixed-large",
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert_gaussian_stats(res.x, var_rtol=0.06)


# --- classifier-free guidance and the sample() entry point -------------------------------------------
class FakeDiT(nn.Module):
    """A tiny class-conditional 'network' with the DiT calling convention that records its calls."""

    def __init__(self, channels=2, num_classes=3, learn_sigma=False):
        super().__init__()
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(num_classes + 1, channels, generator=g))
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y):
        self.calls.append((x.shape[0], t.detach().clone(), y.detach().clone()))
        out = 0.3 * x + self.emb[y][:, :, None, None] + 1e-3 * t[:, None, None, None]
        if self.learn_sigma:
            out = torch.cat([out, torch.tanh(x + self.emb[y][:, :, None, None])], dim=1)
        return out


def test_cfg_scale_one_is_exactly_the_conditional_prediction():
    model = FakeDiT(learn_sigma=True)
    recipe = get_preset("sit")
    x = torch.randn(5, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    t = torch.full((5,), 0.7, dtype=F64)
    guided = guided_model_fn(model, recipe, y, cfg_scale=1.0)(x, t)
    assert torch.equal(guided, model(x, recipe.model_time(t), y))
    assert model.calls[0][0] == 5  # no batch doubling at scale 1


def test_cfg_formula_variance_channels_and_interval():
    model = FakeDiT(learn_sigma=True)
    recipe = get_preset("sit")
    x = torch.randn(4, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 1])
    fn = guided_model_fn(model, recipe, y, cfg_scale=4.0, guidance_interval=(0.2, 0.8))
    t_in = torch.full((4,), 0.5, dtype=F64)
    out = fn(x, t_in)
    assert model.calls[-1][0] == 8 and torch.equal(model.calls[-1][2][4:], torch.full((4,), 3))
    tm = recipe.model_time(t_in)
    cond, uncond = model(x, tm, y), model(x, tm, torch.full((4,), 3))
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 4.0 * (cond[:, :2] - uncond[:, :2]))
    assert torch.equal(out[:, 2:], cond[:, 2:])  # variance channels: conditional, not guided
    # outside the interval: the conditional prediction, one undoubled batch
    t_out = torch.full((4,), 0.9, dtype=F64)
    out = fn(x, t_out)
    assert model.calls[-1][0] == 4
    assert torch.equal(out, model(x, recipe.model_time(t_out), y))
    # guide_channels=1 guides only the first channel (official DiT uses 3 of its 4)
    out = guided_model_fn(model, recipe, y, cfg_scale=4.0, guide_channels=1)(x, t_in)
    assert torch.equal(out[:, 1:], cond[:, 1:])


def test_sample_with_cfg_counts_pairs_once_and_inverts_scaling():
    model = FakeDiT()
    recipe = get_preset("fasterdit")
    data = torch.randn(64, 2, 4, 4) * torch.tensor([2.0, 0.5])[None, :, None, None] + 3.0
    recipe = recipe.resolve(data)
    x1 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    res = sample(model, recipe, x1, y=y, sampler="heun", steps=6, cfg_scale=2.0, return_trajectory=True)
    assert res.nfe == 12 and len(model.calls) == 12  # Heun: 2N, each guided pair one call
    assert all(n == 6 for n, _, _ in model.calls)  # every call a doubled CFG batch
    torch.testing.assert_close(res.x, recipe.scaling.inverse(res.trajectory[-1]))
    # the same run through the bare sampler with the guided model function
    fn = guided_model_fn(model, recipe, y, cfg_scale=2.0)
    direct = heun(fn, x1, recipe.schedule_obj, recipe.target, steps=6)
    torch.testing.assert_close(res.x, recipe.scaling.inverse(direct.x))
    # guidance interval: only the grid times inside it are doubled
    model.calls.clear()
    res = sample(
        model, recipe, x1, y=y, sampler="euler", steps=10, cfg_scale=2.0, guidance_interval=(0.0, 0.5)
    )
    assert res.nfe == 10 and [n for n, _, _ in model.calls] == [3] * 5 + [6] * 5


def test_dit_preset_feeds_original_chain_indices_and_learned_variance():
    model = FakeDiT(learn_sigma=True)
    recipe = get_preset("dit")
    model.train()
    x1 = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    res = sample(
        model, recipe, x1, y=torch.tensor([0, 1]), steps=50, generator=torch.Generator().manual_seed(0)
    )
    assert model.training  # restored after sampling in eval mode
    assert res.nfe == 50 and recipe.sampler.name == "ddpm"
    fed = [float(t[0]) for _, t, _ in model.calls]
    assert fed == [float(i) for i in space_timesteps(1000, 50)[::-1]]  # exact original indices
    assert fed[0] == 999.0 and fed[-1] == 0.0
    assert res.x.shape == x1.shape and torch.isfinite(res.x).all()


def test_every_registered_sampler_runs_through_sample():
    model = FakeDiT()
    recipe = get_preset("sit")
    x1 = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in SAMPLERS:
        res = sample(model, recipe, x1, y=torch.tensor([0, 2]), sampler=name, steps=4,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert res.x.shape == x1.shape and torch.isfinite(res.x).all() and res.nfe >= 4, name


def test_bad_input_raises_config_errors_naming_the_field():
    model = FakeDiT()
    recipe = get_preset("sit")
    x1 = torch.randn(2, 2, 4, 4)
    with pytest.raises(ConfigError, match="sampler"):
        sample(model, recipe, x1, sampler="rk4")
    with pytest.raises(ConfigError, match=r"sampler\.eta"):
        sample(model, recipe, x1, sampler="euler", eta=0.5)
    with pytest.raises(ConfigError, match="cfg_scale"):
        sample(model, recipe, x1, cfg_scale=2.0)  # no labels
    with pytest.raises(ConfigError, match="guidance_interval"):
        sample(model, recipe, x1, y=torch.tensor([0, 1]), cfg_scale=2.0, guidance_interval=(0.8, 0.2))
    with pytest.raises(ConfigError, match="steps"):
        sample(model, recipe, x1, steps=-3)
    with pytest.raises(ConfigError, match="shift"):
        sample(model, get_preset("dit"), x1, steps=10, shift=3.0)
    with pytest.raises(ConfigError, match="diffusion"):
        sample(model, recipe, x1, sampler="euler-maruyama", diffusion="wiggly")
    with pytest.raises(ConfigError, match="variance"):
        sample(model, get_preset("dit"), x1, steps=10, variance="learned-range")  # model has C channels


def test_guidance_matches_the_dit_models_own_cfg_forward():
    """Against DiT.forward_with_cfg (the official calling convention), all channels and the official 3."""
    from fasterdit.models import DiT

    model = DiT(
        input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10
    )
    for p in model.parameters():  # the zero-initialised output layers would make every output 0
        nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    model.double().eval()  # float64: the two paths may batch their matmuls differently
    recipe = get_preset("dit")
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([1, 2, 3])
    t = torch.full((3,), 0.5, dtype=F64)
    tm = recipe.model_time(torch.cat([t, t]))
    with torch.no_grad():
        for channels in (None, 3):
            mine = guided_model_fn(model, recipe, y, cfg_scale=4.0, guide_channels=channels)(x, t)
            ref = model.forward_with_cfg(
                torch.cat([x, x]), tm, torch.cat([y, torch.full_like(y, 10)]), 4.0, channels
            )
            torch.testing.assert_close(mine, ref[:3], rtol=1e-12, atol=1e-12)


# --- against the references' integrators -------------------------------------------------------------
@pytest.mark.parametrize("sched_name", ["flow-linear", "flow-cosine"])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_heun_is_torchdiffeqs_fixed_grid_heun2(sched_name, steps):
    """SiT's Heun sampler is torchdiffeq's ``heun2`` on a fixed grid: the same method to round-off."""
    from torchdiffeq import odeint

    sched = get_schedule(sched_name)
    x1 = noise(16, seed=3)
    fn = gaussian_fn(sched, "velocity")
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    calls = []
    ref = odeint(lambda t, x: fn(x, t.expand(x.shape[0])), x1, grid, method="heun2")[-1]
    res = heun(gaussian_fn(sched, "velocity", calls), x1, sched, "velocity", steps=steps)
    torch.testing.assert_close(res.x, ref, rtol=1e-10, atol=1e-10)
    assert res.nfe == len(calls) == 2 * steps and min(calls) == 0.0


@pytest.mark.parametrize("sched_name", ["flow-linear", "flow-cosine"])
def test_euler_is_sits_euler_ode(sched_name):
    """SiT's ODE sampler with ``euler`` in SiT's own time s = 1 − t (s = 0 noise, s = 1 data), float64:
    ``x ← x + Δs·v_SiT(x, s)`` on ``linspace(0, 1, N + 1)`` with ``v_SiT = dx/ds = −dx/dt``. GVP
    (flow-cosine) is the path where a final jump to x̂₀ would differ from it."""
    sched = get_schedule(sched_name)
    x1 = noise(16, seed=4)
    fn = gaussian_fn(sched, "velocity")
    n = 10
    s_grid = np.linspace(0.0, 1.0, n + 1)
    x = x1.clone()
    for k in range(n):
        s_k = float(s_grid[k])
        v_sit = -fn(x, torch.full((16,), 1.0 - s_k, dtype=F64))
        x = x + (float(s_grid[k + 1]) - s_k) * v_sit
    res = euler(fn, x1, sched, "velocity", steps=n)
    torch.testing.assert_close(res.x, x, rtol=1e-12, atol=1e-12)
    jump = euler(fn, x1, sched, "velocity", steps=n, last_step="x0")
    if sched_name == "flow-cosine":
        assert float((jump.x - x).abs().max()) > 1e-3  # the jump is another method there
    else:
        torch.testing.assert_close(jump.x, x, rtol=1e-12, atol=1e-12)  # flow-linear: the same step


def test_sampler_options_match_the_signatures():
    """sample() checks options against SAMPLER_OPTIONS; the declaration must be the signature."""
    import inspect

    from fasterdit.diffusion.sampler_options import SAMPLER_OPTIONS

    assert set(SAMPLER_OPTIONS) == set(SAMPLERS)
    fixed = ("model_fn", "noise", "schedule", "target", "steps", "shift", "return_trajectory")
    for name, fn in SAMPLERS.items():
        params = tuple(p for p in inspect.signature(fn).parameters if p not in fixed)
        assert SAMPLER_OPTIONS[name] == params, name
