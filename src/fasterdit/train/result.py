"""How a training run ends: its result, or one of the two ways it stops early on purpose."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fasterdit.errors import UserError

__all__ = ["TrainResult", "TrainingAborted", "TrainingInterrupted"]


class TrainingAborted(UserError):
    """Training stopped on purpose (e.g. a stream of non-finite losses); the message says what is intact."""


class TrainingInterrupted(UserError):
    """A second Ctrl-C stopped the run at once, without a checkpoint; the message says what is on disk."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_seen: int
    checkpoint: Path | None
    #: per-step global mean loss of this process's steps (a rollback drops those of the steps it undid)
    losses: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    stopped_by: str | None = None  # a signal name when interrupted
    samples_per_sec: float = float("nan")  # steady-state training throughput (excludes sampling/ckpt)
    wall_time: float = 0.0
    rollbacks: int = 0  # train.on_nonfinite=rollback: rollbacks taken (counted across resumes)
