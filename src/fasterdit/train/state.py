"""The two pieces of state a training run carries: what is fixed for the run, and what a step advances.

Why two values instead of attributes on the trainer: every module of ``train/`` (the step, the monitor,
save/resume, the outputs) takes exactly what it reads, so a reader sees in a signature what a function
can touch, and the counters a checkpoint saves are the fields of one dataclass, not attributes spread
over a class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fasterdit.data.source import BatchSource
from fasterdit.diffusion.recipe import Recipe
from fasterdit.run.config import RunConfig
from fasterdit.runtime.distributed import DistInfo
from fasterdit.train.logging import Console

__all__ = ["InitSource", "RunContext", "TrainState"]


@dataclass(frozen=True)
class RunContext:
    """What a run is: fixed from the config checks on (``check_config``) to the end of the run."""

    cfg: RunConfig
    dist: DistInfo
    run_dir: Path
    recipe: Recipe  # resolved on the data (its scaling knows the data's std)
    source: BatchSource
    model_kwargs: dict[str, Any]  # the DiT's constructor arguments (also written into every checkpoint)
    console: Console  # rank 0's messages, through the progress bar while there is one


@dataclass(frozen=True)
class InitSource:
    """Where a ``train.init`` run's step-0 weights came from (kept in every checkpoint: ``init``)."""

    path: str  # train.init as given
    loaded: str  # the checkpoint or folder actually read (a run dir resolves to its newest checkpoint)
    source: str  # "fasterdit", "diffusers", "official-dit", "official-sit"
    step: int | None  # the source's training step (None: official weights)
    weights_file: str  # the file the weights were read from (its path)
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InitSource:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class TrainState:
    """The counters a step advances; a checkpoint saves them and a resume puts them back."""

    step: int = 0  # optimizer steps done
    images_seen: int = 0  # the data position: the index stream's offset
    skipped_total: int = 0  # steps whose update was skipped (non-finite loss or gradient)
    last_ckpt: Path | None = None  # the checkpoint that holds the newest saved state
    rollbacks: int = 0  # train.on_nonfinite=rollback: rollbacks taken so far (counted across resumes)
    lr_scale: float = 1.0  # the product of train.rollback_lr_scale over those rollbacks; multiplies the lr
    init: InitSource | None = None  # train.init: what the run's step 0 was loaded from (None: random init)
