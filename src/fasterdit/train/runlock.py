"""An exclusive lock on a run directory: one training job writes a run dir at a time.

Why ``fcntl.flock`` on a lock file: the kernel releases it when the holder's file descriptor closes,
which includes ``kill -9``, an OOM kill and a node reboot of a local filesystem, so a crashed run never
leaves a stale lock to delete by hand. A lock file that exists but is not locked is free. The file
holds the holder's pid, host and start time so that the refused process can name them. On NFS, Linux
maps ``flock`` onto NFS byte-range locks, which hold across nodes (NFSv4, or v3 with lockd).

Under ``torchrun`` rank 0 takes the lock for the whole job (the trainer shares the outcome with the
other ranks), so ranks of one job never lock each other out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fasterdit.errors import UserError
from fasterdit.runtime.distributed import broadcast_object

__all__ = ["LOCK_NAME", "RunDirLocked", "RunLock", "hold_run_lock"]

LOCK_NAME = ".fasterdit.lock"


class RunDirLocked(UserError):
    """Another process holds the run directory; the message names its pid and host."""


class RunLock:
    """``with RunLock(run_dir):`` or ``lock = RunLock(run_dir).acquire(); ...; lock.release()``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock without waiting, or raise RunDirLocked naming the holder."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot create the run directory lock {self.path} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirLocked(
                f"{self.run_dir} is in use by another fasterdit process ({holder}); nothing was changed. "
                "Wait for it to finish, stop it, or choose another --run-dir"
            ) from None
        except OSError as err:
            os.close(fd)
            raise UserError(f"cannot lock {self.path} ({err.strerror})") from None
        _write_holder(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock (the file stays: deleting it would race with a process that just opened it)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_lock(run_dir: str | Path, is_main: bool) -> Iterator[None]:
    """A job's lock: rank 0 holds it while inside; every rank learns whether it got it (and raises if not)."""
    lock, err = None, None
    if is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except UserError as e:
            err = e
    msg = broadcast_object(None if err is None else str(err))
    if err is not None:
        raise err
    if msg is not None:
        raise RunDirLocked(msg)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> str:
    """ "pid P on host H since T" from the lock file (best effort: the holder may be mid-write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "pid unknown"
    return f"pid {info.get('pid')} on host {info.get('host', '?')}, since {info.get('since', '?')}"
