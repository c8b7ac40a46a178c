"""Crash-safe checkpoints: atomic directory writes, a ``latest`` pointer, keep-last-K, resume lookup.

Layout of a run directory::

    <run_dir>/checkpoints/step-000001000/
        model.safetensors   raw (non-EMA) weights
        ema.safetensors     EMA weights (fp32) -- what sampling uses
        state.pt            optimizer, step, every RNG, data position, counters (weights_only-safe)
        meta.json           step, config, recipe, model and data description, file sizes and SHA-256
                            checksums, and ``meta_sha256``: the SHA-256 of everything else in it; written last
    <run_dir>/checkpoints/latest      text file naming the newest complete checkpoint

Why this dance (temp dir -> fsync every file -> fsync dir -> rename -> fsync parent -> replace the pointer):
a checkpoint is either entirely there or not at all, whatever kills the process (SIGKILL, power loss,
a full disk). A checkpoint counts only if its ``meta.json`` parses and every file it lists has the listed
size, so a half-copied directory is never resumed from. Writing into a hidden ``.tmp-*`` directory first
means an interrupted write never touches the previous checkpoint.

Sizes are checked on every lookup (cheap); the SHA-256 of every file is checked before a checkpoint is
used (resume, ``sample``, ``eval``), so a flipped byte is found rather than trained on. ``meta.json`` is
covered too: its shape is checked and ``meta_sha256`` is the digest of its canonical JSON without the
file manifest (which the files themselves check), so an edited or damaged model name, step or recipe is
damage like any other rather than trusted. A damaged newest checkpoint of a run falls back to the
previous intact one (:func:`open_intact`). Deletion goes through a ``.trash-*`` rename first, so an
interrupted prune never leaves a half-deleted ``step-*`` directory.

Readers of a live run (``sample``/``eval`` while training saves and prunes, ``log.keep_last 1``
included) take no lock: the checkpoint they chose can be pruned, or replaced by a save of the same
step, while they read it. :func:`open_intact` tells that from damage by the directory's identity (it
is gone or is another directory now) and lists the run again, a bounded number of times, so it always
ends on the newest checkpoint that was intact while it was read. Every file is created by ``open()``
(:mod:`fasterdit.runtime.hashed`, which takes each file's SHA-256 as it is written), so it gets the
permissions the umask gives a new file, and other accounts can sample a run on a shared filesystem.

Why one module of ~600 lines: the write path (temp dir, fsyncs, rename, pointer, prune) and the read
path (lookup, size and checksum verification, quarantine) are the two halves of one on-disk format and
must change together; what a run puts into a checkpoint is :mod:`fasterdit.train.resume`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import stat
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fasterdit.errors import UserError
from fasterdit.runtime.files import TMP_PREFIX, atomic_write_text, fsync_dir, remove_path, remove_temps
from fasterdit.runtime.hashed import write_tensors, write_torch

__all__ = [
    "CKPT_SUBDIR",
    "CheckpointError",
    "by_device",
    "candidates",
    "checkpoint_step",
    "find_checkpoint",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "meta_digest",
    "nonfinite_flags",
    "nonfinite_names",
    "open_checkpoint",
    "open_intact",
    "quarantine",
    "read_meta",
    "remove_stale_temps",
    "save_checkpoint",
    "verify_checkpoint",
]

CKPT_SUBDIR = "checkpoints"
LATEST = "latest"
FORMAT = "fasterdit-checkpoint"
#: 2: meta.json records ``meta_sha256`` (version 1 checkpoints are checked by their shape only)
VERSION = 2
_PREFIX = "step-"
_TMP = TMP_PREFIX  # temporary checkpoint directories, named like every temporary file
_TRASH = ".trash-"
_CORRUPT = "corrupt-"
_MB = 2**20
#: free space required beyond the checkpoint's own size (meta.json, the pointer, filesystem slack)
_SPACE_MARGIN = 4 * _MB
#: the fields of meta.json that ``meta_sha256`` does not cover: itself, and the manifest of the files
#: (sizes and SHA-256), which the files themselves check
_MANIFEST = ("files", "sha256", "meta_sha256")
#: the sections of meta.json every reader needs, each a JSON object
_SECTIONS = ("config", "recipe", "model")
#: run directories whose ``.tmp-*`` leftovers the trainer removes at its start (checkpoints/: its own sweep)
_TEMP_DIRS = (".", "samples")
#: how often a reader lists a run again when the checkpoint it reads is pruned or replaced under it
RELIST_TRIES = 20
T = TypeVar("T")


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message names the path and what is intact."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remove_tree(path: Path) -> bool:
    """Delete a directory by renaming it to a ``.trash-*`` name first, then removing that.

    Why: ``rmtree`` of a live name that is interrupted (kill -9) leaves a half-deleted ``step-*``
    directory; a trash name is never mistaken for a checkpoint and is swept at the next start.
    """
    trash = path.with_name(f"{_TRASH}{path.name}-{os.getpid()}")
    try:
        os.replace(path, trash)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


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
    """meta.json of a checkpoint, parsed (its content is checked by :func:`verify_checkpoint`)."""
    path = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({err})") from err
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        raise CheckpointError(f"{path}: damaged checkpoint metadata (a JSON {kind}, not an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fasterdit checkpoint")
    return meta


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of meta.json's canonical JSON (sorted keys, no spaces) without the file manifest.

    Why canonical and not the file's bytes: the digest lives inside the file it covers, and the manifest
    is left out because the files check it (a test or a repair may rewrite it for new files).
    """
    body = {k: v for k, v in meta.items() if k not in _MANIFEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the file manifest (``files``, ``sha256``), or None."""
    files, sums = meta.get("files"), meta.get("sha256", {})
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return "no file list with model.safetensors"
    for name, size in files.items():
        if not name or "/" in name or name in (".", "..", "meta.json") or not _is_int(size) or size < 0:
            return f"a bad file entry {name!r}: {size!r}"
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        return "a malformed sha256 list"
    if set(sums) - set(files):  # fewer is a checkpoint of before checksums: checked by size
        return "a sha256 list of files the file list does not have"
    return None


def _meta_problem(ckpt: Path, meta: dict[str, Any]) -> str | None:
    """What makes a parsed meta.json unusable (a wrong type, another step than its directory's, a digest
    that does not match), or None. The readers' own checks (config, recipe, weights) come after."""
    version, step = meta.get("version"), meta.get("step")
    if not _is_int(version) or version < 1:
        return f"a bad format version {version!r}"
    if not _is_int(step) or step < 0:
        return f"a bad step {step!r}"
    if checkpoint_step(ckpt) not in (None, step):
        return f"step {step}, but the directory is of step {checkpoint_step(ckpt)}"
    manifest = _manifest_problem(meta)
    if manifest is not None:
        return manifest
    for section in _SECTIONS:
        if not isinstance(meta.get(section), dict):
            return f"its {section!r} is a {type(meta.get(section)).__name__}, not an object"
    if not isinstance(meta["model"].get("name"), str):
        return f"a bad model name {meta['model'].get('name')!r}"
    recorded = meta.get("meta_sha256")
    if recorded is None and version >= 2:
        return "no meta_sha256"
    if recorded is not None and recorded != meta_digest(meta):
        return "its content does not match its meta_sha256 (edited or damaged)"
    return None


def is_complete(ckpt: str | Path) -> bool:
    """True when meta.json parses and every file it lists exists with the recorded size."""
    ckpt = Path(ckpt)
    try:
        meta = read_meta(ckpt)
        return all((ckpt / name).stat().st_size == size for name, size in meta["files"].items())
    except (CheckpointError, OSError, KeyError, AttributeError, TypeError):
        return False


def _step_dirs(run_dir: str | Path) -> list[Path]:
    """Every ``step-*`` directory of a run, complete or not, oldest first."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)]


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return [p for p in _step_dirs(run_dir) if is_complete(p)]


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
    """Delete leftovers of interrupted writes and prunes: ``.tmp-*`` and ``.trash-*`` entries of
    ``checkpoints/``, the ``.tmp-*`` files of the run directory and its ``samples/`` (a killed
    ``config.yaml`` write, a torchrun restart's dead attempt), and incomplete ``step-*`` directories
    older than the newest complete checkpoint (half-deleted by an interrupted prune of an earlier
    version). Never a complete checkpoint, never a newer partial one.

    Call it only while holding the run-directory lock: then nobody else writes these directories, so a
    temporary name there is a leftover, never a write in progress.
    """
    root = Path(run_dir) / CKPT_SUBDIR
    removed = [p for sub in _TEMP_DIRS for p in remove_temps(Path(run_dir) / sub)]
    if not root.is_dir():
        return removed
    complete = list_checkpoints(run_dir)
    newest = checkpoint_step(complete[-1]) if complete else None
    for p in root.iterdir():
        step = checkpoint_step(p)
        stale_step = step is not None and newest is not None and step < newest and not is_complete(p)
        if p.name.startswith((_TMP, _TRASH)) or (stale_step and p.is_dir()):
            remove_path(p)
            removed.append(p)
    return removed


def verify_checkpoint(ckpt: str | Path) -> None:
    """Raise CheckpointError naming the file unless every file has its recorded size and SHA-256.

    Reads every byte (about 1 s per GB): called before a checkpoint is used, not on every lookup.
    meta.json itself must have the shape readers rely on and match its ``meta_sha256``. Checkpoints
    written before checksums existed are checked by size only, and before ``meta_sha256`` (format
    version 1) by the shape of their meta.json.
    """
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    problem = _meta_problem(ckpt, meta)
    if problem is not None:
        raise CheckpointError(f"{ckpt / 'meta.json'}: damaged checkpoint metadata ({problem})")
    files, sums = meta["files"], meta.get("sha256", {})
    for name, size in files.items():
        path = ckpt / name
        try:
            actual = path.stat().st_size
        except OSError as err:
            raise CheckpointError(f"{path}: missing ({err.strerror})") from None
        if actual != size:
            raise CheckpointError(f"{path}: {actual} bytes, the manifest records {size} (truncated?)")
        want = sums.get(name)
        try:
            actual_sum = None if want is None else _sha256(path)
        except OSError as err:  # gone since its size was read: a prune, which the caller tells from damage
            raise CheckpointError(f"{path}: missing ({err.strerror})") from None
        if actual_sum != want:
            raise CheckpointError(f"{path}: SHA-256 mismatch with meta.json (the file is corrupt)")


def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints to try, best first: the one ``latest`` names, then every ``step-*`` directory newest
    first. Incomplete ones are included: verifying them says what is wrong (a truncated file, an
    unparsable meta.json) instead of passing over them in silence."""
    root = Path(run_dir) / CKPT_SUBDIR
    first = None
    with contextlib.suppress(OSError):
        name = (root / LATEST).read_text().strip()
        if checkpoint_step(root / name) is not None and (root / name).is_dir():
            first = root / name
    rest = [p for p in reversed(_step_dirs(run_dir)) if p != first]
    return ([first] if first is not None else []) + rest


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory, None when there is none at ``path``: a checkpoint pruned or
    replaced while it was read has another identity afterwards, a damaged one the same."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _listing(run_dir: Path) -> tuple[str, tuple[str, ...]]:
    """What a reader's choice of checkpoint depends on: the ``latest`` pointer and the ``step-*`` names."""
    pointer = ""
    with contextlib.suppress(OSError):
        pointer = (run_dir / CKPT_SUBDIR / LATEST).read_text()
    return pointer, tuple(p.name for p in _step_dirs(run_dir))


def _first_intact(
    run_dir: Path, read: Callable[[Path], T], warn: Callable[[str], None], damaged: dict[Path, str]
) -> tuple[tuple[Path, T] | None, bool]:
    """One pass over the candidates: (the first intact one, read; or None) and whether the run's
    checkpoints changed under the pass, so that listing them again may find a newer one.

    A checkpoint that fails while its directory stays the same is damaged: added to ``damaged``,
    reported through ``warn`` once, and skipped by later passes. One that is gone or replaced
    afterwards (a prune, a save of the same step) is no damage: the pass ends and the caller lists again.
    """
    before = _listing(run_dir)
    for ckpt in candidates(run_dir):
        if ckpt in damaged:
            continue
        ident = _identity(ckpt)
        if ident is None:
            return None, True
        try:
            verify_checkpoint(ckpt)
            value = read(ckpt)
        except CheckpointError as err:
            if _identity(ckpt) != ident:
                return None, True
            damaged[ckpt] = str(err)
            warn(f"warning: skipping checkpoint {ckpt}: {err}")
            continue
        if _identity(ckpt) != ident:  # replaced while read: its files may come from two saves
            return None, True
        return (ckpt, value), False
    return None, _listing(run_dir) != before


def open_intact(
    run_dir: str | Path, read: Callable[[Path], T], warn: Callable[[str], None]
) -> tuple[Path, T] | None:
    """``read`` the best intact checkpoint of a run: verified checksums, and ``read`` itself succeeds.

    A damaged one is reported through ``warn`` (naming the file) and the previous one is tried; None
    when the run has no checkpoint; CheckpointError listing every failure when none is intact. A
    checkpoint pruned or replaced while it is read (training still running) is not damage: the run is
    listed again, up to :data:`RELIST_TRIES` times, and the newest intact one read.
    """
    run_dir = Path(run_dir)
    damaged: dict[Path, str] = {}
    for _ in range(RELIST_TRIES):
        found, moved = _first_intact(run_dir, read, warn, damaged)
        if found is not None:
            return found
        if not moved:
            break
    else:
        raise CheckpointError(
            f"{run_dir / CKPT_SUBDIR}: the checkpoint being read was pruned or replaced {RELIST_TRIES} "
            "times in a row (the run saves faster than a checkpoint can be read); try again, or raise "
            "log.keep_last"
        )
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {run_dir}: " + "; ".join(damaged.values()))
    return None


def open_checkpoint(
    path: str | Path, read: Callable[[Path], T], warn: Callable[[str], None]
) -> tuple[Path, T]:
    """Like :func:`open_intact` for anything :func:`find_checkpoint` takes: a checkpoint directory (or a
    file in one) is verified and read as asked, with no fallback; a run dir falls back."""
    path = Path(path)
    if path.is_file() and path.parent.joinpath("meta.json").is_file():
        path = path.parent
    if path.is_dir() and (path / "meta.json").is_file():
        verify_checkpoint(path)
        return path, read(path)
    for run_dir in (path, path.parent) if path.name == CKPT_SUBDIR else (path,):
        found = open_intact(run_dir, read, warn)
        if found is not None:
            return found
    raise CheckpointError(f"{path}: no complete fasterdit checkpoint found")


def quarantine(ckpt: str | Path) -> Path | None:
    """Rename a damaged checkpoint to ``corrupt-step-*`` (kept for inspection, never used or pruned)."""
    ckpt = Path(ckpt)
    dest = ckpt.with_name(_CORRUPT + ckpt.name)
    if dest.exists():
        return None
    try:
        os.replace(ckpt, dest)
    except OSError:
        return None
    return dest


def nonfinite_names(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity.

    One fused max-abs reduction per device and one copy to the host per device, not per tensor: cheap
    enough for every save. Why per device: the tensors need not share one (non-fused AdamW keeps its step
    counts on the CPU beside CUDA weights), and a reduction or a stack takes tensors of one device only.
    """
    items = [(k, v.detach()) for k, v in named.items() if v.is_floating_point() and v.numel() > 0]
    tensors = [v for _, v in items]
    bad = torch.zeros(len(tensors), dtype=torch.bool)
    for positions in by_device(tensors).values():
        bad[positions] = nonfinite_flags([tensors[i] for i in positions]).cpu()
    return [items[i][0] for i in bad.nonzero().flatten().tolist()]


def by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[int]]:
    """The positions of ``tensors`` on each device, in order: the groups that can be reduced together."""
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.device, []).append(i)
    return groups


def nonfinite_flags(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One bool per (non-empty) tensor, on the tensors' one device: True where it holds a NaN or an
    infinity. Each max-abs is tested in its own dtype (a finite float64 beyond float32's range is finite)."""
    maxabs = torch._foreach_norm(tensors, float("inf"))
    return ~torch.stack([torch.isfinite(m) for m in maxabs])


# ----------------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------------


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what a checkpoint of it will take, give or take headers)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _checkpoint_bytes(ckpt: Path | None) -> int:
    if ckpt is None:
        return 0
    try:
        return sum(int(v) for v in read_meta(ckpt)["files"].values())
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError):
        return 0


def _device_of(path: Path) -> str:
    """The filesystem holding ``path``, as "SOURCE (mounted at MOUNT)" where /proc/self/mounts says."""
    mount = path.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                return f"{fields[0]} (mounted at {mount})"
    return str(mount)


def _no_space(root: Path, target: Path | str, needed: int, free: int) -> str:
    return (
        f"no space left on {_device_of(root)} writing {target}: "
        f"{needed / _MB:.1f} MB needed, {free / _MB:.1f} MB free"
    )


def _check_space(root: Path, final: Path, needed: int) -> str | None:
    """A message when the filesystem cannot hold another checkpoint of ``needed`` bytes, else None."""
    free = shutil.disk_usage(root).free
    if free < needed + _SPACE_MARGIN:
        return _no_space(root, final, needed + _SPACE_MARGIN, free)
    return None


def _write_files(
    tmp: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    train_state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Every file of a checkpoint into ``tmp``, fsynced, with meta.json (sizes + SHA-256) last.

    Why this order (EMA weights, raw weights, training state): a stop checkpoint races the SIGKILL that
    follows SIGTERM, and the files written first are the ones sampling needs. A write killed at any point
    leaves ``tmp`` without its meta.json, never renamed to a checkpoint name: it is not a checkpoint
    (nothing reads a ``.tmp-*`` directory) and the next start removes it. Each file's SHA-256 is taken
    while it is written (:mod:`fasterdit.runtime.hashed`), not by reading it back.
    """
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sums: dict[str, str] = {}
    if ema_state is not None:
        sums["ema.safetensors"] = write_tensors(ema_state, tmp / "ema.safetensors")
    sums["model.safetensors"] = write_tensors(model_state, tmp / "model.safetensors")
    sums["state.pt"] = write_torch(train_state, tmp / "state.pt")
    names = sorted(sums)
    full_meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "files": {n: (tmp / n).stat().st_size for n in names},
        "sha256": {n: sums[n] for n in names},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
    }
    # the digest of what a reader will parse back (tuples become lists, keys strings, tensors lists)
    full_meta = json.loads(json.dumps(full_meta, default=_json_default))
    full_meta["meta_sha256"] = meta_digest(full_meta)
    with open(tmp / "meta.json", "w") as f:
        json.dump(full_meta, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``; an existing ``final`` (a checkpoint of the same step
    from an earlier attempt, possibly damaged) goes to the trash first: the newest state wins."""
    if final.exists():
        old = final.with_name(f"{_TRASH}{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int | None = 3,
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, point ``latest`` at it, prune to ``keep_last``
    (``None``: prune nothing).

    Before writing, the free space is checked against the size of the previous checkpoint (or of the
    state, for the first): a full disk is reported before a byte is written. On any write error (disk
    full, permission, I/O) the partial files are removed, the previous checkpoint and pointer are left
    as they were, and a CheckpointError names the file, the cause and what is intact.
    """
    root = Path(run_dir) / CKPT_SUBDIR
    name = f"{_PREFIX}{int(step):09d}"
    final = root / name
    previous = latest_checkpoint(run_dir)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    needed = max(_checkpoint_bytes(previous), _tensor_bytes([model_state, ema_state, train_state]))
    tmp = root / f"{_TMP}{name}-{os.getpid()}"
    moved = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        full = _check_space(root, final, needed)
        if full is not None:
            raise CheckpointError(f"{full}; {kept}. Free disk space and resume.")
        _write_files(tmp, step, model_state, ema_state, train_state, meta)
        _install(tmp, final)
        moved = True
        fsync_dir(root)
        atomic_write_text(root / LATEST, name + "\n")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:
            shutil.rmtree(final, ignore_errors=True)
            _point_latest(root, previous.name if previous else None, None, quiet=True)
        raise CheckpointError(
            f"{_write_error(err, root, tmp, final, needed)}; {kept}. "
            "Free disk space or fix permissions and resume."
        ) from err
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last, protect=final)
    return final


def _write_error(err: OSError, root: Path, tmp: Path, final: Path, needed: int) -> str:
    """The message of a failed write: "no space left ..." when the disk is the cause (by errno, or, for
    writers that lose the errno, because the free space left is below what the checkpoint needs).
    A file of the (already removed) temp directory is named by its place in the final checkpoint."""
    target = Path(err.filename) if err.filename else final
    if target.parent == tmp:
        target = final / target.name
    free = shutil.disk_usage(root).free if root.is_dir() else 0
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or (err.errno is None and free < needed + _SPACE_MARGIN):
        return _no_space(root, target, needed + _SPACE_MARGIN, free)
    return f"could not write checkpoint {final} ({err.strerror or err}: {target})"


def _point_latest(root: Path, name: str | None, previous: Path | None, quiet: bool = False) -> None:
    if name is None:
        return
    try:
        atomic_write_text(root / LATEST, name + "\n")
    except OSError:
        if not quiet:
            raise


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never ``protect``), each renamed
    to a trash name before it is deleted."""
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[: max(0, len(ckpts) - keep_last)]
    removed = []
    for p in doomed:
        if protect is not None and p.resolve() == Path(protect).resolve():
            continue
        if _remove_tree(p):
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


#: what torch.load raises on a damaged or foreign state.pt (weights_only refusals are UnpicklingError)
_STATE_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError,
                 IndexError, zipfile.BadZipFile, UnicodeDecodeError, OverflowError)  # fmt: skip


def load_train_state(ckpt: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The full training state (optimizer, RNGs, data position...) of a checkpoint directory."""
    path = Path(ckpt) / "state.pt"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except _STATE_ERRORS as err:
        raise CheckpointError(
            f"{path}: cannot read the training state ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training state (a {type(state).__name__})")
    return state


def load_tensors(
    ckpt: str | Path, which: str = "ema", device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """``which`` = "ema" or "model": the weights of a checkpoint directory (safetensors)."""
    path = Path(ckpt) / f"{which}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({which} weights not saved in this checkpoint)")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, OverflowError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
