"""Target conversions: float64 round trips, closed forms, and the analytic score of Gaussian data."""

import itertools

import pytest
import torch

from fasterdit.diffusion.schedules import SCHEDULES, get_schedule
from fasterdit.diffusion.targets import TARGETS, convert, target_from_data
from fasterdit.errors import ConfigError

F64 = torch.float64


def _batch(name, seed=0, n=12):
    s = get_schedule(name)
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=F64) * 0.98 + 0.01
    x = torch.randn(n, 3, 4, 4, generator=g, dtype=F64)
    eps = torch.randn(n, 3, 4, 4, generator=g, dtype=F64)
    a, sig = s.alpha(t)[:, None, None, None], s.sigma(t)[:, None, None, None]
    return s, t, x, eps, a * x + sig * eps


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_conversion_round_trips(name):
    s, t, x, eps, xt = _batch(name)
    for src, dst in itertools.product(TARGETS, (*TARGETS, "score")):
        p = target_from_data(src, x, eps, t, s)
        q = convert(p, src, dst, xt, t, s)
        back = convert(q, dst, src, xt, t, s)
        assert (back - p).abs().max() < 1e-10, (name, src, dst)
        if dst != "score":  # the conversion lands on the true target of the same (x, ε)
            assert (q - target_from_data(dst, x, eps, t, s)).abs().max() < 1e-10, (name, src, dst)


def test_closed_forms():
    s, t, x, eps, _ = _batch("flow-linear")
    assert torch.allclose(target_from_data("velocity", x, eps, t, s), eps - x, atol=1e-15)
    s, t, x, eps, _ = _batch("flow-cosine")
    a, sig = s.alpha(t)[:, None, None, None], s.sigma(t)[:, None, None, None]
    assert torch.allclose(target_from_data("v", x, eps, t, s), a * eps - sig * x, atol=1e-15)
    assert torch.equal(target_from_data("eps", x, eps, t, s), eps)
    assert torch.equal(target_from_data("x0", x, eps, t, s), x)


@pytest.mark.parametrize("name", SCHEDULES)
def test_velocity_is_the_time_derivative_of_the_path(name):
    s = get_schedule(name)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(8, generator=g, dtype=F64) * 0.9 + 0.05
    x = torch.randn(8, 2, generator=g, dtype=F64)
    eps = torch.randn(8, 2, generator=g, dtype=F64)

    def path(tt):
        return s.alpha(tt)[:, None] * x + s.sigma(tt)[:, None] * eps

    h = 1e-6
    fd = (path(t + h) - path(t - h)) / (2 * h)
    u = target_from_data("velocity", x, eps, t, s)
    assert ((u - fd).abs() / fd.abs().clamp_min(1)).max() < 1e-6


@pytest.mark.parametrize("name", SCHEDULES)
def test_score_of_gaussian_data(name):
    """For x ~ N(μ, s²): x_t ~ N(αμ, α²s² + σ²), the optimal ε̂ = σ(x_t − αμ)/(α²s²+σ²) and the score
    is −(x_t − αμ)/(α²s²+σ²). Converting the exact ε̂ must give that score."""
    sched = get_schedule(name)
    mu, sd = 0.7, 0.4
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    xt = torch.linspace(-2, 2, 19, dtype=F64)[:, None]
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    var = a**2 * sd**2 + s**2
    eps_hat = s * (xt - a * mu) / var
    score = convert(eps_hat, "eps", "score", xt, t, sched)
    assert torch.allclose(score, -(xt - a * mu) / var, atol=1e-12)


def test_scalar_time_broadcasts():
    s = get_schedule("flow-linear")
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    eps = torch.randn_like(x)
    u = target_from_data("velocity", x, eps, 0.3, s)
    assert torch.allclose(u, eps - x)


def test_unknown_target_names_the_field():
    s = get_schedule("flow-linear")
    x = torch.zeros(2, 1)
    with pytest.raises(ConfigError) as e:
        target_from_data("noise", x, x, 0.5, s)
    assert e.value.field == "target" and "velocity" in str(e.value)
    with pytest.raises(ConfigError) as e:
        convert(x, "eps", "flow", x, 0.5, s)
    assert e.value.field == "dst"
