"""Process-group setup for single-process and ``torchrun`` runs (one or many nodes), the device of this
rank, and the few collectives the project uses.

Why read torchrun's environment and nothing else: ``torchrun --nnodes N --node_rank R
--rdzv_endpoint HOST:PORT`` (or ``--master_addr``) already exports RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT on every node, so multi-node needs no flags of our own. By default the
backend follows the device: NCCL for CUDA tensors, gloo for CPU tensors.

Callers state their policy through parameters rather than a second implementation: training joins with
the default backend and timeout (:func:`init_distributed`); ``fasterdit prepare``, whose collectives are
small CPU objects and whose ranks may wait hours for each other, joins with gloo and a long timeout
(:func:`join_process_group`), runs its collectives on :func:`object_group`, and destroys the process group
only when :attr:`DistInfo.owns_group` says it created it.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fasterdit.errors import ConfigError, UserError

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "gather_objects",
    "init_distributed",
    "join_process_group",
    "object_group",
    "resolve_device",
    "torchrun_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (single process)
    owns_group: bool = False  # True: this process created the default group (and should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: an existing process group's, else torchrun's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return rank, world, local_rank


def resolve_device(spec: str, local_rank: int = 0, *, field: str = "train.device") -> torch.device:
    """ "auto" -> this rank's GPU if CUDA is available, else CPU; "cuda" -> cuda:<local_rank>.

    ``field`` names the setting in the error (``train.device`` for runs, ``device`` for prepare)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(field, f"{spec!r} requested but CUDA is not available on this machine")
        return torch.device(spec if ":" in spec else f"cuda:{local_rank}")
    if spec != "cpu":
        raise ConfigError(field, f"must be auto, cpu or cuda, got {spec!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes on this rank's device (backend following the device),
    or return a single-process DistInfo.

    Safe to call when a group already exists (tests that spawn workers initialise it themselves).
    """
    _, _, local_rank = torchrun_ranks()
    return join_process_group(resolve_device(device, local_rank), timedelta(minutes=timeout_minutes))


def join_process_group(device: torch.device, timeout: timedelta, backend: str | None = None) -> DistInfo:
    """Make ``device`` this process's device and join torchrun's process group, creating it with
    ``backend`` (None: NCCL for CUDA, gloo for CPU) and ``timeout`` unless one exists already."""
    rank, world, local_rank = torchrun_ranks()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, device, None)
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return DistInfo(rank, world, local_rank, device, dist.get_backend())
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    _import_group_defaults()
    kwargs: dict[str, Any] = {"timeout": timeout}
    if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device  # bind the NCCL communicator to this rank's GPU (torch >= 2.3)
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return DistInfo(rank, world, local_rank, device, backend, owns_group=True)


def _import_group_defaults() -> None:
    """Import, before the default group exists, the torch modules that take ``group.WORLD`` as the
    default value of an argument when they are imported (``torch.distributed.nn.functional``, FSDP's
    sharded grad scaler; ``torch._dynamo`` imports both, and the first module built under a device context
    imports ``torch._dynamo``).

    Why: imported after the group is made, they hold it past ``destroy_process_group``, so gloo's worker
    threads outlive the program; one of them then frees its last collective's tensors during interpreter
    shutdown and aborts the rank ("terminate called without an active exception", SIGABRT) after all its
    work is done, and torchrun reports the job as failed (4 of 55 two-process ``eval`` runs on a loaded
    2-core machine; pytorch/pytorch#190489). Imported first, they hold ``None``."""
    import torch._dynamo  # noqa: F401


def object_group(info: DistInfo, timeout: timedelta) -> Any:
    """The group to run collectives of small CPU objects on: ``None`` (the default group) when that is
    gloo or there is none, else a new gloo group with ``timeout``. Why: object collectives on an NCCL
    group go through the GPU and its (shorter) watchdog, for a few bytes."""
    if not info.distributed or info.backend == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=timeout)


def cleanup(synchronize: bool = False) -> None:
    """Leave the process group. ``synchronize`` (a normal exit): wait for every rank first, so that no
    rank tears down its connections while a peer is still in a collective. Not on an error path: a failed
    peer may never arrive at the barrier. (A rank that aborted at exit after a clean barrier was a group
    kept alive past this call: see :func:`_import_group_defaults`.)"""
    if dist.is_available() and dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (asynchronous on the device; no host sync)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def barrier(group: Any = None) -> None:
    """Wait for every rank (of ``group``; None: the default group)."""
    if _active():
        dist.barrier(group=group)


def broadcast_object(obj, src: int = 0, group: Any = None):
    """Rank ``src``'s Python object on every rank (e.g. a decision only rank 0 can make)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def gather_objects(obj, group: Any = None) -> list:
    """Every rank's object, in rank order, on every rank (small objects only: RNG states, shard lists)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out
