"""The cases ``gpu_throughput.py`` measures and how: the plans (full on a GPU, quick on a CPU), the cases in
priority order, the official-style step and the real trainer timed on the device, the budget and memory
guards, and one case turned into a report row.

Why a module of its own: this is everything that touches the device; the report module only reads the
rows it returns, and the command line only orders the work.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baseline_dit import BaselineDiT, BaselineTrainer, update_ema

OFFICIAL = ("official-fp32", "official-amp")
TRAINER = ("fasterdit", "dit-recipe", "fasterdit-compiled")


@dataclass(frozen=True)
class Plan:
    """What one run measures: the models, each model's head-to-head batch, the sweep, the step counts,
    the latents' shape, and the compile backend (inductor on GPUs; aot_eager for the CPU smoke run)."""

    models: tuple[str, ...]
    head_batch: dict[str, int]
    sweep: tuple[int, ...]
    warmup: int
    timed: int
    resolution: int
    channels: int
    num_classes: int
    items: int
    compile_backend: str
    compile_s_per_block: float  # budget guess for the first compiled step (cold inductor cache)


FULL = Plan(
    models=("DiT-XL/2", "DiT-B/2"),
    # XL/2's fp32 baseline needs ~110 GiB at 128 (estimate) and ~210 at 256: 64 is sure to fit an H200
    head_batch={"DiT-XL/2": 64, "DiT-B/2": 256},
    sweep=(128, 256, 32, 64),  # in priority order: the large batches first
    warmup=3,
    timed=8,
    resolution=32,
    channels=4,
    num_classes=1000,
    items=2048,
    compile_backend="inductor",
    compile_s_per_block=3.0,
)
QUICK = Plan(
    models=("DiT-Mi/2",),
    head_batch={"DiT-Mi/2": 16},
    sweep=(8, 16),
    warmup=1,
    timed=2,
    resolution=8,
    channels=4,
    num_classes=10,
    items=64,
    compile_backend="aot_eager",
    compile_s_per_block=1.0,
)


class _Done(Exception):
    """Raised from the trainer's after-step hook once the timed steps are in: ends ``run()`` before its
    final checkpoint (several GB for DiT-XL/2, which would dominate the check's time)."""


# ----------------------------------------------------------------------------------------------------
# the cases, in priority order
# ----------------------------------------------------------------------------------------------------


def cases(plan: Plan) -> list[tuple[str, int, str]]:
    """(model, batch, variant): every variant at each model's head batch, then the batch sweep."""
    out = []
    for m in plan.models:
        b = plan.head_batch[m]
        out += [(m, b, v) for v in ("official-fp32", "official-amp", "fasterdit", "fasterdit-compiled")]
    out += [(m, plan.head_batch[m], "dit-recipe") for m in plan.models]
    for m in plan.models:
        for b in plan.sweep:
            if b != plan.head_batch[m]:
                out += [(m, b, v) for v in ("fasterdit", "official-fp32", "official-amp")]
    return out


def learn_sigma(variant: str) -> bool:
    """The official DiT and the ``dit`` recipe learn the variance (2C output channels); fasterdit does not."""
    return variant in (*OFFICIAL, "dit-recipe")


def cost(model: str, batch: int, variant: str, plan: Plan):
    """The cost model's estimate of a case: matmul FLOPs and memory (math attention: the official step)."""
    from fasterdit.models import estimate_cost

    return estimate_cost(
        model,
        plan.resolution,
        plan.channels,
        batch,
        num_classes=plan.num_classes,
        learn_sigma=learn_sigma(variant),
        dtype="fp32" if variant == "official-fp32" else "bf16",
        attention="math" if variant in OFFICIAL else "flash",
    )


# ----------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, reps: int = 10) -> float:
    """Median FLOP/s (2n³ per product) of an n×n·n×n ``torch.matmul`` on random data, after 3 warm-ups."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=c)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def measure_peaks(device: torch.device, quick: bool) -> dict[str, Any]:
    """The ceilings the report divides by: bf16 and fp32 (TF32 on CUDA) matmul rates, measured here."""
    n = 512 if quick else 8192
    if device.type == "cuda":
        return {
            "n": n,
            "bf16_flops": matmul_rate(n, torch.bfloat16, device),
            "fp32_flops": matmul_rate(n, torch.float32, device),
            "reference": "bf16",
        }
    # a CPU has no bf16 tensor cores: its fp32 rate is the ceiling of every variant there
    fp32 = matmul_rate(n, torch.float32, device)
    return {"n": n, "bf16_flops": fp32, "fp32_flops": fp32, "reference": "fp32 (CPU)"}


class OfficialStep(BaselineTrainer):
    """``BaselineTrainer``'s step on the data's device, as ``train.py`` writes it there (indices and t drawn
    on the device, ``loss.item()`` every step), optionally under bf16 autocast."""

    def __init__(self, model, images, labels, batch_size: int, amp: bool):
        super().__init__(model, images, labels, batch_size)
        self.amp = amp

    def step(self) -> float:
        dev = self.images.device
        idx = torch.randint(0, self.images.shape[0], (self.batch_size,), device=dev)
        x, y = self.images[idx], self.labels[idx]
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.diffusion.training_losses(self.model, x, t, y)["loss"].mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        update_ema(self.ema, self.model)
        return loss.item()


def time_official(model: str, batch: int, variant: str, plan: Plan, device: torch.device) -> dict[str, Any]:
    """Seconds per step of the official-style step (after ``plan.warmup`` steps) and of its first step."""
    from fasterdit.models import CONFIGS

    arch = CONFIGS[model]
    with torch.device(device):
        net = BaselineDiT(plan.resolution, arch.patch_size, plan.channels, arch.hidden_size, arch.depth,
                          arch.num_heads, plan.num_classes)  # fmt: skip
    g = torch.Generator(device=device).manual_seed(0)
    shape = (max(2 * batch, 64), plan.channels, plan.resolution, plan.resolution)
    latents = torch.randn(shape, generator=g, device=device)
    labels = torch.randint(0, plan.num_classes, (shape[0],), generator=g, device=device)
    trainer = OfficialStep(net, latents, labels, batch, amp=variant == "official-amp")
    t0 = time.perf_counter()
    trainer.step()
    first = time.perf_counter() - t0
    for _ in range(plan.warmup - 1):
        trainer.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(plan.timed):
        trainer.step()
    sync(device)
    return {"step_s": (time.perf_counter() - t0) / plan.timed, "first_step_s": first}


#: the shipped ImageNet-256 config every trainer case starts from (model and steps are overridden)
CONFIG = "imagenet256"


def trainer_overrides(model: str, batch: int, variant: str, plan: Plan, data: Path, device) -> list[str]:
    """``--set`` overrides of a trainer case: the synthetic latents, no logs, checkpoints or grids."""
    return [
        f"model.name={model}",
        f"recipe={'dit' if variant == 'dit-recipe' else 'fasterdit'}",
        f"data.source={data}",
        f"data.resolution={plan.resolution}",
        f"data.channels={plan.channels}",
        f"data.num_classes={plan.num_classes}",
        f"train.batch_size={batch}",
        f"train.steps={plan.warmup + plan.timed + 1}",
        f"train.device={device.type}",
        f"train.compile={'true' if variant == 'fasterdit-compiled' else 'false'}",
        f"train.compile_backend={plan.compile_backend}",
        "log.log_every=1000000",
        "log.ckpt_every=0",
        "log.sample_every=0",
        "log.tensorboard=false",
        "log.progress=false",
        "eval.every=0",
        "sample.classes=0",
        "sample.per_class=1",
    ]


def time_trainer(
    model: str, batch: int, variant: str, plan: Plan, device: torch.device, data: Path, run_dir: Path
) -> dict[str, Any]:
    """Seconds per step of the real trainer loop between its after-step hooks (synchronised at both ends
    of the timed window), and the time from ``run()`` to the end of the first step (setup + compile)."""
    from fasterdit.run.config import load_config
    from fasterdit.train.trainer import Trainer

    cfg = load_config(CONFIG, trainer_overrides(model, batch, variant, plan, data, device))
    stamps: dict[str, float] = {}
    t_start = time.perf_counter()

    def hook(tr, step: int) -> None:
        if step == 1:
            sync(device)
            stamps["first"] = time.perf_counter() - t_start
        if step == plan.warmup:
            sync(device)
            stamps["t0"] = time.perf_counter()
        if step == plan.warmup + plan.timed:
            sync(device)
            stamps["t1"] = time.perf_counter()
            raise _Done

    trainer = Trainer(cfg, run_dir, install_signal_handlers=False, show_progress=False)
    trainer.after_step_hook = hook
    with contextlib.suppress(_Done):
        trainer.run()
    return {"step_s": (stamps["t1"] - stamps["t0"]) / plan.timed, "first_step_s": stamps["first"]}


def free_memory(device: torch.device, compiled: bool) -> None:
    """Drop everything a case left (compiled graphs hold the model) before the next one is sized."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# one case: guard, measure, derive
# ----------------------------------------------------------------------------------------------------


def case_seconds(model: str, batch: int, variant: str, plan: Plan, peaks: dict[str, Any]) -> float:
    """A generous guess of a case's wall time, for the budget guard: setup + steps at 30% of peak, plus
    the cold compile of ``fasterdit-compiled``."""
    from fasterdit.models import CONFIGS

    rate = 0.3 * (peaks["fp32_flops"] if variant == "official-fp32" else peaks["bf16_flops"])
    steps = plan.warmup + plan.timed + 1
    secs = 5.0 + steps * cost(model, batch, variant, plan).train_flops_per_step / rate
    if variant == "fasterdit-compiled":
        secs += plan.compile_s_per_block * CONFIGS[model].depth
    return secs


def memory_need(model: str, batch: int, variant: str, plan: Plan) -> float:
    """GiB a case needs by the cost model (+20% under autocast, which keeps some tensors in fp32)."""
    factor = 1.05 if variant == "official-fp32" else 1.2
    return factor * cost(model, batch, variant, plan).memory_bytes_per_gpu / 2**30


def device_memory(device: torch.device) -> float:
    """GiB a case may use: 90% of the GPU (the CUDA context and the allocator's slack take the rest)."""
    if device.type != "cuda":
        return math.inf
    return 0.9 * torch.cuda.get_device_properties(device).total_memory / 2**30


def run_case(
    case: tuple[str, int, str], plan: Plan, device: torch.device, peaks: dict[str, Any], ctx: dict[str, Any]
) -> dict[str, Any]:
    """One measured (or skipped) case as a report row; an out-of-memory or error is a row, not a crash."""
    model, batch, variant = case
    row: dict[str, Any] = {"model": model, "batch": batch, "variant": variant, "status": "ok", "note": ""}
    row["precision"] = "fp32 (TF32 matmuls)" if variant == "official-fp32" else "bf16 autocast"
    if device.type == "cpu":
        row["precision"] = "bf16 autocast" if variant == "official-amp" else "fp32"
    row["compile"] = variant == "fasterdit-compiled"
    need = row["est_mem_gib"] = memory_need(model, batch, variant, plan)
    left = ctx["deadline"] - time.time()
    want = case_seconds(model, batch, variant, plan, peaks)
    if need > device_memory(device):
        return {**row, "status": "skipped", "note": f"would not fit: the cost model needs ~{need:.0f} GiB"}
    if want > left:
        return {**row, "status": "skipped", "note": f"budget: needs ~{want:.0f} s, {left:.0f} s left"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if variant in OFFICIAL:
            m = time_official(model, batch, variant, plan, device)
        else:
            m = time_trainer(model, batch, variant, plan, device, ctx["data"], ctx["run_dir"])
    except torch.cuda.OutOfMemoryError as err:
        row.update(status="oom", note=str(err).split("\n")[0][:200])
    except Exception as err:
        traceback.print_exc()
        row.update(status="error", note=f"{type(err).__name__}: {str(err)[:300]}")
    else:
        flops = cost(model, batch, variant, plan).train_flops_per_step
        row.update(m)
        row["images_per_s"] = batch / m["step_s"]
        row["train_flops"] = flops
        row["tflops"] = flops / m["step_s"] / 1e12
        row["frac_peak"] = flops / m["step_s"] / peaks["bf16_flops"]
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    free_memory(device, row["compile"])
    return row


def ratios(rows: list[dict[str, Any]]) -> None:
    """Each measured row's images/s ÷ the official fp32 and AMP steps' at the same model and batch."""
    ok = {(r["model"], r["batch"], r["variant"]): r for r in rows if r["status"] == "ok"}
    for r in rows:
        for base, key in (("official-fp32", "x_official_fp32"), ("official-amp", "x_official_amp")):
            b = ok.get((r["model"], r["batch"], base))
            r[key] = r["images_per_s"] / b["images_per_s"] if b and r["status"] == "ok" else None
