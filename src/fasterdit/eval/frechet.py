"""Fréchet distance between Gaussians fitted to feature sets (the "F" of FID and sFID), in float64.

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 · tr (Σ₁^½ Σ₂ Σ₁^½)^½

Why not ``scipy.linalg.sqrtm(Σ₁ Σ₂)`` as in the original TTUR/pytorch-fid code: Σ₁Σ₂ is not symmetric,
its Schur-based square root picks up imaginary parts and ``inf``/``nan`` when the covariances are
near-singular (fewer samples than dimensions, dead feature units, duplicated images), and the usual
fix — add ``eps·I`` and drop the imaginary part — changes the number. Here every step is a
*symmetric* eigendecomposition, which is well conditioned and never leaves the reals:

1. ``R = Σ₁^½`` from ``eigh(Σ₁)`` with negative round-off eigenvalues clipped to 0 (Σ₁ is PSD);
2. ``M = R Σ₂ R`` is symmetric PSD and has the same eigenvalues as Σ₁Σ₂ = R·(R Σ₂) (AB and BA
   share their eigenvalues, whether or not Σ₁ is invertible);
3. ``tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ(M)``, where eigenvalues below ``d·ε·max λ`` (round-off of the zero
   eigenvalues a rank-deficient covariance has) count as 0 — √ would amplify 10⁻¹⁶ to 10⁻⁸ each.

This is exact (up to float64 round-off) also for rank-deficient covariances, with no ε regulariser.
Equivalently, ``tr (Σ₁Σ₂)^½`` is the nuclear norm of ``Σ₁^½ Σ₂^½``; the tests check the result
against that SVD route, the closed form for commuting covariances and scipy's ``sqrtm``.

Statistics files use the ``mu`` / ``sigma`` keys of the ADM (guided-diffusion) reference batches,
torch-fidelity and clean-fid, so files written here can be read by those tools and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.errors import DataError


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _clip_roundoff(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off zeroed: |λ| ≤ d·ε·max|λ| is numerically 0.

    Why: the square root amplifies round-off, √(10⁻¹⁶) = 10⁻⁸, and a rank-deficient covariance has
    many numerically-zero eigenvalues whose noise would otherwise add up in tr (·)^½.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; round-off eigenvalues become 0."""
    sigma = _as_float64(sigma)
    sym = 0.5 * (sigma + sigma.T)
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ through the symmetric product Σ₁^½ Σ₂ Σ₁^½ (real, no ε, rank-deficiency safe)."""
    r = psd_sqrt(sigma1)
    m = r @ _as_float64(sigma2) @ r
    m = 0.5 * (m + m.T)
    w = np.linalg.eigvalsh(m)
    return float(np.sqrt(_clip_roundoff(w)).sum())


def fit_gaussian(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as numpy's ``np.cov`` in every FID tool) in float64."""
    f = _as_float64(features)
    if f.ndim != 2:
        raise DataError(f"features must be a 2-D array (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise DataError(f"need at least 2 feature vectors to fit a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise DataError("features contain NaN or inf (did sampling diverge?)")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64.

    Clipped at 0: the exact value is ≥ 0 and round-off can only make identical inputs a hair negative.
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DataError(
            f"Fréchet statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape} (were they computed with different feature networks?)"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def frechet_distance_from_features(
    features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor
) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N₁, D) and (N₂, D)."""
    return frechet_distance(*fit_gaussian(features1), *fit_gaussian(features2))


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set plus what they were computed from.

    ``meta`` records the reference set (name, split, N) and the feature network, so a statistics file
    can never silently be compared against features of another network.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor, **meta: Any) -> FeatureStats:
        mu, sigma = fit_gaussian(features)
        return cls(mu=mu, sigma=sigma, n=int(_as_float64(features).shape[0]), meta=dict(meta))

    def frechet_distance(self, other: FeatureStats) -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def save_stats(path: str | Path, stats: FeatureStats, **extra: np.ndarray) -> Path:
    """Write ``mu``/``sigma`` (+ ``n`` and string metadata ``meta_<key>``) to an ``.npz`` file.

    ``extra`` arrays are stored as given, e.g. ``mu_s``/``sigma_s`` for sFID as in ADM's files.
    The file is written next to the target and renamed, so an interrupted write never destroys an
    existing statistics file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"mu": stats.mu, "sigma": stats.sigma, "n": np.asarray(stats.n)}
    for key, value in stats.meta.items():
        arrays[f"meta_{key}"] = np.asarray(str(value))
    arrays.update(extra)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_stats(path: str | Path, prefix: str = "") -> FeatureStats:
    """Read ``{prefix}mu`` / ``{prefix}sigma`` from an ``.npz`` (ours, ADM's, torch-fidelity's, clean-fid's).

    ``prefix=""`` reads the pool statistics; ADM's spatial (sFID) statistics are ``mu_s``/``sigma_s``,
    read with :func:`load_stats_keys`.
    """
    return load_stats_keys(path, f"{prefix}mu", f"{prefix}sigma")


def load_stats_keys(path: str | Path, mu_key: str = "mu", sigma_key: str = "sigma") -> FeatureStats:
    """Read a (mu, sigma) pair stored under arbitrary keys of an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if mu_key not in keys or sigma_key not in keys:
                raise DataError(
                    f"{path}: no {mu_key!r}/{sigma_key!r} arrays (found {sorted(keys)}); "
                    "is this a FID statistics / reference batch file?"
                )
            mu, sigma = z[mu_key].astype(np.float64), z[sigma_key].astype(np.float64)
            n = int(z["n"]) if "n" in keys else -1
            meta = {k[len("meta_") :]: str(z[k]) for k in keys if k.startswith("meta_")}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read statistics file {path}: {err}") from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{path}: malformed statistics, mu {mu.shape} and sigma {sigma.shape}")
    return FeatureStats(mu=mu, sigma=sigma, n=n, meta=meta)
