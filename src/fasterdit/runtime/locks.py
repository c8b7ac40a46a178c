"""Exclusive locks on files, shared by a run directory's lock (``train/runlock.py``) and a sampling job's
lock (``generate/job.py``).

Why ``fcntl.flock``: the kernel releases it when the holder's file descriptor closes, which includes
``kill -9``, an OOM kill and a node reboot of a local filesystem, so a crashed process never leaves a stale
lock to delete by hand; a lock file that exists but is not locked is free. The file holds the holder's pid,
host and start time so that a refused process can name them. On NFS, Linux maps ``flock`` onto NFS
byte-range locks, which hold across nodes (NFSv4, or v3 with lockd).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from fasterdit.errors import UserError

__all__ = ["Locked", "lock_file"]


class Locked(UserError):
    """Another process holds the lock; ``holder`` names it ("pid P on host H, since T")."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is locked by {holder}")
        self.holder = holder


def lock_file(path: Path, what: str) -> int:
    """An open descriptor holding an exclusive ``flock`` on ``path`` (created with the mode the umask asks
    for), with this process written in as the holder; Locked when another process holds it, UserError
    (naming ``what``) when the file cannot be created or locked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"cannot create {what} {path} ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise Locked(path, holder) from None
    except OSError as err:
        os.close(fd)
        raise UserError(f"cannot lock {what} {path} ({err.strerror or err})") from None
    _write_holder(fd)
    return fd


def _write_holder(fd: int) -> None:
    """Who holds the lock (pid, host, since), for the message of a process that is refused."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> str:
    """ "pid P on host H, since T" from the lock file (best effort: the holder may be mid-write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "pid unknown"
    return f"pid {info.get('pid')} on host {info.get('host', '?')}, since {info.get('since', '?')}"
