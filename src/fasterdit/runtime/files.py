"""Durable atomic file writes: a reader sees the old content or the new one, never a mix, whatever kills
the process (SIGKILL, power loss, a full disk).

Why the dance (hidden temporary file next to the target -> fsync the file -> rename -> fsync the
directory): ``os.replace`` is atomic only within one directory, the file's fsync makes its bytes durable
before the rename publishes them, and the directory's fsync makes the rename itself durable. The
temporary name is hidden (``.tmp-<name>-<pid>``) so that listings of shards, checkpoints or run files
never see it; an interrupted write leaves it behind for the owner's cleanup to remove.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["TMP_PREFIX", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file", "temp_path"]

#: names of temporary files and directories start with this (hidden, and cleaned up by their owners)
TMP_PREFIX = ".tmp-"


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write_bytes` writes ``path`` before renaming it: hidden, beside it, per process."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")


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
    """Write ``data`` to ``path`` atomically and durably; a failed write removes its temporary file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
