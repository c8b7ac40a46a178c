"""Fréchet distance: closed forms, an independent scipy sqrtm route, symmetry, rank deficiency, stats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from fasterdit.errors import DataError
from fasterdit.eval.frechet import (
    FeatureStats,
    fit_gaussian,
    frechet_distance,
    frechet_distance_from_features,
    load_stats,
    load_stats_keys,
    save_stats,
)


def _random_spd(rng: np.random.Generator, d: int, cond: float = 10.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def _scipy_route(mu1, s1, mu2, s2) -> float:
    """The textbook (TTUR / pytorch-fid) formula: tr sqrtm(Σ1 Σ2) with scipy's Schur square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_one_dimensional_closed_form():
    # W2² between N(m1, a²) and N(m2, b²) is (m1 - m2)² + (a - b)²
    d = frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    assert d == pytest.approx((1.5 + 0.5) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_commuting_covariances_closed_form():
    # Same eigenbasis: d² = ‖Δμ‖² + Σ (√a_i − √b_i)², also with a zero eigenvalue.
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    a[3] = 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # diagonal case
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_general_case_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (2, 7, 32):
        s1, s2 = _random_spd(rng, d, 30.0), _random_spd(rng, d, 5.0)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_scipy_route(mu1, s1, mu2, s2), rel=1e-9, abs=1e-10)


def test_identical_is_zero_and_symmetric():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(300, 16, generator=g) @ torch.randn(16, 16, generator=g)
    f2 = torch.randn(200, 16, generator=g) * 2 + 1
    assert frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)
    a, b = frechet_distance_from_features(f1, f2), frechet_distance_from_features(f2, f1)
    assert a > 1.0 and a == pytest.approx(b, rel=1e-10)


def _nuclear_norm_route(x1: np.ndarray, x2: np.ndarray) -> float:
    """Independent exact reference for low-rank features: with Σᵢ = AᵢAᵢᵀ (Aᵢ = centred Xᵢᵀ/√(nᵢ−1)),
    tr (Σ₁Σ₂)^½ is the nuclear norm of the small matrix A₁ᵀA₂ (no D×D square root at all)."""
    a1 = (x1 - x1.mean(0)).T / np.sqrt(len(x1) - 1)
    a2 = (x2 - x2.mean(0)).T / np.sqrt(len(x2) - 1)
    tr_sqrt = np.linalg.svd(a1.T @ a2, compute_uv=False).sum()
    dmu = x1.mean(0) - x2.mean(0)
    return float(dmu @ dmu + (a1 * a1).sum() + (a2 * a2).sum() - 2 * tr_sqrt)


def test_rank_deficient_covariances_are_exact_and_real():
    # 20 samples in 64 dimensions (rank 19 covariances), plus a dead (constant) feature.
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((20, 64))
    x2 = rng.standard_normal((25, 64)) * 0.5 + 0.3
    x1[:, 5] = x2[:, 5] = 1.0
    ours = frechet_distance_from_features(x1, x2)
    assert np.isfinite(ours)
    assert ours == pytest.approx(_nuclear_norm_route(x1, x2), rel=1e-9)
    # identical rank-deficient sets: exactly 0 up to round-off, never negative or complex
    same = frechet_distance_from_features(x1, x1)
    assert 0.0 <= same < 1e-9


def test_fit_gaussian_matches_numpy_cov():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    mu, sigma = fit_gaussian(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_stats_roundtrip_and_adm_keys(tmp_path):
    rng = np.random.default_rng(4)
    st = FeatureStats.from_features(rng.standard_normal((40, 5)), dataset="mnist", split="heldout")
    path = save_stats(tmp_path / "ref.npz", st, mu_s=np.zeros(3), sigma_s=np.eye(3))
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert back.n == 40 and back.meta == {"dataset": "mnist", "split": "heldout"}
    spatial = load_stats_keys(path, "mu_s", "sigma_s")
    assert spatial.mu.shape == (3,)
    # a file written by another tool with only the ADM/torch-fidelity keys
    np.savez(tmp_path / "other.npz", mu=st.mu.astype(np.float32), sigma=st.sigma.astype(np.float32))
    other = load_stats(tmp_path / "other.npz")
    assert other.frechet_distance(st) == pytest.approx(0.0, abs=1e-5)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(DataError, match="NaN"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 2.0]]))
    np.savez(tmp_path / "x.npz", foo=np.zeros(2))
    with pytest.raises(DataError, match="'mu'"):
        load_stats(tmp_path / "x.npz")
    with pytest.raises(DataError, match="not found"):
        load_stats(tmp_path / "missing.npz")
