"""Convergence on latents (issue #18): dit, sit and fasterdit against lr-tuned baselines, read at equal and
at converged NFE, fasterdit's three ablations, and the data-std question with the SNR tool's recommendation.

The same DiT (``DiT-Ti/2``) trains on the same 8×8×4 latents of the shipped MNIST autoencoder (``mnist-ae``:
28×28 digits padded to 32×32; the prepared latents are multiplied by the autoencoder's ``scaling_factor``,
std 1) with the same batch, optimizer, EMA and budget, through the real trainer. Every evaluation decodes
the EMA model's samples with the autoencoder, crops them to 28×28 and scores them with the shipped MNIST
classifier against the held-out digits (FID in its feature space, class accuracy, precision/recall):

* during training, every ``eval_every`` steps, each recipe with its natural sampler at **equal NFE**
  (``dit``: DDPM on the respaced chain with its learned variance; flow recipes: Euler), no guidance (cfg 1,
  as the paper's FID without guidance). 25 NFE rather than 50: it halves the cost of the 7 evaluations per
  run, which is what lets the headline fit in 100 min with a 2,100-step budget; the converged-NFE reading
  below is there so that a speed-up that only comes from dit's coarser 25-step DDPM chain shows;
* after training, at a **converged NFE** (``dit``: DDPM 250 steps; flow recipes: dopri5), of the final EMA
  weights and, for ``fasterdit``, of the checkpoints at 1/7 and 3/7 of the budget, so that the paper's
  reading (FasterDiT at 1/7 of DiT's steps against DiT's final FID) is made at both NFE settings.

The headline's 2,100 steps are far too few for ``dit`` to converge on these latents, and 3 seeds of a budget
long enough do not fit this machine; the ``long`` part runs one seed of each recipe at 8,400 steps (one
recipe per unattended invocation, ``--only``) so that the paper's reading is also made where ``dit``'s curve
has flattened, judged by its relative slope.

Parts, each sized to run unattended in ≤ 100 min on the 2-core CPU (``--estimate`` prints the plan and
the estimated wall time without running anything; every part prints it before starting):

    python benchmarks/latent_convergence.py --part lr          # lr sweep, dit/sit/fasterdit, seed 0
    python benchmarks/latent_convergence.py --part headline    # dit/sit/fasterdit × seeds 0,1,2, best lr
    python benchmarks/latent_convergence.py --part long        # the same, seed 0, 4× the budget (--only)
    python benchmarks/latent_convergence.py --part ablations   # fasterdit without direction loss/lognorm/std
    python benchmarks/latent_convergence.py --part std         # FID vs data scale + `snr --recommend`
    python benchmarks/latent_convergence.py --report           # the report from the metrics files that exist
    python benchmarks/latent_convergence.py --quick            # ≈ 1 min smoke run of every part (CI)

Issue #29's parts, REPA composed with the recipes (never run by ``--part all``; protocol, run counts and
times in ``latent_convergence_repa.py``; read in the headline's tables and in a section of their own):

    python benchmarks/latent_convergence.py --part repa-tune   # λ then depth, per composed recipe, seed 0
    python benchmarks/latent_convergence.py --part repa        # sit+repa, fasterdit+repa × 3 seeds, tuned
    python benchmarks/latent_convergence.py --part repa-off    # fasterdit+repa, alignment off after 1/2

Every finished run writes one small metrics file, ``benchmarks/results/latent_convergence/<part>/<name>.json``
(curves, converged-NFE evaluations, settings, lr, seed, machine, date, wall time, exact command), which is
committed; a run whose file exists is skipped, so parts and seeds can be run in different sessions
(``--only``, ``--seeds``). Run directories with checkpoints go to ``--work`` (default /tmp/latent_conv),
outside the repository. ``--report`` (and the end of every part) assembles
``docs/benchmarks/latent_convergence.md`` + ``.json`` + PNGs from whatever metrics files exist; a part without
them is reported as not run yet.

The code is split by job, one module each: ``latent_convergence_plan.py`` (budgets, the runs of each part,
the time estimate), ``latent_convergence_runs.py`` (training, converged-NFE evaluation, metrics files),
``latent_convergence_analysis.py`` (the readings), ``latent_convergence_plots.py`` (the figures),
``latent_convergence_report.py`` (the report) with its sections in ``latent_convergence_headline.py``,
``latent_convergence_sweeps.py`` and ``latent_convergence_markdown.py``; this file is the command line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from latent_convergence_plan import (
    ABLATIONS,
    EXTRA_PARTS,
    HEADLINE,
    LRS,
    PARTS,
    REPA_VARIANTS,
    STD_LAWS,
    plan,
    print_estimate,
)
from latent_convergence_report import report
from latent_convergence_runs import prepare_latents, prepare_repa_latents, run_part


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--part",
        default=None,
        help="lr, headline, long, ablations, std, all; repa-tune, repa, repa-off (comma-separated)",
    )
    p.add_argument("--report", action="store_true", help="assemble the report from the metrics files")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every part (≈ 1 min); temp dirs")
    p.add_argument(
        "--estimate", action="store_true", help="print the plan and its estimated time; run nothing"
    )
    p.add_argument(
        "--only",
        default=None,
        help="variants of the part (dit,sit,fasterdit; fasterdit-no-dir,...; std: lognorm,uniform; "
        "sit+repa,fasterdit+repa)",
    )
    p.add_argument(
        "--seeds", default=None, help="seeds (default per part: headline/ablations 0,1,2; lr/std 0)"
    )
    p.add_argument(
        "--lrs", default=None, help=f"lr part: the swept values (default {','.join(map(str, LRS))})"
    )
    p.add_argument("--scales", default=None, help="std part: data multipliers (default 0.25,0.5,1,2,4)")
    p.add_argument("--steps", type=int, default=None, help="override the part's training steps")
    p.add_argument("--eval-every", type=int, default=None, help="override the part's evaluation interval")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None, help="override N of every FID")
    p.add_argument(
        "--nfe", type=int, default=None, help="override the equal NFE of the in-training evaluation"
    )
    p.add_argument("--work", default=None, help="scratch dir: latents, run dirs (default /tmp/latent_conv)")
    p.add_argument(
        "--latents",
        default=None,
        help="prepared mnist-ae latents (default WORK/latents, prepared on first use)",
    )
    p.add_argument(
        "--results", default=None, help="metrics files (default benchmarks/results/latent_convergence)"
    )
    p.add_argument(
        "--out", default=None, help="report directory (default docs/benchmarks; --quick: a temp dir)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose metrics file exists")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint of finished runs")
    p.add_argument("--no-report", action="store_true", help="do not assemble the report after the parts")
    args = p.parse_args(argv)
    parts = [s.strip() for s in (args.part or "").split(",") if s.strip()]
    if parts == ["all"]:
        parts = list(PARTS)
    elif (args.quick or args.estimate) and not parts and not args.report:
        parts = [*PARTS, *EXTRA_PARTS]  # every part, the REPA ones included
    bad = [s for s in parts if s not in (*PARTS, *EXTRA_PARTS)]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {', '.join((*PARTS, *EXTRA_PARTS))} or all")
    if not parts and not args.report:
        p.error("give --part PART (lr, headline, long, ablations, std, all), --report, or --quick")
    args.parts = [s for s in (*PARTS, *EXTRA_PARTS) if s in parts]
    if args.quick:
        base = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fasterdit-latent-quick-"))
        args.work = str(base)
        args.results = args.results or str(base / "results")
        args.out = args.out or str(base / "report")
    args.work = args.work or "/tmp/latent_conv"
    args.results = args.results or str(common.REPO / "benchmarks" / "results" / "latent_convergence")
    args.out = args.out or str(common.DOCS)
    args.latents = args.latents or str(Path(args.work) / "latents")
    args.only_set = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else None
    known = [*HEADLINE, *ABLATIONS, *STD_LAWS, *REPA_VARIANTS]
    unknown = sorted((args.only_set or set()) - set(known))
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    common.setup_torch(args.threads)
    if args.estimate:
        for part in args.parts or list(PARTS):
            print_estimate(args, part, plan(args, part))
        return 0
    if args.parts:
        latents = prepare_latents(args)
        if set(args.parts) & set(EXTRA_PARTS):
            prepare_repa_latents(args)
        for part in args.parts:
            run_part(args, part, latents)
    if args.report or (args.parts and not args.no_report):
        md = report(args, Path(args.out))
        common.log(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
