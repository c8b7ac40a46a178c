"""Checks of a training config that need the data, the recipe or the machine, run before any work.

Why a module of its own: each of these used to surface late -- an unknown sampler at the first sample
grid, a guidance scale without a null class as an IndexError, a bad compile backend as a traceback in
the first step, a batch too large as an OOM kill after ``config.yaml`` was written, a resume with
another seed or recipe silently accepted. Every check raises ConfigError naming the field.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch

from fasterdit.diffusion.recipe import Recipe
from fasterdit.diffusion.sampling import SAMPLERS
from fasterdit.errors import ConfigError
from fasterdit.models.cost import estimate_cost
from fasterdit.run.config import RunConfig

__all__ = [
    "available_memory",
    "check_compile_backend",
    "check_guidance",
    "check_memory",
    "check_samplers",
    "recipe_differences",
]

_GIB = 2**30


def check_samplers(cfg: RunConfig) -> None:
    """``sample.sampler`` and ``eval.sampler`` must name a sampler (null = the recipe's own)."""
    for field, name in (("sample.sampler", cfg.sample.sampler), ("eval.sampler", cfg.eval.sampler)):
        if name is not None and name not in SAMPLERS:
            raise ConfigError(field, f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def check_guidance(cfg: RunConfig, num_classes: int) -> None:
    """A guidance scale other than 1 needs the null class, i.e. labels and label dropout."""
    guided = num_classes > 0 and cfg.model.class_dropout_prob > 0
    for field, scale in (("sample.cfg_scale", cfg.sample.cfg_scale), ("eval.cfg_scale", cfg.eval.cfg_scale)):
        if scale is not None and scale != 1.0 and not guided:
            why = "the data has no labels" if num_classes <= 0 else "model.class_dropout_prob is 0"
            raise ConfigError(
                field,
                f"classifier-free guidance ({scale}) needs a model trained with label dropout, but {why}; "
                "use 1, or set model.class_dropout_prob > 0 (e.g. 0.1)",
            )


def check_compile_backend(cfg: RunConfig) -> None:
    """With ``train.compile``, the backend must be one torch.compile knows (checked before the first step)."""
    if not cfg.train.compile:
        return
    known = torch.compiler.list_backends(exclude_tags=())
    if cfg.train.compile_backend not in known:
        raise ConfigError(
            "train.compile_backend",
            f"unknown torch.compile backend {cfg.train.compile_backend!r}; this torch has {', '.join(known)}",
        )


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for this process on ``device`` and a description: free GPU memory, or the host's
    available RAM shared by the local ranks of a CPU job."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), torch.cuda.get_device_name(device)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    avail = _meminfo_available()
    return avail // local, "available RAM" + (f" per process, {local} on this host" if local > 1 else "")


def _meminfo_available() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: RunConfig, model_kwargs: dict[str, Any], dist_info) -> None:
    """Refuse a config whose training step cannot fit in memory, by the analytic cost model.

    The estimate (fasterdit.models.cost: fp32 state + EMA + AdamW, activations of one micro-batch per
    rank) is compared with what the device has free now; only a clear overshoot is refused, so the
    model's approximations never block a config that fits. ``model_kwargs``: the DiT's
    ``create_model`` arguments (``build.model_kwargs``).
    """
    kw = model_kwargs
    t = cfg.train
    device = dist_info.device
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    est = estimate_cost(
        cfg.model.name,
        kw["input_size"],
        kw["in_channels"],
        t.batch_size // t.grad_accum,
        num_classes=kw["num_classes"],
        learn_sigma=kw["learn_sigma"],
        dtype="bf16" if bf16 else "fp32",
        grad_checkpointing=cfg.model.grad_checkpointing,
        num_gpus=dist_info.world_size,
    )
    needed = est.memory_bytes_per_gpu
    free, where = available_memory(device)
    if needed > free:
        per_rank = t.batch_size // (t.grad_accum * dist_info.world_size)
        raise ConfigError(
            "train.batch_size",
            f"a training step needs about {needed / _GIB:.1f} GiB per process by the cost model "
            f"({est.state_bytes / _GIB:.2f} GiB model state + activations of {per_rank} images per "
            f"micro-batch), but only {free / _GIB:.1f} GiB is free ({where}); lower train.batch_size, raise "
            "train.grad_accum, set model.grad_checkpointing=true, or use more GPUs",
        )


def recipe_differences(old: dict[str, Any] | None, recipe: Recipe) -> list[str]:
    """``"key: old then, new now"`` for every recipe field a checkpoint's recipe and this one differ in.

    Both sides go through the current Recipe code (so fields added since are filled the same way);
    floats compare with a relative tolerance of 1e-9 (data statistics summed with another thread count
    differ in the last bits).
    """
    if old is None:
        return []

    with contextlib.suppress(ConfigError, KeyError, TypeError, ValueError):  # unreadable: compare raw
        old = Recipe.from_dict(old).to_dict()
    return _diff(old, recipe.to_dict(), "")


def _diff(a: Any, b: Any, key: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{key}[{i}]")]
    if _same(a, b):
        return []
    return [f"{key}: {a!r} then, {b!r} now"]


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
