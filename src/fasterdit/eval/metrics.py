"""Sample-quality metrics other than FID, on features/logits of any network (float64).

* **Precision / recall** of Kynkäänniemi et al. 2019 ("Improved precision and recall metric for
  assessing generative models"): each real feature gets a ball whose radius is the distance to its
  k-th nearest real neighbour (itself excluded); precision is the fraction of generated samples
  inside at least one real ball (fidelity), recall the fraction of real samples inside at least one
  generated ball (coverage). k = 3 as in the paper and in ADM's evaluator. Both depend on the set
  sizes (radii shrink as N grows), so compare at equal N.
* **Class accuracy** of class-conditional samples: ``argmax p(y|x) == requested label``.
* **Inception score** (Salimans et al. 2016) ``exp(E_x KL(p(y|x) ‖ p(y)))``, the mean over
  ``splits`` disjoint chunks as in the original code; on the digit classifier it is the
  "classifier score" (between 1 and the number of classes; 10 = confident and balanced).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fasterdit.errors import DataError


def _f64(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device=device, dtype=torch.float64)


def _pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² via the Gram matrix (clamped at 0 against round-off)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def knn_radii(
    features: np.ndarray | torch.Tensor, k: int = 3, chunk: int = 2048, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Squared distance of every feature to its k-th nearest neighbour in the same set (self excluded).

    Returned on the CPU; computed on ``device`` (a GPU makes 50k x 10k Inception features cheap).
    """
    f = _f64(features, device)
    n = f.shape[0]
    if not 1 <= k < n:
        raise DataError(f"k-NN radius needs 1 <= k < N; got k={k} with N={n} feature vectors")
    out = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, chunk):
        d = _pairwise_sq_dist(f[i : i + chunk], f)
        # the k+1-th smallest, because each point is its own nearest neighbour at distance 0
        out[i : i + chunk] = d.kthvalue(k + 1, dim=1).values.cpu()
    return out


def _coverage(query: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of query points inside at least one ball (support_j, radius_j)."""
    inside = 0
    for i in range(0, query.shape[0], chunk):
        d = _pairwise_sq_dist(query[i : i + chunk], support)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / query.shape[0]


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    chunk: int = 2048,
    real_radii: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Kynkäänniemi precision and recall of ``fake`` w.r.t. ``real`` feature sets (N, D).

    ``real_radii`` may be passed to reuse the real manifold across calls (cached references).
    A sample exactly on a ball's boundary counts as inside (``<=``), as in the paper's code.
    """
    r, g = _f64(real, device), _f64(fake, device)
    if r.ndim != 2 or g.ndim != 2 or r.shape[1] != g.shape[1]:
        raise DataError(
            "precision/recall needs feature sets (N, D) of equal D, "
            f"got {tuple(r.shape)} and {tuple(g.shape)}"
        )
    rr = _f64(knn_radii(r, k, chunk, device) if real_radii is None else real_radii, device)
    rg = _f64(knn_radii(g, k, chunk, device), device)
    return {"precision": _coverage(g, r, rr, chunk), "recall": _coverage(r, g, rg, chunk)}


def class_accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict:
    """Overall and per-class accuracy of ``argmax logits`` against the requested ``labels``."""
    lg = torch.as_tensor(logits)
    y = torch.as_tensor(labels).long().reshape(-1)
    if lg.ndim != 2 or lg.shape[0] != y.shape[0]:
        raise DataError(f"{y.shape[0]} labels for logits of shape {tuple(lg.shape)}")
    k = lg.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(
            f"labels must be in 0..{k - 1} for a {k}-class classifier, got {int(y.min())}..{int(y.max())}"
        )
    hit = (lg.argmax(1) == y).double()
    per_class: list[float | None] = []
    for c in range(k):
        m = y == c
        per_class.append(float(hit[m].mean()) if bool(m.any()) else None)
    return {"accuracy": float(hit.mean()), "per_class": per_class}


def inception_score(
    logits: np.ndarray | torch.Tensor,
    splits: int = 1,
    probabilities: bool = False,
    split_size: int | None = None,
) -> tuple[float, float]:
    """(mean, std over splits) of ``exp(mean_x KL(p(y|x) ‖ p̄(y)))``, p̄ the mean over each split.

    ``splits`` near-equal splits, or with ``split_size`` consecutive chunks of that many rows (the
    last one shorter), as ADM's evaluator does with 5,000. ``probabilities=True`` takes softmax
    outputs instead of logits (the StyleGAN Inception returns probabilities). Computed from
    log-probabilities in float64 so zeros do not produce ``0·log 0``.
    """
    z = _f64(logits)
    if z.ndim != 2:
        raise DataError(f"inception score needs a (N, K) array, got shape {tuple(z.shape)}")
    if split_size is None and (splits < 1 or splits > z.shape[0]):
        raise DataError(f"splits must be in 1..N={z.shape[0]}, got {splits}")
    if split_size is not None and split_size < 1:
        raise DataError(f"split_size must be >= 1, got {split_size}")
    logp = torch.log(z.clamp_min(1e-300) / z.sum(1, keepdim=True)) if probabilities else z.log_softmax(1)
    parts = torch.split(logp, split_size) if split_size is not None else torch.tensor_split(logp, splits)
    scores = []
    for part in parts:
        p = part.exp()
        log_marginal = torch.logsumexp(part, 0) - math.log(part.shape[0])
        kl = (p * (part - log_marginal[None, :])).sum(1).mean()
        scores.append(float(kl.exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())
