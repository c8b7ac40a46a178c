"""Timestep samplers: densities integrate to 1 and match 10⁶ seeded draws (KS against the integrated pdf)."""

import math

import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as st
import torch

from fasterdit.diffusion.timesteps import get_timestep_sampler, shift_time, unshift_time
from fasterdit.errors import ConfigError

F64 = torch.float64
N_DRAWS = 10**6

CASES = [
    ("uniform", {}),
    ("uniform", {"t_min": 0.1, "t_max": 0.9}),
    ("lognorm", {"m": 0.0, "s": 1.0}),
    ("lognorm", {"m": -0.5, "s": 0.7}),
    ("mode", {"scale": 1.29}),
    ("cosmap", {}),
    ("edm-lognormal", {"schedule": "flow-cosine"}),
    ("edm-lognormal", {"schedule": "ddpm-linear"}),
    ("edm-lognormal", {"schedule": "edm"}),
    ("lognorm", {"shift": 3.0}),
    ("uniform", {"shift": 0.5}),
]


def _pdf_np(sampler):
    return lambda t: sampler.pdf(torch.as_tensor(t, dtype=F64)).numpy()


def _cdf_by_integration(sampler):
    """The CDF obtained by integrating the pdf numerically (independent of the sampler's own cdf)."""
    z = np.linspace(-40, 40, 100_001)
    t = 1 / (1 + np.exp(-z))  # dense near both ends, where the densities vary fastest
    t = np.concatenate([[0.0], t, [1.0]])
    p = _pdf_np(sampler)(t)
    c = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(t))])
    return lambda x: np.interp(x, t, c)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_density_integrates_to_one_and_matches_draws(name, kw):
    s = get_timestep_sampler(name, **kw)
    pdf = _pdf_np(s)
    total, _ = si.quad(lambda t: float(pdf(t)), 0, 1, limit=400, points=[0.01, 0.1, 0.5, 0.9, 0.99])
    assert abs(total - 1) < 1e-6
    # the sampler's closed-form cdf is the integral of its pdf
    for a in (0.02, 0.3, 0.5, 0.77, 0.98):
        assert (
            abs(
                float(s.cdf(torch.tensor(a, dtype=F64)))
                - si.quad(lambda t: float(pdf(t)), 0, a, limit=400)[0]
            )
            < 1e-7
        )
    g = torch.Generator().manual_seed(1234)
    draws = s.sample(N_DRAWS, generator=g, dtype=F64).numpy()
    assert draws.min() >= 0 and draws.max() <= 1
    res = st.kstest(draws, _cdf_by_integration(s))
    assert res.pvalue > 1e-3, res


def test_uniform_discrete_draws_the_grid_uniformly():
    s = get_timestep_sampler("uniform-discrete", num_steps=1000)
    t = s.sample(N_DRAWS, generator=torch.Generator().manual_seed(0), dtype=F64)
    i = torch.round(t * 1000) - 1
    assert torch.allclose(t, (i + 1) / 1000, atol=1e-12) and i.min() == 0 and i.max() == 999
    counts = torch.bincount(i.long(), minlength=1000).numpy()
    assert st.chisquare(counts).pvalue > 1e-3
    # its pdf is the continuous relaxation U(0, 1]
    assert si.quad(lambda x: float(s.pdf(torch.tensor(x, dtype=F64))), 0, 1)[0] == pytest.approx(1.0)


def test_edm_lognormal_on_rectified_flow_is_lognorm():
    """ln σ_e = logit(t) on flow-linear, so EDM's law is exactly lognorm(P_mean, P_std)."""
    a = get_timestep_sampler("edm-lognormal", schedule="flow-linear", p_mean=-1.2, p_std=1.2)
    b = get_timestep_sampler("lognorm", m=-1.2, s=1.2)
    t = torch.linspace(0.001, 0.999, 999, dtype=F64)
    assert torch.allclose(a.pdf(t), b.pdf(t), rtol=1e-9, atol=1e-12)
    # and the lognorm density is the change of variables of scipy's normal
    z = np.log(t.numpy() / (1 - t.numpy()))
    ref = st.norm.pdf(z, loc=-1.2, scale=1.2) / (t.numpy() * (1 - t.numpy()))
    np.testing.assert_allclose(b.pdf(t).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("scale", [-0.99, -0.5, 0.0, 1.29, 1.75])
def test_mode_map_inverse(scale):
    s = get_timestep_sampler("mode", scale=scale)
    u = torch.linspace(0, 1, 10_001, dtype=F64)
    t = 1 - u - scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)  # SD3's f_mode
    assert torch.allclose(s.cdf(t), 1 - u, atol=1e-12)


def test_cosmap_matches_sd3_density():
    s = get_timestep_sampler("cosmap")
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    ref = 2 / (math.pi - 2 * math.pi * t + 2 * math.pi * t**2)
    assert torch.allclose(s.pdf(t), ref, rtol=1e-12)


def test_shift_is_a_transform_of_the_draws():
    base = get_timestep_sampler("lognorm")
    shifted = get_timestep_sampler("lognorm", shift=3.0)
    t0 = base.sample(1000, generator=torch.Generator().manual_seed(5), dtype=F64)
    t1 = shifted.sample(1000, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.allclose(t1, 3 * t0 / (1 + 2 * t0), atol=1e-12)
    assert torch.allclose(unshift_time(shift_time(t0, 3.0), 3.0), t0, atol=1e-12)
    assert shifted.to_dict() == {"name": "lognorm", "m": 0.0, "s": 1.0, "shift": 3.0}


def test_draws_are_seeded_and_moved_to_the_device():
    s = get_timestep_sampler("lognorm")
    a = s.sample(64, generator=torch.Generator().manual_seed(7), device="cpu")
    b = s.sample(64, generator=torch.Generator().manual_seed(7), device=torch.device("cpu"))
    c = s.sample(64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == (64,)


def test_bad_sampler_configs_name_the_field():
    with pytest.raises(ConfigError) as e:
        get_timestep_sampler("beta")
    assert e.value.field == "timesteps" and "lognorm" in str(e.value)
    with pytest.raises(ConfigError) as e:
        get_timestep_sampler("uniform-discrete", shift=2.0)
    assert e.value.field == "timesteps.shift"
    with pytest.raises(ConfigError) as e:
        get_timestep_sampler("mode", scale=2.0)
    assert e.value.field == "timesteps.scale"
    with pytest.raises(ConfigError) as e:
        get_timestep_sampler("lognorm", s=0)
    assert e.value.field == "timesteps.s"
    with pytest.raises(ConfigError) as e:
        get_timestep_sampler("edm-lognormal")
    assert e.value.field == "timesteps.schedule"
    with pytest.raises(ConfigError):
        get_timestep_sampler("cosmap", m=1.0)
