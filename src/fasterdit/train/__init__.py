"""Training: config, trainer loop, distributed setup, checkpoints, EMA, logging, model loading.

Heavy pieces are imported lazily so that ``from fasterdit.train import load_model`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig", "Trainer", "load_config", "load_model", "load_trained", "train"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "load_trained"):
        from fasterdit.train import loading

        return getattr(loading, name)
    if name in ("Trainer", "train"):
        from fasterdit.train import trainer

        return getattr(trainer, name)
    if name in ("RunConfig", "load_config"):
        from fasterdit.train import config

        return getattr(config, name)
    raise AttributeError(f"module 'fasterdit.train' has no attribute {name!r}")
