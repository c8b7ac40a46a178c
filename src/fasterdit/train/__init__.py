"""Training: the trainer loop, its parts (model, EMA, optimizer, DDP), resume, signals and logging.

The run format it writes (config and checkpoints) is :mod:`fasterdit.run`; loading a trained model to
sample it is :mod:`fasterdit.generate`. The trainer is imported lazily so that ``import fasterdit.train``
stays cheap for ``fasterdit --help``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "train"):
        from fasterdit.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'fasterdit.train' has no attribute {name!r}")
