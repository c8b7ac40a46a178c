"""Offline sample-quality evaluation on the embedded datasets: FID, class accuracy, precision/recall.

Everything is measured in the feature space of the shipped digit classifier
(:mod:`fasterdit.eval.classifier`), against a fixed real reference set (by default the held-out
split, which neither the classifier nor any fasterdit model trains on). FID, precision and recall are
biased by the number of samples, so every result names its reference (``reference``,
``reference_n``) and its sample count (``num_samples``); compare numbers only at equal N and equal
reference. ``fid_real_at_n`` is the FID that N *real* images (from the other split) reach against the
same reference: the floor a perfect model would score at this N.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.data import EMBEDDED, INFO, load_embedded, split_indices
from fasterdit.diffusion.recipe import Recipe
from fasterdit.errors import ConfigError, DataError
from fasterdit.eval.classifier import asset_path, classifier_outputs, load_classifier
from fasterdit.eval.frechet import FeatureStats, save_stats
from fasterdit.eval.metrics import class_accuracy, inception_score, knn_radii, precision_recall
from fasterdit.eval.resize import classifier_resize
from fasterdit.generate.defaults import BATCH_SIZE
from fasterdit.generate.job import Decode, SampleSettings, sample_shared
from fasterdit.models.dit import DiT
from fasterdit.runtime.distributed import DistInfo

REFERENCE_SPLITS = ("heldout", "train", "all")
_OTHER_SPLIT = {"heldout": "train", "train": "heldout", "all": None}
PR_K = 3


@dataclass
class Reference:
    """Classifier features of a real reference set, with its Gaussian statistics and k-NN radii."""

    dataset: str
    split: str
    features: torch.Tensor  # float64 (N, D)
    stats: FeatureStats
    classifier_sha: str
    radii: dict[int, torch.Tensor] = field(default_factory=dict)
    fid_floor: dict[int, float] = field(default_factory=dict)  # N -> FID of N real images of the other split

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.split}"

    def knn_radii(self, k: int) -> torch.Tensor:
        if k not in self.radii:
            self.radii[k] = knn_radii(self.features, k)
        return self.radii[k]


_REFERENCES: dict[tuple[str, str, str, str], Reference] = {}


@functools.lru_cache(maxsize=2)
def _embedded_all(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_embedded(dataset, "all")


def embedded_split(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``load_embedded(dataset, split)``, but the package data is parsed once per process (MNIST takes
    seconds to parse, and every evaluation needs the reference split)."""
    x, y = _embedded_all(dataset)
    idx = torch.from_numpy(split_indices(y.numpy(), split))
    return x[idx], y[idx]


_SHA: dict[tuple[str, float], str] = {}


def _file_sha(path: Path) -> str:
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _SHA:
        _SHA[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return _SHA[key]


def _classifier(dataset: str, classifier_path: str | Path | None, device: str | torch.device):
    path = Path(classifier_path) if classifier_path is not None else asset_path(dataset)
    model, meta = load_classifier(dataset, path, device)
    return model, meta, _file_sha(path)


def get_reference(
    dataset: str = "mnist",
    reference: str = "heldout",
    *,
    classifier_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    cache_file: str | Path | None = None,
) -> Reference:
    """The reference set's features, cached in memory and optionally in an ``.npz`` file.

    The file cache stores ``mu``/``sigma`` (ADM/torch-fidelity keys) plus the features, and is only
    reused when the dataset, split and classifier weights (sha256) match; otherwise it is rewritten.
    """
    if dataset not in EMBEDDED:
        raise ConfigError(
            "dataset",
            f"offline evaluation needs an embedded dataset ({', '.join(EMBEDDED)}), got {dataset!r}",
        )
    if reference not in REFERENCE_SPLITS:
        raise ConfigError("reference", f"must be one of {', '.join(REFERENCE_SPLITS)}, got {reference!r}")
    clf, _meta, sha = _classifier(dataset, classifier_path, device)
    key = (dataset, reference, sha, str(device))
    if key in _REFERENCES:
        ref = _REFERENCES[key]
        if cache_file is not None and not Path(cache_file).is_file():
            save_stats(cache_file, ref.stats, features=ref.features.numpy())
        return ref
    feats = None
    if cache_file is not None and Path(cache_file).is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                ok = (
                    str(z.get("meta_dataset", "")) == dataset
                    and str(z.get("meta_split", "")) == reference
                    and str(z.get("meta_classifier_sha", "")) == sha
                    and "features" in z.files
                )
                if ok:
                    feats = torch.from_numpy(z["features"].astype(np.float64))
        except (OSError, ValueError):
            feats = None  # unreadable cache: recompute and overwrite
    from_file = feats is not None
    if feats is None:
        images, _labels = embedded_split(dataset, reference)
        feats, _logits = classifier_outputs(clf, images)
    stats = FeatureStats.from_features(
        feats,
        dataset=dataset,
        split=reference,
        classifier_sha=sha,
        feature_network=f"fasterdit-{dataset}-classifier",
    )
    if cache_file is not None and not from_file:
        save_stats(cache_file, stats, features=feats.numpy())
    ref = Reference(dataset, reference, feats, stats, sha)
    _REFERENCES[key] = ref
    return ref


def _real_floor(
    ref: Reference, n: int, classifier_path: str | Path | None, device: str | torch.device
) -> float | None:
    """FID of n real images of the other split against the reference (None if that split is too small)."""
    other = _OTHER_SPLIT[ref.split]
    if other is None or n < 2:
        return None
    if n not in ref.fid_floor:
        images, _ = embedded_split(ref.dataset, other)
        if n > len(images):
            return None
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
        clf, _meta, _sha = _classifier(ref.dataset, classifier_path, device)
        feats, _ = classifier_outputs(clf, images[pick])
        ref.fid_floor[n] = FeatureStats.from_features(feats).frechet_distance(ref.stats)
    return ref.fid_floor[n]


def evaluate_samples(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
    dataset: str = "mnist",
    reference: str = "heldout",
    *,
    k: int = PR_K,
    classifier_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    cache_file: str | Path | None = None,
    real_floor: bool = True,
) -> dict[str, Any]:
    """Metrics of generated images against the real reference set of an embedded dataset.

    Args:
        images: (N, 1, H, W) float in [-1, 1] (clamped and quantised to 8 bits first), or uint8
            (N, H, W[, 1]) such as the ``arr_0`` of a samples ``.npz``.
        labels: the class each sample was asked to be; gives ``class_accuracy``. None: unconditional.
        dataset / reference: the embedded dataset and which split is the real reference
            ("heldout": 500 MNIST images the classifier never saw; "train"; "all").
        k: neighbourhood size of the precision/recall manifolds.
        real_floor: also report ``fid_real_at_n`` (cached per N, cheap after the first call).

    Returns a flat dict (scalars first, so a trainer can log it as is): ``fid``, ``precision``,
    ``recall``, ``classifier_score``, ``class_accuracy`` (with labels), ``num_samples``, ``reference``,
    ``reference_n``, ``feature_network``, ``resize`` (the classifier takes its dataset's size only: filter
    "none"), ``summary`` and ``class_accuracy_per_class``.
    """
    t0 = time.time()
    ref = get_reference(
        dataset, reference, classifier_path=classifier_path, device=device, cache_file=cache_file
    )
    clf, meta, sha = _classifier(dataset, classifier_path, device)
    feats, logits = classifier_outputs(clf, images)
    n = int(feats.shape[0])
    if n < 2:
        raise DataError(f"need at least 2 samples to evaluate, got {n}")
    fid = FeatureStats.from_features(feats).frechet_distance(ref.stats)
    side = clf.config.resolution
    pr = precision_recall(ref.features, feats, k=k, real_radii=ref.knn_radii(k)) if n > k else {}
    cs, _ = inception_score(logits, splits=1)
    out: dict[str, Any] = {
        "fid": fid,
        "precision": pr.get("precision", math.nan),
        "recall": pr.get("recall", math.nan),
        "classifier_score": cs,
        "num_samples": n,
        "reference": ref.label,
        "reference_n": ref.n,
        "pr_k": k,
        "feature_network": f"fasterdit-{dataset}-classifier@{sha[:8]}",
        "resize": classifier_resize(side).record(side, side),  # classifier_outputs refuses other sizes
    }
    if labels is not None:
        y = torch.as_tensor(labels).long().reshape(-1).cpu()
        if y.shape[0] != n:
            raise DataError(f"{y.shape[0]} labels for {n} samples")
        acc = class_accuracy(logits, y)
        out["class_accuracy"] = acc["accuracy"]
    floor = _real_floor(ref, n, classifier_path, device) if real_floor else None
    if floor is not None:
        out["fid_real_at_n"] = floor
    out["metric_seconds"] = round(time.time() - t0, 3)
    parts = [f"FID {fid:.3f}"]
    if "class_accuracy" in out:
        parts.append(f"class acc {out['class_accuracy']:.3f}")
    parts.append(f"P {out['precision']:.3f} R {out['recall']:.3f} (k={k})")
    parts.append(f"clf score {cs:.2f}")
    tail = f"N={n} vs {ref.label} (N={ref.n}), {out['feature_network']} features"
    if floor is not None:
        tail += f"; real-data FID at this N {floor:.3f}"
    out["summary"] = " | ".join(parts) + f" | {tail}"
    if labels is not None:
        out["class_accuracy_per_class"] = acc["per_class"]
    out["classifier_heldout_accuracy"] = meta.get("heldout_accuracy")
    return out


def evaluate(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    *,
    dataset: str,
    reference: str = "heldout",
    batch_size: int = BATCH_SIZE,
    dist: DistInfo | None = None,
    decode: Decode | None = None,
    abort: type[Exception] | None = None,
    return_samples: bool = False,
    **metric_kwargs: Any,
) -> dict[str, Any] | None:
    """Sample ``settings`` and score the samples: what ``eval.every`` logs and ``fasterdit eval`` reports.

    Sampling is the one path of :mod:`fasterdit.generate.job`: sample i's noise and label come from
    (seed, i), every rank samples its share of the same batch grid, the images are quantised to 8 bits
    as a samples ``.npz`` holds them. So the numbers do not depend on the number of processes, and equal
    ``fasterdit eval``'s on a checkpoint of the same weights. Rank 0 returns
    :func:`evaluate_samples`'s dict plus ``nfe`` (per sample), ``sampler``, ``steps``, ``cfg_scale``,
    ``seed``, ``sample_seconds``, ``eval_seconds`` and ``world_size`` (``samples``/``labels`` with
    ``return_samples``); the other ranks return None. ``decode`` maps a latent model's samples to
    ``dataset``'s images; ``abort``: see :func:`~fasterdit.generate.job.sample_shared`; other keyword
    arguments go to :func:`evaluate_samples` (``k``, ``classifier_path``, ``cache_file``).
    """
    if dataset not in INFO:
        raise ConfigError(
            "dataset", f"offline evaluation needs an embedded dataset ({', '.join(INFO)}), got {dataset!r}"
        )
    if settings.num_samples < 2:
        raise ConfigError("num_samples", f"must be >= 2, got {settings.num_samples}")
    info = INFO[dataset]
    shape = (model.in_channels, *model.input_size)
    if decode is None and shape != (info.channels, info.resolution, info.resolution):
        raise ConfigError(
            "dataset",
            f"the model generates {shape} images but {dataset} images are "
            f"({info.channels}, {info.resolution}, {info.resolution}); "
            f"the offline metrics need a pixel model of {dataset}",
        )
    num_classes = model.num_classes
    if num_classes not in (0, info.num_classes):
        raise ConfigError("dataset", f"model has {num_classes} classes, {dataset} has {info.num_classes}")
    dist = dist if dist is not None else DistInfo(device=next(model.parameters()).device)
    t0 = time.time()
    got = sample_shared(model, recipe, settings, batch_size=batch_size, dist=dist, decode=decode, abort=abort)
    if got is None:
        return None
    images, labels, nfe = got
    sample_seconds = time.time() - t0
    y = labels if num_classes else None
    out = evaluate_samples(images, y, dataset, reference, device=dist.device, **metric_kwargs)
    out.update(
        nfe=nfe,
        sampler=settings.sampler,
        steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        seed=settings.seed,
        sample_seconds=round(sample_seconds, 3),
        eval_seconds=round(time.time() - t0, 3),
        world_size=dist.world_size,
    )
    out["summary"] += (
        f" | {settings.sampler} {settings.steps} steps, NFE {nfe}, cfg {settings.cfg_scale}, "
        f"{out['eval_seconds']:.1f} s"
    )
    if return_samples:
        out["samples"], out["labels"] = images, labels
    return out
