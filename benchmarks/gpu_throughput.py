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

The code is split by job: ``gpu_throughput_cases.py`` (the plans, the cases, the measurements on the
device), ``gpu_throughput_report.py`` (dry run, tests, targets, gpu.md + gpu.json); this file is the command
line and the order of the work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from gpu_data import write_latent_set
from gpu_throughput_cases import FULL, QUICK, Plan, cases, measure_peaks, ratios, run_case
from gpu_throughput_report import (
    attach_dry_runs,
    fmt_cell,
    gpu_facts,
    read_junit,
    read_pytest_log,
    targets,
    targets_section,
    write_report,
)


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
            speed = fmt_cell(row.get("images_per_s"), ".1f")
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
