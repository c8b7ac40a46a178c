"""The metrics of OpenAI's ADM evaluator (guided-diffusion ``evaluations/evaluator.py``) from activations.

Why follow that file and not a textbook definition: every DiT-family paper (DiT, SiT, LightningDiT,
FasterDiT) reports its FID-50K with it, and two of its choices change the numbers:

* **Inception Score** splits the samples into consecutive chunks of 5,000 (``split_size``), not into
  a fixed number of splits: 10 splits at N = 50,000, one at N ≤ 5,000, and a shorter last chunk
  otherwise. The softmax is over ``pool @ W`` (the 1008-way logits without their bias).
* **Precision / recall** (its ``ManifoldEstimator``, k = 3): the radius of a point is the distance to
  its k-th neighbour counting itself (the (k+1)-th smallest of its row), rows processed in batches,
  squared distances from ``‖u‖² − 2u·v + ‖v‖²`` clamped at 0, and a point is inside a ball
  when its distance is ``<=`` the radius. Precision: the share of samples inside some reference
  ball; recall: the share of reference images inside some sample ball.
* **FID / sFID**: ``mu`` = mean, ``sigma`` = ``np.cov(rowvar=False)`` (N − 1) of the samples, against
  the reference batch's stored ``mu``/``sigma`` (``mu_s``/``sigma_s`` for the spatial features).

What stays different, by design: ADM evaluates its distance block in float16 when the result is
finite (float32 otherwise) and its softmax and means in float32; here everything is float64, so a
sample within float16 round-off of a ball's boundary can count differently (documented in
docs/evaluation.md). The Fréchet distance is the eigenvalue route of :mod:`fasterdit.eval.frechet`,
equal to ADM's ``scipy.linalg.sqrtm`` route wherever that one is well defined.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fasterdit.eval.frechet import FeatureStats, fit_gaussian, frechet_distance
from fasterdit.eval.metrics import inception_score, precision_recall

#: evaluator.py: ``compute_inception_score(..., split_size=5000)``
IS_SPLIT_SIZE = 5000
#: rows per distance block. ADM uses 10,000 (``ManifoldEstimator(row_batch_size=10000, ...)``) in
#: float32, 2 GB per block at N = 50,000; in float64 that would be 4 GB, so rows go 2,048 at a time.
#: The batching changes no value: each row's distances to all columns are computed in one block.
ROW_BATCH = 2048
K = 3


def adm_metrics(
    sample_acts: dict[str, np.ndarray],
    ref_acts: dict[str, np.ndarray],
    ref_pool: FeatureStats,
    ref_spatial: FeatureStats | None = None,
    *,
    k: int = K,
    split_size: int = IS_SPLIT_SIZE,
    row_batch: int = ROW_BATCH,
    device: Any = "cpu",
) -> dict[str, Any]:
    """FID, sFID, IS and precision/recall as ADM's evaluator computes them from the same activations.

    ``sample_acts``/``ref_acts``: ``"pool"`` (N, 2048) and optionally ``"spatial"`` (N, 2023) and
    ``"logits"`` (N, 1008, bias-free) or ``"probs"`` (the StyleGAN TorchScript's softmax). A metric
    whose inputs are missing is ``None``. ``ref_pool``/``ref_spatial``: the reference statistics.
    """
    pool = sample_acts["pool"]
    n = len(pool)
    out: dict[str, Any] = {"fid": frechet_distance(*fit_gaussian(pool), ref_pool.mu, ref_pool.sigma)}
    out["sfid"] = None
    if "spatial" in sample_acts and ref_spatial is not None:
        out["sfid"] = frechet_distance(
            *fit_gaussian(sample_acts["spatial"]), ref_spatial.mu, ref_spatial.sigma
        )
    out["inception_score"] = out["inception_score_std"] = None
    key = "logits" if "logits" in sample_acts else "probs" if "probs" in sample_acts else None
    if key is not None:
        mean, std = inception_score(sample_acts[key], split_size=split_size, probabilities=key == "probs")
        out["inception_score"], out["inception_score_std"] = mean, std
        out["is_splits"] = -(-n // split_size)
        out["is_split_size"] = split_size
    out["precision"] = out["recall"] = None
    if n > k and len(ref_acts["pool"]) > k:
        out.update(precision_recall(ref_acts["pool"], pool, k=k, chunk=row_batch, device=device))
    out["pr_k"] = k
    return out
