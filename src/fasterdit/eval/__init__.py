"""Evaluation: Fréchet distance, the embedded-data classifier metrics, and standard image metrics.

* :func:`evaluate` / :func:`evaluate_samples`: offline FID, class accuracy, precision/recall on the
  embedded datasets, in the feature space of a small shipped digit classifier.
* :func:`standard_metrics`: FID / sFID / IS / precision / recall against an ADM-format reference
  batch with an Inception-v3 TorchScript loaded from a local path.
* :func:`frechet_distance`: the stable float64 Fréchet distance both use.

See docs/evaluation.md.
"""

from fasterdit.eval.classifier import DigitClassifier, load_classifier
from fasterdit.eval.evaluate import evaluate, evaluate_samples, get_reference
from fasterdit.eval.frechet import (
    FeatureStats,
    fit_gaussian,
    frechet_distance,
    frechet_distance_from_features,
    load_stats,
    save_stats,
)
from fasterdit.eval.metrics import class_accuracy, inception_score, precision_recall
from fasterdit.eval.standard import load_inception, standard_metrics, write_reference_batch

__all__ = [
    "DigitClassifier",
    "FeatureStats",
    "class_accuracy",
    "evaluate",
    "evaluate_samples",
    "fit_gaussian",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_reference",
    "inception_score",
    "load_classifier",
    "load_inception",
    "load_stats",
    "precision_recall",
    "save_stats",
    "standard_metrics",
    "write_reference_batch",
]
