"""This rank's batch of every step of a memory-mapped (prepared) set, read ahead in a background thread.

Why read ahead: a step of a prepared set reads its rank's rows from the shards at random (DiT-XL/2, batch
256 on 8 GPUs: 32 rows of 2 × 8 KB per rank and step, plus the latent draw). The page cache hides that
once the set is warm, but not on a cold network filesystem in the first epoch, where each read is a round
trip; done in the training thread it stalls the GPU. ``data.prefetch: N`` reads the next N steps' batches
in one background thread while the current step runs (numpy's copies and torch's CPU ops release the GIL),
into pinned memory on CUDA so that the copy to the device does not block.

Why it cannot change training: a step's batch is a pure function of (step, data position) -- the indices
come from the seeded :class:`~fasterdit.train.data_order.IndexStream`, the latent draw from a generator
seeded by (seed, step, rank) -- so reading it early, in another thread, reads the same rows and draws the
same numbers. The thread reads the keys that follow the one just asked for (step + 1, position + batch);
a request for any other key (a resume, a rollback that moves the data position) waits for the reads in
flight and is read at once in the calling thread, so only one thread ever reads the source.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from fasterdit.data.prepared import PreparedDataset
from fasterdit.data.source import BatchSource
from fasterdit.train.data_order import LATENT_TAG, IndexStream, derive_seed

__all__ = ["Batch", "BatchKey", "Prefetcher", "RankBatches"]

#: one rank's batch: data, labels and the stored REPA features (None without them)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]

#: the name of the reading thread (``threading.enumerate()`` shows it while a run reads ahead)
THREAD_NAME = "fasterdit-prefetch"

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class BatchKey:
    """What a step's batch is a function of."""

    step: int  # 0-based optimizer step
    position: int  # the data position (images_seen) the step's batch starts at


class Prefetcher(Generic[K, V]):
    """``get(key)`` is ``read(key)``; the ``depth`` keys that follow it (``after``) are read in a thread.

    ``depth`` 0 reads in the calling thread and starts no thread. The thread is started at the first
    ``get`` and ended by :meth:`close` (which waits for a read in flight), so a caller that closes in a
    ``finally`` leaves no thread behind, whatever stopped it. An error of a read is raised by the ``get``
    of its key; one of a read that is never asked for is dropped with it.
    """

    def __init__(
        self,
        read: Callable[[K], V],
        after: Callable[[K], K],
        depth: int,
        init: Callable[[], None] | None = None,
    ):
        self._read, self._after, self._depth, self._init = read, after, depth, init
        self._pool: cf.ThreadPoolExecutor | None = None
        self._ahead: deque[tuple[K, cf.Future[V]]] = deque()  # the keys after the last one asked for

    def get(self, key: K) -> V:
        if self._depth == 0:
            return self._read(key)
        if self._ahead and self._ahead[0][0] == key:
            future = self._ahead.popleft()[1]
            self._fill(key)
            return future.result()
        self._drop()  # another key: no read in flight while this thread reads
        value = self._read(key)
        self._fill(key)
        return value

    def _fill(self, key: K) -> None:
        """Queue the reads of the ``depth`` keys after ``key`` that are not queued yet."""
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix=THREAD_NAME, initializer=self._init)
        for i in range(self._depth):
            key = self._after(key)
            if i >= len(self._ahead):
                self._ahead.append((key, self._pool.submit(self._read, key)))

    def _drop(self) -> None:
        """Forget the queued reads: cancel those not started, wait for the one in flight."""
        running = [f for _, f in self._ahead if not f.cancel()]
        self._ahead.clear()
        cf.wait(running)

    def close(self) -> None:
        """End the thread (after the read in flight, if any); a later ``get`` starts a new one."""
        self._drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class RankBatches:
    """This rank's share of every step's batch of a memory-mapped set, on the CPU (pinned for CUDA).

    ``get(step, position)`` is what the training step copies to the device; ``read`` is the same batch
    read in the calling thread (what ``data.prefetch: 0`` does, and what the thread runs). With
    ``features`` (a run with REPA's alignment on a set that stores its features) the batch carries them.
    """

    def __init__(
        self,
        source: BatchSource,
        stream: IndexStream,
        *,
        seed: int,
        rank: int,
        batch_size: int,
        share: slice,
        device: torch.device,
        depth: int,
        features: bool = False,
    ):
        if features and not isinstance(source, PreparedDataset):
            raise TypeError("stored features are read from a prepared set")
        self.features = features
        self.source, self.stream, self.seed, self.rank = source, stream, seed, rank
        self.batch_size, self.share, self.device = batch_size, share, device
        self._prefetch: Prefetcher[BatchKey, Batch] = Prefetcher(
            self.read, self._next, depth, init=self._bind_device
        )

    def read(self, key: BatchKey) -> Batch:
        """The rows of the global batch at ``key.position`` in this rank's share, with the latents drawn
        from a CPU generator seeded by (seed, step, rank) (and the stored features, or None)."""
        idx = self.stream.take(key.position, self.batch_size)[self.share]
        g = torch.Generator().manual_seed(derive_seed(self.seed, LATENT_TAG, key.step, self.rank))
        f = None
        if self.features:
            assert isinstance(self.source, PreparedDataset)
            x, y, f = self.source.get_batch_features(idx, g)
        else:
            x, y = self.source.get_batch(idx, g)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
            f = None if f is None else f.pin_memory()
        return x, y, f

    def get(self, step: int, position: int) -> Batch:
        return self._prefetch.get(BatchKey(step, position))

    def close(self) -> None:
        self._prefetch.close()

    def _next(self, key: BatchKey) -> BatchKey:
        return BatchKey(key.step + 1, key.position + self.batch_size)

    def _bind_device(self) -> None:
        """Make the thread's CUDA device this rank's. Why: CUDA's current device is per thread, and pinning
        memory from a thread still on device 0 would open a context on GPU 0 in every rank's process."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
