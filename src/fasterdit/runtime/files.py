"""Durable atomic file writes: a reader sees the old content or the new one, never a mix, whatever kills
the process (SIGKILL, power loss, a full disk).

Why the dance (hidden temporary file next to the target -> fsync the file -> rename -> fsync the
directory): ``os.replace`` is atomic only within one directory, the file's fsync makes its bytes durable
before the rename publishes them, and the directory's fsync makes the rename itself durable. The
temporary name is hidden (``.tmp-<name>-<pid>``) so that listings of shards, checkpoints or run files
never see it; an interrupted write leaves it behind for the owner's cleanup to remove
(:func:`remove_temps`, which the trainer runs on its run directory while it holds the run's lock).

Why every written file gets the mode the umask asks for (:func:`follow_umask`): writers that create a
temporary file themselves (``safetensors.save_file``, ``tempfile.mkstemp``) create it 0600, and a rename
keeps that mode, so on a shared filesystem no other account could read a checkpoint that a plain
``open()`` would have made 0644 (umask 022) or 0664 (umask 002).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = [
    "TMP_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "follow_umask",
    "fsync_dir",
    "fsync_file",
    "remove_path",
    "remove_temps",
    "temp_path",
]

#: names of temporary files and directories start with this (hidden, and cleaned up by their owners)
TMP_PREFIX = ".tmp-"


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write_bytes` writes ``path`` before renaming it: hidden, beside it, per process."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")


def current_umask() -> int:
    """This process's umask, read without changing it.

    Why not ``os.umask(0)`` and back: between the two calls another thread's new file would get mode
    0666. Linux (4.7+) shows the umask in ``/proc/self/status``; elsewhere the set-and-restore is the
    only way to read it.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, mode: int = 0o666) -> None:
    """Give a file the permissions ``open()`` would have given it: ``mode`` minus the umask."""
    os.chmod(path, mode & ~current_umask())


def remove_temps(directory: Path) -> list[Path]:
    """Delete the ``.tmp-*`` files and directories in ``directory`` (not below it); the removed paths.

    Only for a directory nobody else writes now (a run directory while its lock is held): a temporary
    name there is what an interrupted write (``kill -9``, a node lost, a torchrun restart) left behind.
    """
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if not p.name.startswith(TMP_PREFIX):
            continue
        remove_path(p)
        removed.append(p)
    return removed


def remove_path(p: Path) -> None:
    """Remove a leftover file or directory tree (a symlink itself, never its target); gone already is fine."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def fsync_file(path: Path) -> None:
    """Make the content of a closed file durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, with the mode the umask gives a new file (also
    when a stale temporary file of the same name kept another mode); a failed write removes its
    temporary file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
