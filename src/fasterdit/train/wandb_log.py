"""``log.wandb``: the run's scalars and config in Weights & Biases, beside metrics.jsonl and TensorBoard.

Why the same names as TensorBoard (``train/loss``, ``eval/fid``, ...): metrics.jsonl is the source of truth
and the other two are views of it; the trainer hands :class:`~fasterdit.train.logging.MetricsLogger` each
record once, and the logger writes the same finite numbers to each view.

Why the training step as a metric (``step``, the x-axis of every other key) rather than wandb's own step:
a resumed run logs again the steps after its checkpoint, and wandb drops a ``step=`` that goes backwards;
as a metric, the repeated steps stay visible and plot at their training step. A resumed run continues the
same wandb run: its id is kept in ``RUN/wandb-id``.

wandb is the optional ``fasterdit[wandb]`` extra, imported here only (rank 0, when ``log.wandb`` is on).
Its own settings apply as usual: ``WANDB_MODE=offline`` (no network; ``wandb sync`` later),
``WANDB_PROJECT`` (default ``fasterdit``), ``WANDB_DIR`` (default: the run directory).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from fasterdit.errors import UserError
from fasterdit.runtime.files import atomic_write_text

__all__ = ["ID_FILE", "WandbRun", "wandb_missing"]

#: where a run directory keeps its wandb run id (a resumed run continues that wandb run)
ID_FILE = "wandb-id"
_INSTALL = "log.wandb needs wandb: pip install 'fasterdit[wandb]' (or set log.wandb false)"


def wandb_missing() -> str | None:
    """Why ``log.wandb`` cannot work here (wandb not installed), or None: checked before any work."""
    return _INSTALL if importlib.util.find_spec("wandb") is None else None


class WandbRun:
    """One wandb run for one run directory: ``log`` a record's scalars, ``close`` at the end."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        try:  # lazy: the optional "fasterdit[wandb]" extra, seconds to import
            import wandb
        except ImportError as err:
            raise UserError(_INSTALL) from err
        id_file = run_dir / ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "fasterdit"),
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=os.environ.get("WANDB_DIR", str(run_dir)),
                config=config,
            )
        except wandb.errors.Error as err:  # not logged in, no network: the user's to fix, before training
            raise UserError(
                f"log.wandb: wandb could not start a run ({' '.join(str(err).split())}); run `wandb login`, "
                "set WANDB_MODE=offline, or set log.wandb false"
            ) from err
        if run_id is None:
            atomic_write_text(id_file, self.run.id + "\n")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """``scalars``: TensorBoard's names and values of one record (``kind/key``)."""
        self.run.log({"step": step, **scalars})

    def close(self) -> None:
        self.run.finish()
