"""Training throughput: samples/s, achieved FLOP/s and the fraction of this machine's peak matmul rate.

For each model it measures, in the same process and one after another:

* ``baseline``: a plain step written the way the original DiT code does it (``baseline_dit.py``:
  unfused softmax attention, DiT's ε-MSE + VB loss with numpy tables, per-parameter AdamW, Python-loop
  EMA, no compile, fp32), on the same network (the same weights give the same outputs, checked);
* ``fasterdit step``: the real trainer loop (``fasterdit.train.Trainer.run``) with the ``fasterdit``
  recipe, timed per optimizer step through the trainer's ``after_step_hook``;
* ``dit-recipe step``: the same trainer with the ``dit`` recipe (the same loss as the baseline, so the
  ratio to the baseline isolates implementation speed from recipe cost);
* optionally the fasterdit step with ``train.compile=true`` (``--compile``);
* the EMA update alone (``time_ema``): the trainer's one fused ``lerp`` (``EMA.update`` with its device
  skip flag) against the ``sub``/``mul``/``add`` chain it replaced, which swept the weights 8 times and
  allocated a model-sized temporary; ``--ema-only`` times just this, in seconds.

Achieved FLOP/s use the analytic training FLOPs of ``fasterdit.models.cost.estimate_cost`` (matmuls
only, forward + backward = 3 × forward) divided by the measured step time; the peak is the best rate
of large fp32 ``torch.matmul`` measured in the same run. A ``torch.profiler`` table of the fasterdit step
shows where the time goes.

Timings on a shared VM drift by ±10-20 % over minutes, so the variants are measured in interleaved rounds
(baseline, dit-recipe, fasterdit, compiled; again; again) and each reports its median round, with the
spread of the rounds beside it: a ratio then compares steps measured a few seconds apart.

    python benchmarks/throughput.py --compile  # full run (≈ 10 min on a quiet 2-core CPU)
    python benchmarks/throughput.py --quick    # ≈ 20 s smoke run; report to a temporary directory
    python benchmarks/throughput.py --ema-only --out /tmp/ema   # the EMA update alone, a few seconds

The code is split by job: this file measures (and is the command line); ``throughput_report.py`` writes
the report.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# inductor's pool of compile worker processes outlives the compile and was measured to slow the steps
# timed after it on this 2-core machine: compile in-process so every variant sees the same machine
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# a fresh compile cache: the first round's first step is the cold compile time a new user pays
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fasterdit-inductor-"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baseline_dit import BaselineDiT, BaselineTrainer
from throughput_report import report

#: label, model, dataset, batch, measured steps
MODELS = {
    "bench": ("DiT-Mi/2", "digits", 128, 30),
    "demo": ("DiT-Ti/4", "mnist", 64, 15),
    "large": ("DiT-XS/2", "mnist", 16, 5),
}
WARMUP = 3


# ----------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------


def peak_matmul(sizes: tuple[int, ...] = (1024, 2048), reps: int = 6) -> dict[int, float]:
    """Best fp32 FLOP/s of (n×n)·(n×n) per size, FLOPs = 2n³."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        c = torch.empty(n, n)
        torch.matmul(a, b, out=c)
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[n] = 2 * n**3 / best
    return out


def time_trainer(
    model: str,
    dataset: str,
    batch: int,
    steps: int,
    recipe: str,
    compile_: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """Per-step wall times of the real trainer loop (after ``WARMUP`` steps), plus an optional profile."""
    from fasterdit.models import estimate_cost
    from fasterdit.train.trainer import Trainer

    n_prof = 3 if profile else 0
    total = WARMUP + steps + n_prof
    cfg = common.run_config(
        recipe=recipe,
        model=model,
        dataset=dataset,
        steps=total,
        batch_size=batch,
        lr=1e-4,
        seed=0,
        ema_decay=0.9999,
        log_every=10_000,
        extra={
            "train.compile": compile_,
            "sample.classes": [0],
            "sample.per_class": 1,
            "sample.steps": 1,
            "train.ema_warmup": False,
        },
    )
    stamps: list[float] = []
    prof_box: dict[str, Any] = {}

    def hook(tr, step: int) -> None:
        stamps.append(time.perf_counter())
        if profile and step == WARMUP + steps:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as tprofile

            prof_box["p"] = tprofile(activities=[ProfilerActivity.CPU])
            prof_box["p"].__enter__()
        if profile and step == total and "p" in prof_box:
            prof_box["p"].__exit__(None, None, None)
        if step == 1:
            prof_box["model"] = tr.parts.model

    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, d, install_signal_handlers=False, show_progress=False)
        tr.after_step_hook = hook
        t0 = time.perf_counter()
        tr.run()
        first = stamps[0] - t0
    dts = [b - a for a, b in zip(stamps[WARMUP - 1 : WARMUP + steps - 1], stamps[WARMUP : WARMUP + steps])]
    step_time = statistics.median(dts)
    flops = estimate_cost(prof_box["model"], batch_size=batch).train_flops_per_step
    out = {
        "step_time": step_time,
        "step_time_min": min(dts),
        "samples_per_sec": batch / step_time,
        "flops_per_step": flops,
        "flops_per_sec": flops / step_time,
        "first_step_seconds": first,
    }
    if profile and "p" in prof_box:
        out["profile"] = prof_box["p"]
    return out


def time_baseline(model: str, dataset: str, batch: int, steps: int) -> dict[str, Any]:
    """Step times of the official-style step, and the max output difference to fasterdit's DiT."""
    from fasterdit.data.embedded import load_embedded
    from fasterdit.models import CONFIGS, create_model, estimate_cost

    images, labels = load_embedded(dataset, "train")
    arch = CONFIGS[model]
    kw = dict(
        input_size=images.shape[-1],
        in_channels=images.shape[1],
        num_classes=10,
        learn_sigma=True,
        class_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    ours = create_model(model, **kw).eval()
    base = BaselineDiT(
        images.shape[-1], arch.patch_size, images.shape[1], arch.hidden_size, arch.depth, arch.num_heads, 10
    ).eval()
    # fasterdit's init zeroes the adaLN/output layers; perturb so the comparison is not 0 == 0
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    base.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, *images.shape[1:])
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    y = torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        diff = float((ours(x, t, y) - base(x, t, y)).abs().max())
    trainer = BaselineTrainer(base.train(), images, labels, batch)
    for _ in range(WARMUP):
        trainer.step()
    dts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step()
        dts.append(time.perf_counter() - t0)
    step_time = statistics.median(dts)
    flops = estimate_cost(ours, batch_size=batch).train_flops_per_step
    return {
        "step_time": step_time,
        "step_time_min": min(dts),
        "samples_per_sec": batch / step_time,
        "flops_per_step": flops,
        "flops_per_sec": flops / step_time,
        "max_output_diff": diff,
    }


def _ema_chain_(ema: list[torch.Tensor], src: list[torch.Tensor], w: torch.Tensor) -> None:
    """The EMA update before the fused lerp (kept here as the reference it is timed against): a temporary
    as large as the model and 8 sweeps (sub: 3, mul: 2, add: 3)."""
    diff = torch._foreach_sub(src, ema)
    torch._foreach_mul_(diff, w)
    torch._foreach_add_(ema, diff)


def time_ema(model: str, dataset: str, reps: int) -> dict[str, Any]:
    """Seconds per EMA update of ``model``'s weights, the trainer's (``EMA.update(ok=...)``, one fused
    lerp) and the chain it replaced, in interleaved repetitions: the fastest of each (the least disturbed
    on a shared machine) and the median."""
    from fasterdit.data.embedded import load_embedded
    from fasterdit.models import create_model
    from fasterdit.train.ema import EMA

    images, _ = load_embedded(dataset, "train")
    torch.manual_seed(0)
    net = create_model(model, input_size=images.shape[-1], in_channels=images.shape[1], num_classes=10)
    ema = EMA(net, decay=0.9999)
    chain = [p.detach().clone() for p in net.parameters()]  # the chain's EMA, equal to the EMA's at the start
    with torch.no_grad():
        for p in net.parameters():  # a distance to move: the EMA starts equal to the weights
            p.add_(0.01 * torch.randn_like(p))
    params = [p.detach() for p in net.parameters()]
    ok = torch.ones((), dtype=torch.bool)
    w = ok.float() * (1.0 - ema.decay)
    times: dict[str, list[float]] = {"fused lerp (EMA.update)": [], "sub/mul/add chain (before)": []}
    for _ in range(reps + 1):  # the first repetition warms the allocator and caches; not counted
        t0 = time.perf_counter()
        ema.update(ok=ok)
        t1 = time.perf_counter()
        _ema_chain_(chain, params, w)
        t2 = time.perf_counter()
        times["fused lerp (EMA.update)"].append(t1 - t0)
        times["sub/mul/add chain (before)"].append(t2 - t1)
    n = sum(p.numel() for p in params)
    return {
        "model": model,
        "params": n,
        "tensors": len(params),
        "seconds": {k: min(v[1:]) for k, v in times.items()},
        "median_seconds": {k: statistics.median(v[1:]) for k, v in times.items()},
        "reps": reps,
    }


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="subset of " + ", ".join(MODELS))
    p.add_argument(
        "--compile", action="store_true", help="also time the fasterdit step with train.compile=true"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant (median)")
    p.add_argument("--tag", default="", help="also save the raw numbers as throughput_<tag>.json")
    p.add_argument(
        "--compare", default=None, help="a throughput_<tag>.json of an earlier run (before/after table)"
    )
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ema-only", action="store_true", help="time only the EMA update (a few seconds)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-tp-report-") if args.quick else str(common.DOCS)
    return args


def write_ema_report(out: Path, ema: dict[str, dict[str, Any]], facts: dict[str, Any]) -> Path:
    """``throughput_ema.{md,json}``: the EMA update alone, the fused lerp against the chain it replaced."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"ema": ema, "machine": facts, "command": common.command_line()}
    common.write_json(out / "throughput_ema.json", record)
    rows = [
        [label, e["model"], *(f"{1e3 * v:.2f}" for v in e["seconds"].values())] for label, e in ema.items()
    ]
    first = next(iter(ema.values()))
    lines = [
        "# The EMA update alone (issue #30 item 3)",
        "",
        f"`{common.command_line()}`; the fastest of 20 interleaved repetitions, in ms per update.",
        "",
        common.md_table(["setting", "model", *first["seconds"]], rows),
        "",
        common.facts_markdown(facts, common.loadavg()),
        "",
    ]
    if common.loadavg()[0] > 0.5:
        lines += ["The machine was not idle (load average above): read the ratios, not the times.", ""]
    md = out / "throughput_ema.md"
    md.write_text("\n".join(lines))
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    common.setup_torch()
    facts = common.machine_facts()
    t_start = time.time()
    models = {k: MODELS[k] for k in args.models.split(",")}
    if args.quick:
        models = {"bench": ("DiT-Mi/2", "digits", 32, 4)}
    ema = {
        label: time_ema(model, dataset, 3 if args.quick else 20)
        for label, (model, dataset, _, _) in models.items()
    }
    for label, e in ema.items():
        common.log(
            f"{label} {e['model']} EMA update: "
            + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in e["seconds"].items())
        )
    if args.ema_only:
        write_ema_report(Path(args.out), ema, facts)
        return 0
    peak = peak_matmul((512, 1024) if args.quick else (1024, 2048), reps=3 if args.quick else 6)
    peak_best = max(peak.values())
    sizes = {n: round(v / 1e9, 1) for n, v in peak.items()}
    common.log(f"peak fp32 matmul {peak_best / 1e9:.1f} GFLOP/s (GFLOP/s by size: {sizes})")
    results: dict[str, dict[str, Any]] = {}
    profiles: dict[str, Any] = {}
    variants = ["baseline", "dit-recipe", "fasterdit"]
    if args.compile and not args.quick:
        variants.append("fasterdit-compiled")
    rounds = 1 if args.quick else args.rounds
    for label, (model, dataset, batch, steps) in models.items():
        per: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for k in range(rounds):
            for v in variants:
                if v == "baseline":
                    m = time_baseline(model, dataset, batch, steps)
                else:
                    recipe = "dit" if v == "dit-recipe" else "fasterdit"
                    m = time_trainer(
                        model,
                        dataset,
                        batch,
                        steps,
                        recipe,
                        compile_=v == "fasterdit-compiled",
                        profile=v == "fasterdit" and k == 0,
                    )
                    if "profile" in m:
                        profiles[label] = m.pop("profile")
                per[v].append(m)
                extra = f" (first step {m['first_step_seconds']:.0f} s)" if v == "fasterdit-compiled" else ""
                common.log(
                    f"{label} {model} round {k + 1}/{rounds} {v}: {m['samples_per_sec']:.1f} samples/s{extra}"
                )
        r: dict[str, Any] = {
            "model": model,
            "dataset": dataset,
            "batch": batch,
            "steps": steps,
            "rounds": rounds,
        }
        for v, ms in per.items():
            order = sorted(range(len(ms)), key=lambda i: ms[i]["samples_per_sec"])
            med = dict(ms[order[len(ms) // 2]])  # the median round (the upper one of an even count)
            med["rounds_samples_per_sec"] = [m["samples_per_sec"] for m in ms]
            med["best_step_time"] = min(m["step_time_min"] for m in ms)  # fastest single step, any round
            med["first_step_seconds_all"] = [m.get("first_step_seconds", math.nan) for m in ms]
            r[v] = med
        results[label] = r
    wall = time.time() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = {
        "facts": facts,
        "peak_flops": peak,
        "peak_best": peak_best,
        "results": results,
        "ema": ema,
        "wall_seconds": wall,
        "command": common.command_line(__file__),
    }
    if args.tag:
        common.write_json(out / f"throughput_{args.tag}.json", raw)
    md = report(args, raw, profiles, out)
    common.log(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
