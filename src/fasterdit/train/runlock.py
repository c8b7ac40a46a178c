"""An exclusive lock on a run directory: one training job writes a run dir at a time.

The lock is :func:`fasterdit.runtime.locks.lock_file` (``fcntl.flock``, which the kernel drops with the
holder, ``kill -9`` included, so a crashed run never leaves a stale lock; the file names the holder).

Under ``torchrun`` rank 0 takes the lock for the whole job (the trainer shares the outcome with the
other ranks), so ranks of one job never lock each other out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from fasterdit.errors import UserError
from fasterdit.runtime.distributed import broadcast_object
from fasterdit.runtime.locks import Locked, lock_file

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
            self._fd = lock_file(self.path, "the run directory lock")
        except Locked as err:
            raise RunDirLocked(
                f"{self.run_dir} is in use by another fasterdit process ({err.holder}); nothing was changed. "
                "Wait for it to finish, stop it, or choose another --run-dir"
            ) from None
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
