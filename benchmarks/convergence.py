"""Convergence benchmark: FID-vs-steps of dit, sit, fasterdit and fasterdit's ablations, same everything else.

Every variant trains the same DiT on the same embedded data with the same batch, optimizer, learning
rate, EMA and step budget, through the real trainer (``fasterdit.train.Trainer``), which evaluates FID
and class accuracy of the EMA weights every K steps (``eval.every``) with ``fasterdit.eval``. Each
recipe is sampled with its natural sampler at the same number of function evaluations (NFE): DDPM
ancestral sampling on the respaced chain (learned variance) for ``dit``, Euler on the probability-flow
ODE for the flow recipes. No classifier-free guidance (cfg 1), as the paper's FID-50K without guidance.

Speed-up (the issue's definition): ``steps dit needs to reach its final FID ÷ steps fasterdit needs to
reach that FID``, both read off the FID-vs-steps curves by linear interpolation between evaluations;
computed per seed (dit seed s against fasterdit seed s), then mean and spread. Same for ``sit``.

    python benchmarks/convergence.py            # full run (≈ 1 h on a quiet 2-core CPU)
    python benchmarks/convergence.py --quick    # ≈ 30 s smoke run; report to a temporary directory

The code is split by job: ``convergence_curves.py`` (the variants, a run's curve, the speed-up),
``convergence_report.py`` (the report); this file is the command line and the training runs.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from convergence_curves import HEADLINE, VARIANTS, Run, analyse, fmt_speedup, natural_sampler, resumable
from convergence_report import report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--dataset", default="digits", help="embedded dataset (digits: 8x8, mnist: 28x28)")
    p.add_argument("--model", default="DiT-Mi/2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--num-samples", type=int, default=1000, help="samples per FID (equal for every run)")
    p.add_argument("--nfe", type=int, default=20, help="function evaluations per sample, every recipe")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (the demo config's)")
    p.add_argument("--warmup", type=int, default=100, help="linear lr warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    p.add_argument("--seeds", default="0,1", help="seeds of the headline pair (dit, fasterdit) and sit")
    p.add_argument("--ablation-seeds", default="0", help="seeds of the ablations")
    p.add_argument("--runs-dir", default=str(common.REPO / "runs" / "bench-convergence"))
    p.add_argument(
        "--out", default=None, help="report directory (default docs/benchmarks; --quick: a temp dir)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="retrain runs even when a finished identical run exists"
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke run (≈ 30 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.batch_size, args.warmup = 16, 8, 16, 4
        args.num_samples, args.nfe = 100, 4
        if args.runs_dir == p.get_default("runs_dir"):
            args.runs_dir = tempfile.mkdtemp(prefix="fasterdit-conv-quick-")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-conv-report-") if args.quick else str(common.DOCS)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    abl = [int(s) for s in args.ablation_seeds.split(",") if s.strip()]
    out = []
    for v in args.variants.split(","):
        for s in seeds if v in (*HEADLINE, "sit") else abl:
            out.append((v, s))
    return out


def train_one(args: argparse.Namespace, variant: str, seed: int) -> Run:
    from fasterdit.train.trainer import Trainer

    preset, overrides, _ = VARIANTS[variant]
    sampler = natural_sampler(preset)
    cfg = common.run_config(
        recipe=preset,
        recipe_overrides=overrides,
        model=args.model,
        dataset=args.dataset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        ema_decay=args.ema_decay,
        warmup_steps=args.warmup,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        eval_num_samples=args.num_samples,
        eval_sampler=sampler,
        eval_steps=args.nfe,
        log_every=max(1, min(50, args.eval_every)),
        ckpt_every=args.eval_every,
        extra={"sample.sampler": sampler, "sample.per_class": 2 if args.quick else 8},
    )
    run_dir = Path(args.runs_dir) / f"{variant}-s{seed}"
    run = Run(variant, seed, run_dir)
    done = run_dir / "benchmark_done.yaml"
    if done.is_file() and not args.fresh:
        prev = yaml.safe_load(done.read_text())
        if common.same_config(prev.get("config"), cfg):
            run.evals = common.read_metrics(run_dir, "eval")
            run.samples_per_sec, run.wall, run.reused = prev["samples_per_sec"], prev["wall"], True
            common.log(f"{variant} seed {seed}: reusing the finished run in {run_dir}")
            return run
    if run_dir.exists() and not resumable(run_dir, cfg, args.fresh):
        shutil.rmtree(run_dir)  # a different benchmark run: start clean
    common.log(f"{variant} seed {seed}: training {args.steps} steps -> {run_dir}")
    t0 = time.time()
    res = Trainer(cfg, run_dir, install_signal_handlers=False, show_progress=False).run()
    run.wall = time.time() - t0
    run.samples_per_sec = res.samples_per_sec
    run.evals = common.read_metrics(run_dir, "eval")
    done.write_text(
        yaml.safe_dump(
            {"config": cfg.to_dict(), "samples_per_sec": float(run.samples_per_sec), "wall": float(run.wall)}
        )
    )
    last = run.evals[-1] if run.evals else {}
    common.log(
        f"{variant} seed {seed}: {run.wall:.0f} s, {run.samples_per_sec:.0f} samples/s, "
        f"final FID {last.get('fid', math.nan):.3f}, acc {last.get('class_accuracy', math.nan):.3f} "
        f"(load {common.loadavg()[0]:.2f})"
    )
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    common.setup_torch()
    facts = common.machine_facts()
    common.log(f"convergence benchmark: {len(plan(args))} runs; load {facts['loadavg_start']}")
    t0 = time.time()
    runs = [train_one(args, v, s) for v, s in plan(args)]
    wall = time.time() - t0
    res = analyse(runs)
    md = report(args, runs, res, facts, wall, Path(args.out))
    for base in ("dit", "sit"):
        if base in res["pooled"]:
            common.log(f"speed-up over {base} (seed-mean curves): {fmt_speedup(res['pooled'][base])}")
    common.log(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
