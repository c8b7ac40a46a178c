"""Process-group setup for single-process and ``torchrun`` runs (one or many nodes).

Why read torchrun's environment and nothing else: ``torchrun --nnodes N --node_rank R
--rdzv_endpoint HOST:PORT`` (or ``--master_addr``) already exports RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT on every node, so multi-node needs no flags of our own. The backend
follows the device: NCCL for CUDA tensors, gloo for CPU tensors.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from fasterdit.errors import ConfigError

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "gather_objects",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this rank's GPU if CUDA is available, else CPU; "cuda" -> cuda:<local_rank>."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device", f"{spec!r} requested but CUDA is not available on this machine")
        return torch.device(spec if ":" in spec else f"cuda:{local_rank}")
    if spec != "cpu":
        raise ConfigError("train.device", f"must be auto, cpu or cuda, got {spec!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes, or return a single-process DistInfo.

    Safe to call when a group already exists (tests that spawn workers initialise it themselves).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"timeout": timedelta(minutes=timeout_minutes)}
        if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = dev  # bind the NCCL communicator to this rank's GPU (torch >= 2.3)
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    else:
        backend = dist.get_backend()
    return DistInfo(rank, world, local_rank, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
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


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (e.g. a decision only rank 0 can make)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank (small objects only: RNG states)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
