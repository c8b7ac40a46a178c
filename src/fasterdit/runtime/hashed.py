"""Files written with their SHA-256 taken on the way to the disk: tensors as safetensors, objects with
``torch.save``; each fsynced, each returning its hex digest.

Why not hash the file afterwards: that reads the whole file a second time, and a checkpoint is written
when time is short -- a stop checkpoint (SIGTERM) races the SIGKILL that torchrun sends 30 s later, and a
DiT-XL/2 training state is 10.8 GB. Here each chunk is handed to a second thread as it is written; SHA-256
(about 1.5 GB/s per core) and file writes both release the GIL, so where a core is free the digest
overlaps the write (and, for tensors, the fsync) instead of adding to them. Nothing is copied for it and
nothing is read back: at most ``QUEUED`` chunks wait, as views of memory that is already there.

Why safetensors is written here and not by ``safetensors.save_file``: ``save_file`` writes in one call,
and ``safetensors.torch.save`` would build the whole file in memory first (one more copy of the weights).
The format is a little-endian u64 header length, a JSON header (``{name: {dtype, shape, data_offsets}}``,
space-padded to 8 bytes), then the tensors' bytes; the tensors are written straight from their memory, in
safetensors' own order (larger dtypes first, then by name), so for the checkpoints' fp32 weights the bytes
are those ``save_file`` writes. Files are created by ``open()``, so they get the mode the umask gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["CHUNK", "QUEUED", "HashingFile", "write_tensors", "write_torch"]

#: bytes handed to the file and the hashing thread at a time, and how many chunks may wait to be hashed
CHUNK = 64 * 2**20
QUEUED = 8
#: smaller writes of ``torch.save`` (headers, small tensors) are hashed in the writing thread
HANDOFF = 2**20
#: safetensors' dtype names
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


class _Hasher:
    """SHA-256 of a byte stream, computed in a second thread while the stream is written (in order: one
    thread takes the chunks from a bounded queue)."""

    def __init__(self, queued: int) -> None:
        self._sha = hashlib.sha256()
        self._todo: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=queued)
        self._thread = threading.Thread(target=self._run, name="fasterdit-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (chunk := self._todo.get()) is not None:
            self._sha.update(chunk)
            self._todo.task_done()
        self._todo.task_done()

    def update(self, data: bytes | memoryview) -> None:
        """Hash ``data`` after what was given before; it must not change until :meth:`wait` returns."""
        self._todo.put(data)

    def wait(self) -> None:
        """Return when everything given so far is hashed."""
        self._todo.join()

    def now(self, data: bytes | memoryview) -> None:
        """Hash ``data`` in the calling thread, after what was given before. Why: a thread hand-off costs
        more than hashing a few kilobytes, and on a busy machine the woken thread may wait for a core."""
        self.wait()
        self._sha.update(data)

    def finish(self) -> str:
        """Wait for the hash of everything given so far; its hex digest. Ends the thread (once)."""
        if self._digest is None:
            self._todo.put(None)
            self._thread.join()
            self._digest = self._sha.hexdigest()
        return self._digest


class HashingFile:
    """A new binary file that hashes what is written to it and remembers the OSError of a failed write.

    Nothing is copied for the hash. ``write(data)`` hashes ``data`` while the kernel copies it into the
    file and returns when both are done, since ``torch.save`` reuses or frees its buffers once ``write``
    returns; :meth:`write_stable`, for memory that stays unchanged until :meth:`commit`, does not wait, so
    a chunk is hashed while the next one is written, and the last ones during the fsync. Why remember the
    error: ``torch.save`` reports a failed write (e.g. a full disk) as a RuntimeError without the errno;
    keeping it lets the caller say "no space left". Use as ``with HashingFile.create(path) as f: ...;
    digest = f.commit()``: the hashing thread ends on every way out of the block.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._hasher = _Hasher(QUEUED)
        self.error: OSError | None = None

    @classmethod
    @contextlib.contextmanager
    def create(cls, path: Path) -> Iterator[HashingFile]:
        with open(path, "wb") as f:
            out = cls(f)
            try:
                yield out
            finally:
                out._hasher.finish()  # after commit: the digest is kept, nothing waits

    def write(self, data: bytes | memoryview) -> int:
        if memoryview(data).nbytes < HANDOFF:
            n = self._write(data)
            self._hasher.now(data)
            return n
        self._hasher.update(data)
        try:
            return self._write(data)
        finally:
            self._hasher.wait()  # the caller may change or free ``data`` once this returns

    def write_stable(self, data: memoryview) -> None:
        """Write ``data``, which stays unchanged until :meth:`commit`, in chunks, without copying it."""
        for start in range(0, data.nbytes, CHUNK):
            chunk = data[start : start + CHUNK]
            self._hasher.update(chunk)
            self._write(chunk)

    def _write(self, data: bytes | memoryview) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()

    def commit(self) -> str:
        """fsync the file, then wait for the hash (which ran during the writes and the fsync): its digest."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._hasher.finish()


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _safetensors_header(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[str]]:
    """The length-prefixed, space-padded JSON header of a safetensors file; the names in data order."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise OSError(None, f"safetensors: no dtype name for {name!r} ({t.dtype})")
        size = t.numel() * t.element_size()
        span = [offset, offset + size]
        entries[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": span}
        offset += size
    head = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head, order


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """``tensors`` as a safetensors file at ``path`` (moved to the CPU first), fsynced; its SHA-256."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    head, order = _safetensors_header(flat)
    with HashingFile.create(path) as f:
        f.write(head)
        for name in order:
            f.write_stable(_bytes_of(flat[name]))
        return f.commit()


def write_torch(obj: Any, path: Path) -> str:
    """``torch.save(obj)`` to ``path``, fsynced; its SHA-256. A failed write is an OSError naming the file."""
    try:
        with HashingFile.create(path) as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:
                if f.error is not None:
                    raise f.error from err
                raise OSError(None, f"torch.save: {err}", str(path)) from err
            return f.commit()
    except OSError as err:
        if err.filename is None:  # a buffered write's error carries no file name
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
