"""Checks of ``fasterdit sample`` / ``fasterdit eval`` arguments, done before a model is loaded.

Why: sampling takes minutes to hours; a value that only fails when it is used (an output folder that
cannot be written, ``--nrow -2``) used to throw the finished samples away, and ``--steps 0`` or
``--nrow 0`` silently meant "the default".
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from fasterdit.diffusion.sampling_base import MAX_STEPS
from fasterdit.errors import ConfigError
from fasterdit.run.config import MAX_GRID_SAMPLES

__all__ = ["MAX_JOB_SAMPLES", "check_bounds", "check_sampling_args", "prepare_output"]

#: the most samples of one ``.npz`` job (parts stream to disk, but the labels and the index grid are in
#: memory; ImageNet's FID-50K is 50,000)
MAX_JOB_SAMPLES = 100_000_000


def check_sampling_args(steps: int | None, cfg: float | None, nrow: int | None = None) -> None:
    """``--steps`` and ``--nrow`` >= 1 when given, ``--cfg`` a finite number >= 0 when given."""
    if steps is not None and steps < 1:
        raise ConfigError("--steps", f"must be >= 1 (leave it out for the run's default), got {steps}")
    if cfg is not None and not (math.isfinite(cfg) and cfg >= 0):
        raise ConfigError("--cfg", f"must be a finite number >= 0 (1 = no guidance), got {cfg}")
    if nrow is not None and nrow < 1:
        raise ConfigError("--nrow", f"must be >= 1 (leave it out for one row per label), got {nrow}")


def check_bounds(steps: int | None, num: int | None, png: bool) -> None:
    """``--steps`` and ``--num-samples`` (when given) within what memory holds: the time grid of
    ``steps``, a PNG grid drawn in memory, a job's index grid. ``--steps 1000000000`` used to be killed
    for memory after loading the model."""
    if steps is not None and steps > MAX_STEPS:
        raise ConfigError("--steps", f"must be at most {MAX_STEPS}, got {steps}")
    most, what = (
        (MAX_GRID_SAMPLES, "a PNG grid (use an .npz for more)") if png else (MAX_JOB_SAMPLES, "a job")
    )
    if num is not None and num > most:
        raise ConfigError("--num-samples", f"must be at most {most} for {what}, got {num}")


def prepare_output(path: str | Path, flag: str) -> Path:
    """Create the parent folder of an output file and prove a file can be written there.

    A probe file is created and removed next to the target, which catches a read-only or full
    filesystem, a parent that is a file, and missing permissions, before any work is done.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(flag, f"{path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(flag, f"cannot write {path} ({err.strerror or err})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(flag, f"cannot write {path} (the file exists and is read-only)")
    return path
