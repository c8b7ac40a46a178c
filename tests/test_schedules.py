"""Schedules against independent references: diffusers' DDPMScheduler, closed forms, finite differences."""

import math

import numpy as np
import pytest
import torch

from fasterdit.diffusion.schedules import SCHEDULES, ddpm_posterior, get_schedule
from fasterdit.errors import ConfigError

F64 = torch.float64
INTERIOR = torch.linspace(0.003, 0.997, 397, dtype=F64)


def grid_t(n=1000):
    return (torch.arange(n, dtype=F64) + 1) / n


def test_ddpm_linear_matches_diffusers_alphas_cumprod():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    s = get_schedule("ddpm-linear")
    assert s.is_discrete and s.num_steps == 1000
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    # the continuous function of t agrees with the discrete chain at t = (i+1)/1000
    assert torch.allclose(s.alpha(grid_t()) ** 2, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    # and with an independent float64 product (numpy) far more tightly
    abar_np = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    np.testing.assert_allclose(s.alpha(grid_t()).numpy() ** 2, abar_np, rtol=1e-11, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar_np, rtol=1e-13, atol=0)


def test_ddpm_linear_add_noise_matches_diffusers():
    """ᾱ as implied by diffusers' add_noise coefficients matches ours to 1e-6 at every step.

    diffusers keeps ᾱ in float32, so its √(1−ᾱ) at the first steps (1−ᾱ ≈ 1e-4) carries a rounding
    error of ~1e-6 (relative 1e-4); whole add_noise outputs therefore agree to that float32 limit only,
    while our float64 values agree with an independent float64 product to 1e-11 (test above)."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    s = get_schedule("ddpm-linear")
    idx = torch.arange(1000)
    t = s.index_to_t(idx)
    ones, zeros = torch.ones(1000, 1, dtype=F64), torch.zeros(1000, 1, dtype=F64)
    sqrt_abar = ref.add_noise(ones, zeros, idx)[:, 0]
    sqrt_1m_abar = ref.add_noise(zeros, ones, idx)[:, 0]
    assert torch.allclose(sqrt_abar**2, s.alpha(t) ** 2, atol=1e-6, rtol=0)
    assert torch.allclose(1 - sqrt_1m_abar**2, s.alpha(t) ** 2, atol=1e-6, rtol=0)
    assert torch.allclose(sqrt_abar, s.alpha(t), atol=1e-6, rtol=0)

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 3, 4, 4, generator=g)
    eps = torch.randn(16, 3, 4, 4, generator=g)
    idx = torch.tensor([0, 1, 2, 10, 99, 100, 250, 499, 500, 640, 777, 900, 990, 997, 998, 999])
    want = ref.add_noise(x0, eps, idx)
    tf = s.index_to_t(idx).float()
    got = s.alpha(tf)[:, None, None, None] * x0 + s.sigma(tf)[:, None, None, None] * eps
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=5e-6, rtol=0)
    assert torch.equal(s.t_to_index(tf), idx)


def test_ddpm_cosine_matches_diffusers_and_closed_form():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    s = get_schedule("ddpm-cosine")
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    # continuous ᾱ(t) = f(t)/f(0), f = cos²((t+s)/(1+s)·π/2): equals the chain except the clipped last step
    tt = grid_t().numpy()
    f = np.cos((tt + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(s.alpha(grid_t()).numpy() ** 2, f, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.alphas_cumprod[:-1].numpy(), f[:-1], rtol=1e-10, atol=1e-15)
    assert s.alpha(torch.tensor(1.0, dtype=F64)) == 0.0


def test_flow_paths_closed_forms():
    t = torch.linspace(0, 1, 101, dtype=F64)
    lin = get_schedule("flow-linear")
    assert torch.allclose(lin.alpha(t), 1 - t, atol=0, rtol=0)
    assert torch.allclose(lin.sigma(t), t, atol=0, rtol=0)
    assert torch.all(lin.d_alpha(t) == -1) and torch.all(lin.d_sigma(t) == 1)
    cos = get_schedule("flow-cosine")
    assert torch.allclose(cos.alpha(t), torch.cos(math.pi * t / 2), atol=1e-15)
    assert torch.allclose(cos.sigma(t), torch.sin(math.pi * t / 2), atol=1e-15)
    assert cos.alpha(torch.tensor(1.0, dtype=F64)) == 0.0
    assert torch.allclose(lin.log_snr(t[1:-1]), 2 * torch.log((1 - t[1:-1]) / t[1:-1]), atol=1e-12)


def test_edm_matches_karras_noise_levels():
    s = get_schedule("edm")
    n = 18
    i = np.arange(n)
    # EDM's sampler grid σ_i, i = 0 (σ_max) .. n−1 (σ_min); our t runs the other way
    sig = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    t = torch.tensor(1 - i / (n - 1), dtype=F64)
    np.testing.assert_allclose(s.sigma_edm(t).numpy(), sig, rtol=1e-12)
    np.testing.assert_allclose(s.alpha(t).numpy(), 1 / np.sqrt(1 + sig**2), rtol=1e-12)
    np.testing.assert_allclose(s.sigma(t).numpy(), sig / np.sqrt(1 + sig**2), rtol=1e-12)
    np.testing.assert_allclose(s.log_snr(t).numpy(), -2 * np.log(sig), rtol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_derivatives_match_finite_differences(name):
    s = get_schedule(name)
    h = 1e-6
    t = INTERIOR
    for f, df, tol in (
        (s.alpha, s.d_alpha, 1e-6),
        (s.sigma, s.d_sigma, 1e-6),
        (s.log_snr, s.d_log_snr, 1e-5),
    ):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        err = ((df(t) - fd).abs() / fd.abs().clamp_min(1.0)).max()
        assert err < tol, (name, f.__name__, float(err))


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_inverse(name):
    s = get_schedule(name)
    t = torch.linspace(0.001, 0.999, 999, dtype=F64)
    assert torch.allclose(s.t_from_log_snr(s.log_snr(t)), t, atol=1e-10, rtol=0)
    lam = torch.linspace(max(s.lambda_min, -20) + 1e-6, min(s.lambda_max, 20) - 1e-6, 301, dtype=F64)
    assert torch.allclose(s.log_snr(s.t_from_log_snr(lam)), lam, atol=1e-8, rtol=0)
    # λ decreases with t
    assert torch.all(torch.diff(s.log_snr(t)) < 0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints_are_safe(name):
    s = get_schedule(name)
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    for f in (s.alpha, s.sigma, s.log_snr):
        assert not torch.isnan(f(ends)).any(), (name, f.__name__)
    inf = torch.tensor([math.inf, -math.inf], dtype=F64)
    assert torch.equal(s.t_from_log_snr(inf), torch.tensor([0.0, 1.0], dtype=F64))
    # λ outside the schedule's range clamps to the endpoints
    assert torch.equal(
        s.t_from_log_snr(torch.tensor([1e4, -1e4], dtype=F64)), torch.tensor([0.0, 1.0], dtype=F64)
    )
    if name != "edm":  # EDM's t = 0 is σ_min (nearly clean) by construction
        assert s.lambda_max == math.inf and float(s.sigma(0.0)) == 0.0 and float(s.alpha(0.0)) == 1.0
    assert torch.equal(s.clamp_t(ends, 1e-5), torch.tensor([1e-5, 1 - 1e-5], dtype=F64))


def test_dtype_and_shape_follow_input():
    s = get_schedule("ddpm-linear")
    t = torch.rand(3, 2)
    assert s.alpha(t).dtype == torch.float32 and s.alpha(t).shape == (3, 2)
    assert s.sigma(0.5).dtype == torch.get_default_dtype()


def test_posterior_tables_match_adm_formulas():
    s = get_schedule("ddpm-linear")
    post = ddpm_posterior(s)
    b = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - b)
    prev = np.append(1.0, abar[:-1])
    var = b * (1 - prev) / (1 - abar)
    np.testing.assert_allclose(post["posterior_variance"].numpy(), var, rtol=1e-12)
    np.testing.assert_allclose(
        post["posterior_log_variance_clipped"].numpy(), np.log(np.append(var[1], var[1:])), rtol=1e-12
    )
    np.testing.assert_allclose(
        post["posterior_mean_coef1"].numpy(), b * np.sqrt(prev) / (1 - abar), rtol=1e-12
    )
    np.testing.assert_allclose(
        post["posterior_mean_coef2"].numpy(), (1 - prev) * np.sqrt(1 - b) / (1 - abar), rtol=1e-12
    )


def test_posterior_tables_reach_a_device_once_per_dtype():
    """The loss reads the tables every micro-step: they are cast and copied once per (device, dtype) and
    kept, never sent again (a copy from host memory would block the host on CUDA; issue 30)."""
    s = get_schedule("ddpm-linear")
    host = ddpm_posterior(s)
    f32 = ddpm_posterior(s, torch.device("cpu"), torch.float32)
    assert ddpm_posterior(s, "cpu", torch.float32) is f32 and ddpm_posterior(s, "cpu") is host
    assert f32.keys() == host.keys()
    for k, v in f32.items():  # the float64 tables, rounded once to float32
        assert v.dtype == torch.float32 and torch.equal(v, host[k].float()), k
    meta = ddpm_posterior(s, "meta", torch.float32)  # another device: a copy of its own, made once
    assert ddpm_posterior(s, torch.device("meta"), torch.float32) is meta
    assert {v.device.type for v in meta.values()} == {"meta"} and host["betas"].device.type == "cpu"


def _newton_until_converged(s, lam: torch.Tensor) -> tuple[torch.Tensor, int]:
    """DDPMLinear's inverse as it was before issue 30: Newton from the same start, stopped by the host once
    every step is below the tolerance (up to 50 steps); also the number of steps it took."""
    target = -torch.nn.functional.softplus(-lam)
    n_max, b0 = float(s.num_steps), s.params["beta_start"]
    n = ((torch.sqrt(b0 * b0 - 2.0 * s._delta * target) - b0) / s._delta).clamp(0.0, n_max)
    n = torch.where(torch.isfinite(n), n, torch.full_like(n, n_max))
    taken = 0
    while taken < 50:
        g = s._log_abar_n(n) - target
        step = torch.where(torch.isfinite(target), g / (s._log_delta + torch.digamma(s._A + 1.0 - n)), 0.0)
        n, taken = (n - step).clamp(0.0, n_max), taken + 1
        if bool((step.abs() <= 1e-10 * n_max).all()):
            break
    return torch.where(target == 0, torch.zeros_like(n), n) / s.num_steps, taken


def test_ddpm_linear_inverse_takes_fixed_steps_without_asking_the_host(monkeypatch):
    """The edm-lognormal law draws through this inverse every step: it runs NEWTON_STEPS steps with the
    convergence test on the device, and equals Newton stopped at convergence, bit for bit."""
    s = get_schedule("ddpm-linear")
    lam = torch.cat(
        [
            torch.linspace(s.lambda_min, 40.0, 20001, dtype=F64),
            torch.logspace(-12, 3, 300, dtype=F64).clamp(max=1e3),
            -torch.logspace(-12, 1, 300, dtype=F64),
            torch.tensor([math.inf], dtype=F64),
        ]
    )
    ref, taken = _newton_until_converged(s, lam)
    # per chunk, like the trainer's batches: the slowest value of each sets the steps
    worst = max(_newton_until_converged(s, chunk)[1] for chunk in lam.split(256))
    assert max(taken, worst) <= s.NEWTON_STEPS // 2, "the fixed count leaves a margin of 2x"
    reads = []
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(t) or bool(t.item()))
    got = s._t_from_log_snr(lam)
    chunks = torch.cat([s._t_from_log_snr(chunk) for chunk in lam.split(256)])
    monkeypatch.undo()
    assert reads == [], "the inverse asked the host whether Newton had converged"
    assert torch.equal(got, ref)
    assert torch.equal(chunks, torch.cat([_newton_until_converged(s, c)[0] for c in lam.split(256)]))
    inside = lam < 30  # and it is the inverse: λ(t(λ)) = λ where λ(t) resolves t
    assert torch.allclose(s.log_snr(got[inside]), lam[inside], rtol=1e-9, atol=1e-9)


def test_bad_names_and_parameters_name_the_field():
    with pytest.raises(ConfigError, match="schedule") as e:
        get_schedule("ddpm-quadratic")
    assert "flow-linear" in str(e.value)
    with pytest.raises(ConfigError) as e:
        get_schedule("ddpm-linear", beta_end=2.0)
    assert e.value.field == "schedule.beta_end"
    with pytest.raises(ConfigError):
        get_schedule("flow-linear", foo=1)
    with pytest.raises(ConfigError):
        get_schedule("flow-linear").index_to_t(torch.tensor([0]))
