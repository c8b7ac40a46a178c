"""GPU training throughput of fasterdit against a plain official-style DiT step; writes gpu.md + gpu.json.

What one run measures, in the same process and on the same GPU, on synthetic 32×32×4 latents
(``gpu_data.py``: a real prepared set, read through the trainer's memory-mapped, pinned-memory path):

* ``official-fp32``: the step the official DiT ``train.py`` runs (``baseline_dit.py``: unfused softmax
  attention, ε-MSE + VB loss with numpy tables copied to the GPU every call, ``torch.optim.AdamW`` with
  its default (foreach, unfused) kernel, a Python-loop EMA, ``loss.item()`` every step, no compile), in
  fp32 with TF32 matmuls as ``train.py`` enables them; its latents are resident on the GPU (as fast-DiT's
  pre-extracted features), so the comparison leaves out the VAE encoding the official step also pays;
* ``official-amp``: the same under bf16 autocast (fast-DiT's mixed precision, without a grad scaler);
* ``fasterdit``: the real trainer loop (``fasterdit.train.Trainer.run``, the ``fasterdit`` recipe, bf16
  autocast, fused AdamW, device-side skip, lagged host reads), timed between its ``after_step_hook`` calls;
* ``fasterdit-compiled``: the same with ``train.compile=true`` (inductor; the loss and the DiT in one graph);
* ``dit-recipe``: the trainer with the ``dit`` recipe, the baseline's loss (implementation vs recipe cost).

Achieved TFLOP/s are the analytic training FLOPs of ``fasterdit.models.cost.estimate_cost`` (matmuls only,
3 × forward) over the measured step time, and the fraction of peak divides them by the median rate of an
8192³ bf16 ``torch.matmul`` on random data measured in this run. ``fasterdit train --dry-run`` (the real
CLI) gives its estimate next to the measured step. Cases run in priority order (the head-to-head
comparison first, then the batch sweep) under a time budget: a case that would not finish in the time
left, or whose estimated memory would not fit, is reported as skipped, and the report is rewritten after
every case, so a run cut short still leaves one.

    python benchmarks/gpu_throughput.py                       # on a CUDA GPU (≈ 4.5 min on an H200)
    python benchmarks/gpu_throughput.py --device cpu --quick  # smoke run of the whole logic on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baseline_dit import BaselineDiT, BaselineTrainer, update_ema
from gpu_data import write_latent_set

#: The issue's targets for DiT-XL/2: fastest fasterdit step ÷ the official fp32 step, fraction of peak.
TARGET_RATIO = 1.5
TARGET_PEAK = 0.45
#: The dry run's GPU row: H200 arithmetic rates are the H100-SXM's (its datasheet; only memory differs).
DRY_RUN_GPU = "H100-SXM"
OFFICIAL = ("official-fp32", "official-amp")
JUNIT_OUTCOMES = {"failure": "failed", "error": "error", "skipped": "skipped"}
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


# ----------------------------------------------------------------------------------------------------
# the dry run, the tests' results, the targets
# ----------------------------------------------------------------------------------------------------


def dry_run(model: str, batch: int, plan: Plan, data: Path, device) -> dict[str, Any]:
    """``fasterdit train --dry-run`` (the real CLI, in-process) for a case, and its GPU row's estimate."""
    from fasterdit.cli import main as cli

    args = ["train", "--config", CONFIG, "--dry-run"]
    for s in trainer_overrides(model, batch, "fasterdit", plan, data, device):
        args += ["--set", s]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(args)
    text = buf.getvalue()
    out: dict[str, Any] = {"model": model, "batch": batch, "rc": rc, "text": text, "gpu": DRY_RUN_GPU}
    row = re.search(rf"^\s+{re.escape(DRY_RUN_GPU)}\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d.]+)/", text, re.M)
    mfu = re.search(r"assumed MFU (\d+)%", text)
    if row:
        out.update(peak_tflops=float(row.group(1)), est_ms=float(row.group(2)))
        out["est_mem_gib"] = float(row.group(4))
    if mfu:
        out["mfu"] = int(mfu.group(1)) / 100
    return out


def attach_dry_runs(report: dict[str, Any], plan: Plan, data: Path, device) -> None:
    """One dry run per (model, batch) with a measured fasterdit step, with that step beside it."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in report["results"]:
        if r["status"] == "ok" and r["variant"] in ("fasterdit", "fasterdit-compiled"):
            key = (r["model"], r["batch"])
            if key not in best or r["step_s"] < best[key]["step_s"]:
                best[key] = r
    report["dry_run"] = []
    for (model, batch), r in sorted(best.items()):
        d = dry_run(model, batch, plan, data, device)
        d["measured_ms"] = 1e3 * r["step_s"]
        d["measured_variant"] = r["variant"]
        d["measured_peak_mem_gib"] = r.get("peak_mem_gib")
        if "peak_tflops" in d:
            d["implied_mfu"] = r["tflops"] / d["peak_tflops"]  # against the datasheet peak the estimate uses
        report["dry_run"].append(d)


def read_junit(path: str | Path | None) -> dict[str, Any] | None:
    """Outcome, time and message of every test case in a pytest ``--junitxml`` file (None: no file)."""
    if not path or not Path(path).is_file():
        return None
    root = ET.parse(path).getroot()
    tests = []
    for tc in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in JUNIT_OUTCOMES:
                outcome = JUNIT_OUTCOMES[child.tag]
                lines = (child.get("message") or child.text or "").strip().splitlines()
                message = lines[0][:300] if lines else ""
        tests.append(
            {
                "name": tc.get("name", "?"),
                "classname": tc.get("classname", ""),
                "seconds": float(tc.get("time", "nan")),
                "outcome": outcome,
                "message": message,
            }
        )
    return {"counts": dict(Counter(t["outcome"] for t in tests)), "cases": tests}


def read_pytest_log(path: str | Path | None) -> dict[str, Any] | None:
    """The outcomes a ``pytest -v`` log printed so far: the fallback when the run was cut at its time limit
    before it could write its junit file."""
    if not path or not Path(path).is_file():
        return None
    found = re.findall(r"::(\S+) (PASSED|FAILED|SKIPPED|ERROR)\b", Path(path).read_text(errors="replace"))
    tests = [
        {"name": name, "classname": "", "seconds": math.nan, "outcome": outcome.lower(), "message": ""}
        for name, outcome in dict(found).items()
    ]
    return {"counts": dict(Counter(t["outcome"] for t in tests)), "cases": tests, "cut": True}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: at the largest batch where both ran, the fastest fasterdit step ÷ the official fp32 step
    and its fraction of the measured bf16 peak, against the issue's targets (set for DiT-XL/2)."""
    ok = [r for r in report["results"] if r["status"] == "ok"]
    out = []
    for model in dict.fromkeys(r["model"] for r in report["results"]):
        base = {r["batch"]: r for r in ok if r["model"] == model and r["variant"] == "official-fp32"}
        fast: dict[int, dict[str, Any]] = {}
        mine = [r for r in ok if r["model"] == model and r["variant"] in ("fasterdit", "fasterdit-compiled")]
        for r in sorted(mine, key=lambda r: r["images_per_s"]):  # the fastest at a batch is kept last
            if r["batch"] in base:
                fast[r["batch"]] = r
        if not fast:
            out.append({"model": model, "status": "not measured"})
            continue
        batch = max(fast)
        f, b = fast[batch], base[batch]
        ratio = f["images_per_s"] / b["images_per_s"]
        out.append(
            {
                "model": model,
                "batch": batch,
                "variant": f["variant"],
                "ratio": ratio,
                "frac_peak": f["frac_peak"],
                "ratio_met": ratio >= TARGET_RATIO,
                "peak_met": f["frac_peak"] >= TARGET_PEAK,
                "status": "measured",
            }
        )
    return out


# ----------------------------------------------------------------------------------------------------
# machine facts, report
# ----------------------------------------------------------------------------------------------------


def gpu_facts(device: torch.device) -> dict[str, Any]:
    """The CPU facts every report states, plus the GPU, its memory, the CUDA/cuDNN builds and the driver."""
    facts = common.machine_facts()
    if device.type != "cuda":
        return facts
    p = torch.cuda.get_device_properties(device)
    facts.update(
        gpu=p.name,
        gpu_memory_gib=p.total_memory / 2**30,
        capability=f"{p.major}.{p.minor}",
        multiprocessors=p.multi_processor_count,
        cuda_runtime=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        q = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit"
        smi = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)  # fmt: skip
        facts["nvidia_smi"] = smi.stdout.strip()
    return facts


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def markdown(report: dict[str, Any]) -> str:
    f, peaks = report["facts"], report["peak"]
    cpu_run = not f.get("gpu")
    title = "# GPU check" + (" (CPU smoke run: the numbers mean nothing)" if cpu_run else "")
    L = [title, "", f"Command (from the repository root):\n\n```bash\n{report['command']}\n```\n"]
    L.append(f"Wall time {report.get('wall_s', math.nan):.0f} s of a {report['budget_s']:.0f} s budget.\n")
    L.append("## Machine\n")
    if not cpu_run:
        L.append(
            f"* GPU: {f['gpu']}, {f['gpu_memory_gib']:.0f} GiB, compute capability {f['capability']}, "
            f"{f['multiprocessors']} SMs; CUDA {f['cuda_runtime']}, cuDNN {f['cudnn']}; nvidia-smi "
            f"(driver, SM clock, max SM clock, power limit): {f.get('nvidia_smi', '–')}"
        )
    L.append(common.facts_markdown(f) + "\n")
    L.extend(tests_section(report.get("tests")))
    L.append("## Peak matmul rates (measured in this run)\n")
    L.append(
        f"Median of 10 products of {peaks['n']}×{peaks['n']} random matrices after 3 warm-ups: "
        f"bf16 **{peaks['bf16_flops'] / 1e12:.3g} TFLOP/s**, fp32 {peaks['fp32_flops'] / 1e12:.3g} TFLOP/s"
        f"{' (TF32 tensor cores)' if not cpu_run else ''}. Every '% peak' below divides by the "
        f"{peaks['reference']} rate.\n"
    )
    L.extend(throughput_section(report))
    L.extend(dry_run_section(report))
    L.extend(targets_section(report))
    return "\n".join(L) + "\n"


def tests_section(tests: dict[str, Any] | None) -> list[str]:
    L = ["## CUDA tests (`tests/test_cuda.py`, marker `cuda`)\n"]
    if tests is None:
        return [*L, "Not run in this invocation (no `--tests-junit` or `--tests-log` file).\n"]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items()))
    cut = " The run was cut at its time limit: these are the tests that finished." if tests.get("cut") else ""
    L.append(f"{counts}.{cut}\n")
    rows = [[f"`{t['name']}`", t["outcome"], t["seconds"], t["message"] or ""] for t in tests["cases"]]
    return [*L, common.md_table(["test", "outcome", "s", "message"], rows), ""]


def throughput_section(report: dict[str, Any]) -> list[str]:
    L = ["## Training throughput\n"]
    plan = report["plan"]
    L.append(
        f"Synthetic {plan['channels']}×{plan['resolution']}×{plan['resolution']} latents, "
        f"{plan['num_classes']} classes. Step time = wall time of {plan['timed']} steps after "
        f"{plan['warmup']} warm-up steps, synchronised at both ends. TFLOP/s = analytic matmul FLOPs per "
        "step (`estimate_cost`, 3 × forward) ÷ step time. '× fp32' and '× AMP' = images/s ÷ the official "
        "step's at the same model and batch. 'est. GiB' = the cost model's memory (+20% under autocast, "
        "+5% in fp32). 'first step' = "
        "from the start of the case to the end of its first step (model build, CUDA init, compile).\n"
    )
    rows = []
    for r in report["results"]:
        rows.append(
            [
                f"`{r['model']}`",
                r["batch"],
                r["variant"],
                r["precision"],
                _fmt(r.get("images_per_s"), ".1f"),
                _fmt(1e3 * r["step_s"] if "step_s" in r else None, ".4g"),
                _fmt(r.get("peak_mem_gib"), ".1f"),
                _fmt(r.get("est_mem_gib"), ".1f"),
                _fmt(r.get("tflops"), ".3g"),
                _fmt(100 * r["frac_peak"] if "frac_peak" in r else None, ".0f"),
                _fmt(r.get("x_official_fp32"), ".2f"),
                _fmt(r.get("x_official_amp"), ".2f"),
                _fmt(r.get("first_step_s"), ".1f"),
                r["status"] + (f": {r['note']}" if r["note"] else ""),
            ]
        )
    headers = ["model", "batch", "step", "precision", "images/s", "ms/step", "peak GiB", "est. GiB",
               "TFLOP/s", "% peak", "× fp32", "× AMP", "first step s", "status"]  # fmt: skip
    return [*L, common.md_table(headers, rows), ""]


def dry_run_section(report: dict[str, Any]) -> list[str]:
    L = ["## `fasterdit train --dry-run` next to the measured step\n"]
    runs = report.get("dry_run") or []
    if not runs:
        return [*L, "No fasterdit step was measured.\n"]
    L.append(
        f"The dry run's {DRY_RUN_GPU} row (the H200's arithmetic rates are the H100's) at its assumed MFU, "
        "next to the fastest fasterdit step measured at that batch; 'implied MFU' = measured TFLOP/s ÷ "
        "the datasheet peak the estimate uses.\n"
    )
    rows = [
        [
            f"`{d['model']}`",
            d["batch"],
            _fmt(d.get("mfu"), ".0%"),
            _fmt(d.get("est_ms"), ".4g"),
            _fmt(d["measured_ms"], ".4g"),
            d["measured_variant"],
            _fmt(d.get("implied_mfu"), ".0%"),
            _fmt(d.get("est_mem_gib"), ".1f"),
            _fmt(d.get("measured_peak_mem_gib"), ".1f"),
        ]
        for d in runs
    ]
    headers = ["model", "batch", "assumed MFU", "estimated ms/step", "measured ms/step", "measured step",
               "implied MFU", "estimated GiB", "measured peak GiB"]  # fmt: skip
    L += [common.md_table(headers, rows), ""]
    first = runs[-1]
    L.append(f"The dry run's output for `{first['model']}` at batch {first['batch']}:\n")
    return [*L, "```", first["text"].rstrip(), "```", ""]


def targets_section(report: dict[str, Any]) -> list[str]:
    L = ["## Targets\n"]
    rows = []
    for t in report.get("targets") or []:
        if t["status"] != "measured":
            rows.append([f"`{t['model']}`", "–", "–", "–", "not measured", "–", "not measured"])
            continue
        rows.append(
            [
                f"`{t['model']}`",
                t["batch"],
                t["variant"],
                f"{t['ratio']:.2f}×",
                "met" if t["ratio_met"] else "not met",
                f"{100 * t['frac_peak']:.0f}%",
                "met" if t["peak_met"] else "not met",
            ]
        )
    headers = ["model", "batch", "fastest fasterdit step", "÷ official fp32", f"≥ {TARGET_RATIO}×",
               "% of bf16 peak", f"≥ {100 * TARGET_PEAK:.0f}%"]  # fmt: skip
    L.append(common.md_table(headers, rows))
    L.append(
        "\nThe targets are the issue's, set for DiT-XL/2 (fast-DiT reports ≈1.95× over the official step "
        "from AMP and pre-extracted latents alone); the batch is the largest at which the official fp32 "
        "step ran.\n"
    )
    return L


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "gpu.json", report)
    md = out / "gpu.md"
    md.write_text(markdown(report))
    return md


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    p.add_argument("--quick", action="store_true", help="tiny model and batches: the logic, not the numbers")
    p.add_argument("--budget-s", type=float, default=270.0, help="skip cases that would end after this")
    p.add_argument("--models", default=None, help="comma-separated subset of the plan's models")
    p.add_argument("--tests-junit", default=None, help="pytest --junitxml of the CUDA tests, for the report")
    p.add_argument("--tests-log", default=None, help="their pytest -v log (when no junit file)")
    p.add_argument("--command", default=None, help="the command shown in the report (default: this one)")
    p.add_argument("--out", default=None, help="report folder (default docs/benchmarks; --quick: a temp dir)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-gpu-report-") if args.quick else str(common.DOCS)
    return args


def resolve_device(spec: str, quick: bool) -> torch.device:
    """CUDA, or the CPU for the smoke run; the full plan on a CPU would take hours, so it is refused."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cpu" and not quick:
        raise SystemExit("gpu_throughput: no CUDA device; the full plan needs one (use --device cpu --quick)")
    return device


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.models:
        models = tuple(m for m in args.models.split(",") if m)
        unknown = [m for m in models if m not in plan.head_batch]
        if unknown:
            raise SystemExit(f"gpu_throughput: --models: {unknown} not in {list(plan.head_batch)}")
        plan = Plan(**{**asdict(plan), "models": models})
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    device = resolve_device(args.device, args.quick)
    plan = make_plan(args)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32, as the official train.py and train.tf32 set it
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="fasterdit-gpu-"))
    data = write_latent_set(work / "latents", items=plan.items, channels=plan.channels,
                            resolution=plan.resolution, num_classes=plan.num_classes)  # fmt: skip
    report: dict[str, Any] = {
        "facts": gpu_facts(device),
        "command": args.command or common.command_line(__file__),
        "budget_s": args.budget_s,
        "plan": asdict(plan),
        "tests": read_junit(args.tests_junit) or read_pytest_log(args.tests_log),
        "results": [],
    }
    report["peak"] = measure_peaks(device, args.quick)
    common.log(f"peak matmul: bf16 {report['peak']['bf16_flops'] / 1e12:.3g} TFLOP/s")
    ctx = {"deadline": t_start + args.budget_s, "data": data, "run_dir": work / "run"}
    try:
        for case in cases(plan):
            row = run_case(case, plan, device, report["peak"], ctx)
            report["results"].append(row)
            ratios(report["results"])
            report["wall_s"] = time.time() - t_start
            write_report(report, out)
            speed = _fmt(row.get("images_per_s"), ".1f")
            common.log(f"{case}: {row['status']} {speed} images/s {row['note']}")
        attach_dry_runs(report, plan, data, device)
        report["targets"] = targets(report)
        report["wall_s"] = time.time() - t_start
        md = write_report(report, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(targets_section(report)))
    common.log(f"report: {md}")
    return 1 if any(r["status"] == "error" for r in report["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
