"""Crash-safe checkpoints: atomic directory writes, a ``latest`` pointer, keep-last-K, resume lookup.

Layout of a run directory::

    <run_dir>/checkpoints/step-000001000/
        model.safetensors   raw (non-EMA) weights
        ema.safetensors     EMA weights (fp32) -- what sampling uses
        state.pt            optimizer, step, every RNG, data position, counters (weights_only-safe)
        meta.json           step, config, recipe, model and data description, file sizes; written last
    <run_dir>/checkpoints/latest      text file naming the newest complete checkpoint

Why this dance (temp dir -> fsync every file -> fsync dir -> rename -> fsync parent -> replace the pointer):
a checkpoint is either entirely there or not at all, whatever kills the process (SIGKILL, power loss,
a full disk). A checkpoint counts only if its ``meta.json`` parses and every file it lists has the listed
size, so a half-copied directory is never resumed from. Writing into a hidden ``.tmp-*`` directory first
means an interrupted write never touches the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fasterdit.errors import UserError

__all__ = [
    "CKPT_SUBDIR",
    "CheckpointError",
    "atomic_write_text",
    "checkpoint_step",
    "find_checkpoint",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "read_meta",
    "remove_stale_temps",
    "save_checkpoint",
]

CKPT_SUBDIR = "checkpoints"
LATEST = "latest"
FORMAT = "fasterdit-checkpoint"
VERSION = 1
_PREFIX = "step-"
_TMP = ".tmp-"


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message names the path and what is intact."""


# ----------------------------------------------------------------------------------------------------
# low-level durable writes
# ----------------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP}{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(flat, str(path))
    _fsync_file(path)


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------
# lookup
# ----------------------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    name = Path(path).name
    if not name.startswith(_PREFIX):
        return None
    try:
        return int(name[len(_PREFIX) :])
    except ValueError:
        return None


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fasterdit checkpoint")
    return meta


def is_complete(ckpt: str | Path) -> bool:
    """True when meta.json parses and every file it lists exists with the recorded size."""
    ckpt = Path(ckpt)
    try:
        meta = read_meta(ckpt)
        return all((ckpt / name).stat().st_size == size for name, size in meta["files"].items())
    except (CheckpointError, OSError, KeyError, AttributeError, TypeError):
        return False


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return [p for s, p in sorted((s, p) for s, p in found if s is not None) if is_complete(p)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names if it is complete, else the newest complete one, else None."""
    root = Path(run_dir) / CKPT_SUBDIR
    pointer = root / LATEST
    with contextlib.suppress(OSError):
        name = pointer.read_text().strip()
        if name and is_complete(root / name):
            return root / name
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir, its ``checkpoints/`` dir, or a checkpoint dir/file in it."""
    path = Path(path)
    if path.is_file() and path.parent.joinpath("meta.json").is_file():
        path = path.parent
    if path.is_dir() and (path / "meta.json").is_file():
        if not is_complete(path):
            raise CheckpointError(f"{path}: incomplete checkpoint (a file is missing or truncated)")
        return path
    for run_dir in (path, path.parent) if path.name == CKPT_SUBDIR else (path,):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise CheckpointError(f"{path}: no complete fasterdit checkpoint found")


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted checkpoint writes (only ``.tmp-*`` entries; never a checkpoint)."""
    root = Path(run_dir) / CKPT_SUBDIR
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, point ``latest`` at it, prune to ``keep_last``.

    On any write error (disk full, permission, I/O) the partial files are removed, the previous
    checkpoint and pointer are left as they were, and a CheckpointError names both.
    """
    root = Path(run_dir) / CKPT_SUBDIR
    name = f"{_PREFIX}{int(step):09d}"
    final = root / name
    previous = latest_checkpoint(run_dir)
    if final.is_dir() and is_complete(final):
        # Same step already saved (e.g. a signal right after a periodic save): the state is identical.
        _point_latest(root, name, previous)
        return final
    tmp = root / f"{_TMP}{name}-{os.getpid()}"
    moved = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _save_tensors(model_state, tmp / "model.safetensors")
        if ema_state is not None:
            _save_tensors(ema_state, tmp / "ema.safetensors")
        _save_torch(train_state, tmp / "state.pt")
        files = {p.name: p.stat().st_size for p in tmp.iterdir()}
        full_meta = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "files": files,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **meta,
        }
        meta_path = tmp / "meta.json"
        with open(meta_path, "w") as f:
            json.dump(full_meta, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # an incomplete directory of the same name (from a copy, never from us)
            shutil.rmtree(final)
        os.replace(tmp, final)
        moved = True
        _fsync_dir(root)
        atomic_write_text(root / LATEST, name + "\n")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:
            shutil.rmtree(final, ignore_errors=True)
            _point_latest(root, previous.name if previous else None, None, quiet=True)
        what = err.strerror or str(err)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write checkpoint {final} ({what}{': ' + err.filename if err.filename else ''}); "
            f"{kept}. Free disk space or fix permissions and resume."
        ) from err
    prune_checkpoints(run_dir, keep_last, protect=final)
    return final


def _point_latest(root: Path, name: str | None, previous: Path | None, quiet: bool = False) -> None:
    if name is None:
        return
    try:
        atomic_write_text(root / LATEST, name + "\n")
    except OSError:
        if not quiet:
            raise


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never ``protect``)."""
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[: max(0, len(ckpts) - keep_last)]
    removed = []
    for p in doomed:
        if protect is not None and p.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_train_state(ckpt: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The full training state (optimizer, RNGs, data position...) of a checkpoint directory."""
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot read the training state ({type(err).__name__}: {err})"
        ) from err


def load_tensors(
    ckpt: str | Path, which: str = "ema", device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """``which`` = "ema" or "model": the weights of a checkpoint directory (safetensors)."""
    from safetensors.torch import load_file

    path = Path(ckpt) / f"{which}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({which} weights not saved in this checkpoint)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
