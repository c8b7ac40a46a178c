"""fasterdit.eval.adm gives the numbers of OpenAI's ADM evaluator on the same activations.

The reference below is an independent float64 NumPy re-implementation of the formulas of
guided-diffusion ``evaluations/evaluator.py`` (written here from its description, not copied):
FID with ``scipy.linalg.sqrtm`` of the covariance product, IS over consecutive chunks of 5,000
softmax rows, and its ManifoldEstimator (k-th neighbour counting the point itself, row x column
distance blocks of ``‖u‖² − 2u·v + ‖v‖²`` clamped at 0, ``<=`` against the radii). The features
are synthetic; N is large enough for two IS chunks (5,000 + 1,000).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from fasterdit.eval.adm import adm_metrics
from fasterdit.eval.frechet import FeatureStats


def _fid(a: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, sigma1 = a.mean(0), np.cov(a, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    z = logits - logits.max(1, keepdims=True)
    preds = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def _distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    nu, nv = (u * u).sum(1)[:, None], (v * v).sum(1)[None, :]
    return np.maximum(nu - 2 * u @ v.T + nv, 0.0)


def _radii(f: np.ndarray, k: int, rows: int, cols: int) -> np.ndarray:
    out = np.zeros(len(f))
    for b1 in range(0, len(f), rows):
        block = np.concatenate(
            [_distances(f[b1 : b1 + rows], f[b2 : b2 + cols]) for b2 in range(0, len(f), cols)], 1
        )
        out[b1 : b1 + rows] = np.partition(block, k, axis=1)[:, k]  # k-th neighbour, the point itself at 0
    return out


def _precision_recall(ref: np.ndarray, fake: np.ndarray, k: int = 3, rows: int = 700, cols: int = 900):
    r_ref, r_fake = _radii(ref, k, rows, cols), _radii(fake, k, rows, cols)
    ref_in = np.zeros(len(ref), bool)  # a reference point inside some sample ball -> recall
    fake_in = np.zeros(len(fake), bool)  # a sample inside some reference ball -> precision
    for b1 in range(0, len(ref), rows):
        for b2 in range(0, len(fake), cols):
            d = _distances(ref[b1 : b1 + rows], fake[b2 : b2 + cols])
            ref_in[b1 : b1 + rows] |= (d <= r_fake[None, b2 : b2 + cols]).any(1)
            fake_in[b2 : b2 + cols] |= (d <= r_ref[b1 : b1 + rows, None]).any(0)
    return float(fake_in.mean()), float(ref_in.mean())


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(0)
    n, n_ref = 6_000, 1_500
    mix = rng.standard_normal((10, 10)) * 0.3 + np.eye(10)
    ref = {"pool": rng.standard_normal((n_ref, 10)) @ mix, "spatial": rng.standard_normal((n_ref, 14))}
    fake = {
        "pool": rng.standard_normal((n, 10)) @ mix * 1.15 + 0.2,
        "spatial": rng.standard_normal((n, 14)) * 0.9 + 0.1,
        "logits": rng.standard_normal((n, 30)) * 3.0 + np.linspace(0, 2, 30),
    }
    stored_pool = FeatureStats(ref["pool"].mean(0), np.cov(ref["pool"], rowvar=False), n_ref)
    stored_spatial = FeatureStats(ref["spatial"].mean(0), np.cov(ref["spatial"], rowvar=False), n_ref)
    return fake, ref, stored_pool, stored_spatial


def test_adm_metrics_match_a_float64_reimplementation_of_the_evaluator(acts):
    fake, ref, pool, spatial = acts
    got = adm_metrics(fake, ref, pool, spatial)
    assert got["fid"] == pytest.approx(_fid(fake["pool"], pool.mu, pool.sigma), rel=1e-6)
    assert got["sfid"] == pytest.approx(_fid(fake["spatial"], spatial.mu, spatial.sigma), rel=1e-6)
    assert got["is_splits"] == 2  # 5,000 + 1,000: ADM's chunks, not 10 equal splits
    assert got["inception_score"] == pytest.approx(_inception_score(fake["logits"]), rel=1e-6)
    precision, recall = _precision_recall(ref["pool"], fake["pool"])
    assert 0.1 < precision < 0.99 and 0.1 < recall < 0.99  # a case where the balls matter
    assert got["precision"] == pytest.approx(precision, rel=1e-6)
    assert got["recall"] == pytest.approx(recall, rel=1e-6)
    assert got["pr_k"] == 3


def test_the_row_batch_changes_no_value(acts):
    fake, ref, pool, spatial = acts
    a = adm_metrics(fake, ref, pool, spatial)
    b = adm_metrics(fake, ref, pool, spatial, row_batch=333)
    assert (a["precision"], a["recall"]) == (b["precision"], b["recall"])


def test_stored_reference_statistics_are_used_as_given(acts):
    fake, ref, pool, _ = acts
    shifted = FeatureStats(
        pool.mu + 1.0, pool.sigma, pool.n
    )  # what a stored mu/sigma that is not arr_0's gives
    got = adm_metrics(fake, ref, shifted)
    assert got["fid"] == pytest.approx(_fid(fake["pool"], shifted.mu, shifted.sigma), rel=1e-6)
    assert got["sfid"] is None
