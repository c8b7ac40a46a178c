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

Every finished run writes one small metrics file, ``benchmarks/results/latent_convergence/<part>/<name>.json``
(curves, converged-NFE evaluations, settings, lr, seed, machine, date, wall time, exact command), which is
committed; a run whose file exists is skipped, so parts and seeds can be run in different sessions
(``--only``, ``--seeds``). Run directories with checkpoints go to ``--work`` (default /tmp/latent_conv),
outside the repository. ``--report`` (and the end of every part) assembles
``docs/benchmarks/latent_convergence.md`` + ``.json`` + PNGs from whatever metrics files exist; a part without
them is reported as not run yet.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import convergence
import std_sweep

# ----------------------------------------------------------------------------------------------------
# the budget: every size is here (the lead engineer retunes them after measuring the training speed)
# ----------------------------------------------------------------------------------------------------

MODEL = "DiT-Ti/2"  # 6 blocks, width 192, 16 tokens on 8x8x4 latents (~4.2M parameters): configs/mnist-latent
RESOLUTION = 32  # the autoencoder's input side: 28x28 digits padded to 32x32 -> 8x8x4 latents
EMA_DECAY = 0.999  # with the (1+n)/(10+n) ramp, as configs/mnist-latent.yaml
GRAD_CLIP = 1.0
DEFAULT_LR = 1e-3  # the headline's lr for a recipe whose lr sweep has not run (the sweep's middle value)
LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # lr sweep: ≥ 3 values spanning 10x around each recipe's best
STD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # data multipliers on top of the autoencoder's scaling_factor
STD_LAWS = ("lognorm", "uniform")  # timestep laws of the std part (flow-linear path, velocity target)
HEADLINE = ("dit", "sit", "fasterdit")
ABLATIONS = ("fasterdit-no-dir", "fasterdit-uniform", "fasterdit-no-std")
PARTS = ("lr", "headline", "long", "ablations", "std")  # order of --part all (the lr sweep feeds the others)
SEVENTH = 1 / 7  # the paper's reading: FasterDiT at 1M steps vs DiT at 7M
SPEEDUP_TARGET = {"dit": 7.0, "sit": 1.5}  # issue #18's targets


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One part's budget. ``converged_at``: (variant or "*", fractions of ``steps``) whose checkpoints get the
    converged-NFE evaluation (they must fall on multiples of ``eval_every``, where checkpoints are kept)."""

    steps: int
    eval_every: int
    converged_at: tuple[tuple[str, tuple[float, ...]], ...] = ()
    model: str = MODEL
    batch_size: int = 64
    num_samples: int = 1000  # N of every FID (in training and at converged NFE)
    nfe: int = 25  # equal NFE of the in-training evaluation, every recipe
    warmup: int = 100  # linear lr warm-up steps

    def fractions(self, variant: str) -> tuple[float, ...]:
        d = dict(self.converged_at)
        return d.get(variant, d.get("*", ()))

    def converged_steps(self, variant: str) -> list[int]:
        """The checkpoint steps evaluated at converged NFE: each fraction snapped to a checkpoint step."""
        k = self.eval_every
        return sorted(
            {min(self.steps, max(k, round(f * self.steps / k) * k)) for f in self.fractions(variant)}
        )


#: per part. headline/ablations: 7 evaluations (one at 1/7 of the budget, the last three give dit's slope)
SIZES: dict[str, Sizes] = {
    "headline": Sizes(2100, 300, (("dit", (1.0,)), ("sit", (1.0,)), ("fasterdit", (SEVENTH, 3 / 7, 1.0)))),
    # one seed, 4x the headline's budget, to see whether dit's curve flattens (2,100 steps are too few
    # for dit; 3 seeds of this do not fit the machine), read like the headline
    "long": Sizes(8400, 1200, (("dit", (1.0,)), ("sit", (1.0,)), ("fasterdit", (SEVENTH, 3 / 7, 1.0)))),
    "lr": Sizes(1400, 350),  # shorter budget (2/3), no converged-NFE evaluation
    "ablations": Sizes(2100, 300, (("*", (1.0,)),)),
    "std": Sizes(2100, 1050),  # fixed budget; the mid-run evaluation shows whether the ranking is stable
}
SEEDS = {"headline": (0, 1, 2), "long": (0,), "lr": (0,), "ablations": (0, 1, 2), "std": (0,)}
#: a one-seed curve counts as flat when its last 3 evaluations fall by less than this fraction of its final
#: FID per 1,000 steps (with >= 2 seeds the drop is compared with the seed spread instead)
FLAT_REL_SLOPE = 0.02

#: the converged-NFE samplers: dit's own (DDPM, 250 respaced steps, learned variance) and the probability-
#: flow ODE solved adaptively (sampling_cost.md: the same FID at tolerance 1e-3 and 1e-4 on digits)
CONVERGED = {
    "ddpm": {"sampler": "ddpm", "steps": 250, "kwargs": {}},
    "flow": {"sampler": "dopri5", "steps": None, "kwargs": {"rtol": 1e-3, "atol": 1e-3}},
}

#: --quick: tiny everything (its own temp work and results dirs, report to a temp dir)
QUICK_SIZES: dict[str, Sizes] = {
    "headline": Sizes(
        4, 2, (("dit", (1.0,)), ("sit", (1.0,)), ("fasterdit", (0.5, 1.0))), "DiT-Mi/2", 8, 50, 4, 1
    ),
    "long": Sizes(
        6, 2, (("dit", (1.0,)), ("sit", (1.0,)), ("fasterdit", (0.4, 1.0))), "DiT-Mi/2", 8, 50, 4, 1
    ),
    "lr": Sizes(2, 2, (), "DiT-Mi/2", 8, 50, 4, 1),
    "ablations": Sizes(4, 2, (("*", (1.0,)),), "DiT-Mi/2", 8, 50, 4, 1),
    "std": Sizes(2, 2, (), "DiT-Mi/2", 8, 50, 4, 1),
}
QUICK_SEEDS = {"headline": (0, 1), "long": (0,), "lr": (0,), "ablations": (0,), "std": (0,)}
QUICK_LRS = (1e-3, 3e-3)
QUICK_LR_VARIANTS = ("dit",)  # sit and fasterdit keep the default lr: both branches of the lr pick run
QUICK_STD_SCALES = (0.5, 2.0)
QUICK_STD_LAWS = ("lognorm",)  # the recommendation is still computed for every law
QUICK_ABLATIONS = ("fasterdit-no-std",)  # the other two are convergence.py's overrides, run by its quick test
QUICK_SPLIT = "heldout"  # 500 digits to encode instead of 4,500 (see prepare_latents)
QUICK_CONVERGED = {
    "ddpm": {"sampler": "ddpm", "steps": 8, "kwargs": {}},
    "flow": {"sampler": "dopri5", "steps": None, "kwargs": {"rtol": 0.1, "atol": 0.1}},
}

#: the time model of the estimate, until finished runs have measured it (then their medians are used)
ASSUMED_TRAIN_IMG_S = 400.0  # DiT-Ti/2 on 8x8x4 latents, batch 64, idle 2-core CPU
ASSUMED_S_PER_NFE = 0.8  # seconds per NFE for 1000 samples (sampling + decoding)
EVAL_FIXED_S = 3.0  # per 1000 samples: classifier features, metrics
DOPRI5_NFE_GUESS = 60  # NFE of dopri5 at tolerance 1e-3 (sampling_cost.md: 44 on digits)
RUN_OVERHEAD_S = 15.0  # trainer setup, checkpoints, final sample grid, SNR plot
PART_LIMIT_MIN = 100.0

#: name -> (preset, recipe overrides, what it shows): convergence.py's variants; on latents "no std" means
#: the autoencoder's scaling_factor only, as DiT and SiT use it
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    **convergence.VARIANTS,
    "fasterdit-no-std": (
        "fasterdit",
        {"scaling.mode": "none"},
        "FasterDiT without data-std modulation (the autoencoder's scaling_factor only, as DiT/SiT)",
    ),
}
COLOURS = {**convergence.COLOURS, "lognorm": "#d62728", "uniform": "#2ca02c"}
EVAL_KEYS = (
    "step",
    "fid",
    "class_accuracy",
    "precision",
    "recall",
    "fid_real_at_n",
    "nfe",
    "sampler",
    "steps",
    "num_samples",
    "reference",
    "reference_n",
    "eval_seconds",
    "sample_seconds",
)


def std_overrides(law: str, k: float) -> dict[str, Any]:
    """The ``sit`` preset (flow-linear, velocity, no direction loss) with the timestep law of the row and the
    latents × k on top of the autoencoder's scaling_factor."""
    name, params = std_sweep.TIMESTEPS[law]
    return {
        "name": f"flow-{law}-x{k:g}",
        "timesteps": name,
        "timestep_params": dict(params),
        "scaling.mode": "scalar",
        "scaling.multiplier": float(k),
    }


def sampler_group(preset: str) -> str:
    return "ddpm" if preset == "dit" else "flow"


# ----------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    part: str
    name: str
    variant: str  # a VARIANTS key, or "flow-<law>" in the std part
    preset: str
    overrides: dict[str, Any]
    seed: int
    lr: float
    lr_source: str
    sizes: Sizes
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def converged(self) -> dict[str, Any]:
        return self.extra["converged"]

    @property
    def converged_steps(self) -> list[int]:
        return self.sizes.converged_steps(self.variant)


def _floats(s: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in s.split(",") if v.strip()) if s else default


def _ints(s: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip()) if s else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--part", default=None, help="lr, headline, long, ablations, std, all (comma-separated)")
    p.add_argument("--report", action="store_true", help="assemble the report from the metrics files")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every part (≈ 1 min); temp dirs")
    p.add_argument(
        "--estimate", action="store_true", help="print the plan and its estimated time; run nothing"
    )
    p.add_argument(
        "--only",
        default=None,
        help="variants of the part (dit,sit,fasterdit; fasterdit-no-dir,...; std: lognorm,uniform)",
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
    if parts == ["all"] or ((args.quick or args.estimate) and not parts and not args.report):
        parts = list(PARTS)
    bad = [s for s in parts if s not in PARTS]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)} or all")
    if not parts and not args.report:
        p.error("give --part PART (lr, headline, long, ablations, std, all), --report, or --quick")
    args.parts = [s for s in PARTS if s in parts]
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
    unknown = sorted((args.only_set or set()) - {*HEADLINE, *ABLATIONS, *STD_LAWS})
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {', '.join([*HEADLINE, *ABLATIONS, *STD_LAWS])}")
    return args


def sizes_for(args: argparse.Namespace, part: str) -> Sizes:
    s = (QUICK_SIZES if args.quick else SIZES)[part]
    over = {
        "steps": args.steps,
        "eval_every": args.eval_every,
        "batch_size": args.batch_size,
        "num_samples": args.num_samples,
        "nfe": args.nfe,
    }
    s = dataclasses.replace(s, **{k: v for k, v in over.items() if v is not None})
    if s.steps % s.eval_every:
        raise SystemExit(f"{part}: steps ({s.steps}) must be a multiple of eval_every ({s.eval_every})")
    return s


def results_dir(args: argparse.Namespace) -> Path:
    return Path(args.results)


def load_part(args: argparse.Namespace, part: str) -> list[dict[str, Any]]:
    d = results_dir(args) / part
    if not d.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def best_lrs(args: argparse.Namespace) -> dict[str, tuple[float, str]]:
    """Each recipe's headline lr: the lowest final FID of its finished lr-sweep runs, else DEFAULT_LR."""
    swept: dict[str, list[dict[str, Any]]] = {}
    for m in load_part(args, "lr"):
        if m["status"] == "ok" and m["evals"]:
            swept.setdefault(m["variant"], []).append(m)
    out = {}
    for v in HEADLINE:
        runs = swept.get(v, [])
        if not runs:
            out[v] = (DEFAULT_LR, f"default {DEFAULT_LR:g}: the lr sweep of {v} has not run")
            continue
        best = min(runs, key=lambda m: m["evals"][-1]["fid"])
        lrs = ", ".join(f"{m['lr']:g}" for m in sorted(runs, key=lambda m: m["lr"]))
        out[v] = (
            float(best["lr"]),
            f"lr sweep: lowest final FID among {lrs} ({best['evals'][-1]['fid']:.3g} after "
            f"{best['settings']['steps']} steps, seed {best['seed']})",
        )
    return out


def plan(args: argparse.Namespace, part: str) -> list[Job]:
    sizes = sizes_for(args, part)
    seeds = _ints(args.seeds, (QUICK_SEEDS if args.quick else SEEDS)[part])
    conv = QUICK_CONVERGED if args.quick else CONVERGED
    keep = args.only_set

    def wanted(v: str) -> bool:
        return keep is None or v in keep

    jobs = []
    if part == "lr":
        lrs = _floats(args.lrs, QUICK_LRS if args.quick else LRS)
        for v in QUICK_LR_VARIANTS if args.quick else HEADLINE:
            for lr in lrs:
                for s in seeds:
                    if wanted(v):
                        jobs.append(Job(part, f"{v}-lr{lr:g}-s{s}", v, v, {}, s, lr, "swept", sizes))
    elif part in ("headline", "long", "ablations"):
        lrs = best_lrs(args)
        for v in HEADLINE if part != "ablations" else QUICK_ABLATIONS if args.quick else ABLATIONS:
            preset, ov, _ = VARIANTS[v]
            lr, src = lrs[preset]
            for s in seeds:
                if wanted(v):
                    jobs.append(Job(part, f"{v}-s{s}", v, preset, dict(ov), s, lr, src, sizes))
    else:  # std
        lr, src = best_lrs(args)["sit"]
        for law in QUICK_STD_LAWS if args.quick else STD_LAWS:
            for k in _floats(args.scales, QUICK_STD_SCALES if args.quick else STD_SCALES):
                for s in seeds:
                    if wanted(law):
                        ov = std_overrides(law, k)
                        job = Job(part, f"{law}-x{k:g}-s{s}", f"flow-{law}", "sit", ov, s, lr, src, sizes)
                        job.extra.update(law=law, k=k)
                        jobs.append(job)
    for j in jobs:
        j.extra["converged"] = conv[sampler_group(j.preset)]
    return jobs


def settings_of(job: Job) -> dict[str, Any]:
    """What makes a run this run (compared before a metrics file is reused): no paths, no machine."""
    s = job.sizes
    nat = convergence.natural_sampler(job.preset)
    return {
        "part": job.part,
        "variant": job.variant,
        "preset": job.preset,
        "recipe_overrides": job.overrides,
        "seed": job.seed,
        "lr": job.lr,
        "model": s.model,
        "batch_size": s.batch_size,
        "steps": s.steps,
        "eval_every": s.eval_every,
        "num_samples": s.num_samples,
        "warmup_steps": s.warmup,
        "grad_clip": GRAD_CLIP,
        "ema_decay": EMA_DECAY,
        "cfg_scale": 1.0,
        "equal_nfe": {"sampler": nat, "steps": s.nfe},
        "converged": {**job.converged, "at_steps": job.converged_steps} if job.converged_steps else None,
        "data": "mnist-ae latents: fasterdit prepare --images mnist --vae mnist-ae "
        f"--resolution {RESOLUTION} --small pad",
        **{k: v for k, v in job.extra.items() if k in ("law", "k")},
    }


# ----------------------------------------------------------------------------------------------------
# time estimate
# ----------------------------------------------------------------------------------------------------


def measured_rates(args: argparse.Namespace, model: str) -> tuple[float, float, str]:
    """(train images/s, s per NFE per 1000 samples, source): medians over finished runs of this model."""
    img, per = [], []
    for part in PARTS:
        for m in load_part(args, part):
            if m["settings"]["model"] != model or m.get("quick"):
                continue
            sps = m.get("train", {}).get("samples_per_sec")
            if sps and math.isfinite(sps):
                img.append(float(sps))
            for e in m["evals"]:
                if e.get("eval_seconds") and e.get("nfe"):
                    per.append(
                        (e["eval_seconds"] - EVAL_FIXED_S * e["num_samples"] / 1000)
                        / (e["nfe"] * e["num_samples"] / 1000)
                    )
    if img and per:
        return (
            statistics.median(img),
            max(0.05, statistics.median(per)),
            f"measured in {len(img)} finished runs",
        )
    return ASSUMED_TRAIN_IMG_S, ASSUMED_S_PER_NFE, "assumed (no finished run of this model yet)"


def estimate_seconds(job: Job, img_s: float, s_per_nfe: float) -> float:
    s = job.sizes
    n = s.num_samples / 1000
    t = s.steps * s.batch_size / img_s + RUN_OVERHEAD_S
    t += (s.steps // s.eval_every) * n * (s.nfe * s_per_nfe + EVAL_FIXED_S)
    c = job.converged
    nfe = c["steps"] if c["sampler"] != "dopri5" else DOPRI5_NFE_GUESS
    t += len(job.converged_steps) * n * (nfe * s_per_nfe + EVAL_FIXED_S)
    return t


def print_estimate(args: argparse.Namespace, part: str, jobs: list[Job]) -> float:
    todo = [j for j in jobs if not (results_dir(args) / part / f"{j.name}.json").is_file() or args.fresh]
    if not jobs:
        common.log(f"part {part}: nothing selected")
        return 0.0
    img_s, s_nfe, src = measured_rates(args, jobs[0].sizes.model)
    secs = sum(estimate_seconds(j, img_s, s_nfe) for j in todo)
    s = jobs[0].sizes
    common.log(
        f"part {part}: {len(jobs)} runs ({len(jobs) - len(todo)} already have metrics files), "
        f"{s.model}, {s.steps} steps x batch {s.batch_size}, eval every {s.eval_every} (N={s.num_samples}, "
        f"NFE {s.nfe}); estimated {secs / 60:.0f} min for the {len(todo)} to run at {img_s:.0f} img/s and "
        f"{s_nfe:.2f} s per NFE per 1000 samples ({src})"
    )
    if secs / 60 > PART_LIMIT_MIN and not args.quick:
        common.log(
            f"  warning: over the {PART_LIMIT_MIN:.0f}-min budget of a part; split it with --seeds/--only"
        )
    for j in todo:
        common.log(
            f"  {j.name}: lr {j.lr:g} ({j.lr_source}); ≈ {estimate_seconds(j, img_s, s_nfe) / 60:.1f} min"
        )
    return secs


# ----------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------


def prepare_latents(args: argparse.Namespace) -> dict[str, Any]:
    """The mnist-ae latents of the MNIST training split (the held-out digits stay the FID reference).

    ``--quick`` encodes the 500 held-out digits instead of the 4,500 training digits, only to stay within
    its minute: the same command and code path, and its numbers mean nothing anyway."""
    from fasterdit.cli import main as cli

    out = Path(args.latents)
    manifest = out / "manifest.json"
    if not manifest.is_file():
        split = QUICK_SPLIT if args.quick else "train"
        common.log(f"preparing the mnist-ae latents of the MNIST {split} split in {out}")
        argv = [
            "prepare",
            "--images",
            "mnist",
            "--split",
            split,
            "--vae",
            "mnist-ae",
            "--resolution",
            str(RESOLUTION),
            "--small",
            "pad",
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "0",
        ]
        if cli(argv) != 0:
            raise SystemExit(f"fasterdit {' '.join(argv)} failed")
    m = json.loads(manifest.read_text())
    return {
        k: m.get(k)
        for k in (
            "vae",
            "scaling_factor",
            "shift_factor",
            "std",
            "channel_mean",
            "channel_std",
            "num_items",
            "channels",
            "resolution",
            "origin",
        )
    }


_DECODERS: dict[tuple[str, int | None], Any] = {}


def _decoder(vae: str, crop: int | None):
    from fasterdit.data.vae import latent_decoder

    if (vae, crop) not in _DECODERS:
        _DECODERS[(vae, crop)] = latent_decoder(vae, "cpu", crop=crop)
    return _DECODERS[(vae, crop)]


def converged_eval(run_dir: Path, step: int, conv: dict[str, Any], num_samples: int, seed: int) -> dict:
    """FID etc. of the EMA weights of the checkpoint at ``step`` with the converged-NFE sampler (same noise
    as the run's in-training evaluations), cached in the run dir so an interrupted part does not redo it."""
    from fasterdit.eval import evaluate
    from fasterdit.generate.loading import load_trained
    from fasterdit.run import checkpoint as ckpt_mod
    from fasterdit.train.data_order import derive_seed
    from fasterdit.train.trainer import EVAL_TAG

    key = {**conv, "num_samples": num_samples, "step": step}
    cache = run_dir / f"converged-{step:09d}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    ckpt = next((c for c in ckpt_mod.list_checkpoints(run_dir) if ckpt_mod.checkpoint_step(c) == step), None)
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint at step {step} for the converged-NFE evaluation")
    lm = load_trained(ckpt, ema=True, device="cpu")
    origin = lm.data.origin.to_dict()
    res = evaluate(
        lm.model,
        lm.recipe,
        dataset=origin["dataset"],
        num_samples=num_samples,
        sampler=conv["sampler"],
        steps=conv["steps"],
        cfg_scale=1.0,
        seed=derive_seed(seed, EVAL_TAG) % (2**31),
        sampler_kwargs=dict(conv["kwargs"]) or None,
        decode=_decoder(lm.data.vae, origin["resolution"]),
    )
    out = {k: res[k] for k in EVAL_KEYS if k in res}
    out.update(step=step, sampler_kwargs=conv["kwargs"])
    common.write_json(cache, {"key": key, "result": out})
    common.log(
        f"  converged NFE ({conv['sampler']}, NFE {out.get('nfe')}) at step {step}: FID {out['fid']:.3f}, "
        f"acc {out.get('class_accuracy', math.nan):.3f} ({out.get('sample_seconds', 0):.0f} s)"
    )
    return out


def run_job(args: argparse.Namespace, job: Job, latents: dict[str, Any]) -> dict[str, Any]:
    from fasterdit.run import checkpoint as ckpt_mod
    from fasterdit.train.trainer import Trainer, TrainingAborted

    path = results_dir(args) / job.part / f"{job.name}.json"
    settings = settings_of(job)
    if path.is_file() and not args.fresh:
        prev = json.loads(path.read_text())
        if prev["settings"] == settings:
            common.log(f"{job.part}/{job.name}: metrics file exists, skipped ({common.shown_path(path)})")
            return prev
        raise SystemExit(
            f"{path} holds a run with other settings than this invocation's (e.g. an older budget or lr); "
            "rerun with --fresh to replace it, or move it away"
        )
    s = job.sizes
    sampler = convergence.natural_sampler(job.preset)
    cfg = common.run_config(
        recipe=job.preset,
        recipe_overrides=job.overrides,
        model=s.model,
        dataset=args.latents,
        steps=s.steps,
        batch_size=s.batch_size,
        lr=job.lr,
        seed=job.seed,
        ema_decay=EMA_DECAY,
        warmup_steps=s.warmup,
        grad_clip=GRAD_CLIP,
        eval_every=s.eval_every,
        eval_num_samples=s.num_samples,
        eval_sampler=sampler,
        eval_steps=s.nfe,
        log_every=max(1, min(50, s.eval_every)),
        ckpt_every=s.eval_every,
        extra={
            "sample.sampler": sampler,
            "sample.per_class": 2 if args.quick else 8,
            "log.keep_last": s.steps // s.eval_every + 1,  # the converged-NFE checkpoints survive the run
        },
    )
    run_dir = Path(args.work) / "runs" / job.part / job.name
    if run_dir.exists() and (args.fresh or not convergence.resumable(run_dir, cfg, False)):
        shutil.rmtree(run_dir)  # another run of the same name: start clean
    common.log(f"{job.part}/{job.name}: lr {job.lr:g}, {s.steps} steps -> {run_dir}")
    t0 = time.time()
    status, error, sps = "ok", None, math.nan
    try:
        res = Trainer(cfg, run_dir, install_signal_handlers=False, show_progress=False).run()
        sps = float(res.samples_per_sec)
    except TrainingAborted as err:  # a diverged run is a result (e.g. the largest lr of the sweep)
        status, error = "diverged", str(err)
        common.log(f"  diverged: {err}")
    train_wall = time.time() - t0
    evals = [{k: e[k] for k in EVAL_KEYS if k in e} for e in common.read_metrics(run_dir, "eval")]
    train = common.read_metrics(run_dir, "train")
    t1 = time.time()
    conv = []
    if status == "ok":
        for step in job.converged_steps:
            conv.append(converged_eval(run_dir, step, job.converged, s.num_samples, job.seed))
    conv_wall = time.time() - t1
    if not args.keep_checkpoints and status == "ok":
        ckpt_mod.prune_checkpoints(run_dir, 1)  # the final one stays, for sampling or more evaluations
    finite = [
        float(r["samples_per_sec"]) for r in train[1:] if math.isfinite(r.get("samples_per_sec", math.nan))
    ]
    metrics = {
        "part": job.part,
        "name": job.name,
        "variant": job.variant,
        "preset": job.preset,
        "seed": job.seed,
        "lr": job.lr,
        "lr_source": job.lr_source,
        "status": status,
        "error": error,
        "quick": bool(args.quick),
        "settings": settings,
        "evals": evals,
        "converged": conv,
        "train": {
            "samples_per_sec": sps if math.isfinite(sps) else (statistics.median(finite) if finite else None),
            "final_loss": float(train[-1]["loss"]) if train else None,
            "skipped_total": int(train[-1].get("skipped_total", 0)) if train else None,
        },
        "wall_seconds": {"train_and_evals": round(train_wall, 1), "converged_evals": round(conv_wall, 1)},
        "machine": common.machine_facts(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": common.command_line(__file__),
        "latents": latents,
        "work_dir": str(run_dir),
    }
    common.write_json(path, metrics)
    last = evals[-1] if evals else {}
    common.log(
        f"{job.part}/{job.name}: {status}, {train_wall + conv_wall:.0f} s, final FID "
        f"{last.get('fid', math.nan):.3f} at step {last.get('step')} (load {common.loadavg()[0]:.2f})"
    )
    return metrics


def ae_floor(args: argparse.Namespace, num_samples: int) -> dict[str, Any]:
    """The autoencoder's reconstruction floor at N: FID of reconstructions of N real training digits (the
    same N digits whose raw FID is the real-data floor) against the held-out reference. Computed once."""
    import torch

    from fasterdit.data.autoencoder import MNIST_PADDED
    from fasterdit.data.embedded import center_crop_images, pad_images
    from fasterdit.data.vae import decode, encode_distribution, load_vae, vae_scaling_factor, vae_shift_factor
    from fasterdit.eval import evaluate_samples
    from fasterdit.eval.evaluate import embedded_split

    path = results_dir(args) / "floors.json"
    floors = json.loads(path.read_text()) if path.is_file() else {}
    key = f"mnist-ae/N={num_samples}"
    if key in floors:
        return floors[key]
    t0 = time.time()
    images, labels = embedded_split("mnist", "train")
    # the pick of fasterdit.eval's real-data floor (randperm, seed 0): reconstruction - real = the AE alone
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:num_samples]
    x, y = images[pick], labels[pick]
    vae = load_vae("mnist-ae", device="cpu")
    mean, logvar = encode_distribution(vae, pad_images(x, MNIST_PADDED))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    scale, shift = vae_scaling_factor(vae), vae_shift_factor(vae)
    out: dict[str, Any] = {"num_samples": num_samples, "reference": "mnist/heldout", "vae": "mnist-ae"}
    for name, z in (("posterior_sample", mean + torch.exp(0.5 * logvar) * eps), ("posterior_mean", mean)):
        rec = center_crop_images(decode(vae, (z - shift) * scale, batch_size=250), x.shape[-1])
        m = evaluate_samples(rec, y, "mnist")
        out[name] = {k: m[k] for k in ("fid", "class_accuracy", "precision", "recall") if k in m}
        out["fid_real_at_n"] = m.get("fid_real_at_n")
    out.update(
        machine=common.machine_facts()["cpu"],
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command=common.command_line(__file__),
        seconds=round(time.time() - t0, 1),
    )
    floors[key] = out
    common.write_json(path, floors)
    common.log(
        f"autoencoder floor at N={num_samples}: reconstructions FID {out['posterior_sample']['fid']:.3f} "
        f"(posterior mean {out['posterior_mean']['fid']:.3f}); real digits {out['fid_real_at_n']:.3f}"
    )
    return out


def snr_recommendations(args: argparse.Namespace) -> dict[str, Any]:
    """``fasterdit snr --recipe <setting at ×1> --data <latents> --recommend`` for each timestep law of the
    std part, by the median (the tool's default) and by the mass-in-window method. Stored beside the runs."""
    from fasterdit.cli import main as cli
    from fasterdit.diffusion.recipe import get_preset

    out: dict[str, Any] = {}
    snr_dir = Path(args.work) / "snr"
    snr_dir.mkdir(parents=True, exist_ok=True)
    for law in STD_LAWS:
        recipe = get_preset("sit").updated(std_overrides(law, 1.0))
        yml = snr_dir / f"flow-{law}.yaml"
        recipe.to_yaml(yml)
        out[law] = {}
        for method in ("median", "mass"):
            argv = [
                "snr",
                "--recipe",
                str(yml),
                "--data",
                args.latents,
                "--recommend",
                "--method",
                method,
                "--mc",
                "0",
                "--json",
            ]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli(argv)
            if rc != 0:
                raise SystemExit(f"fasterdit {' '.join(argv)} failed ({rc})")
            d = json.loads(buf.getvalue())
            rec = d["curves"][0]["recommendation"]
            out[law][method] = {
                "k": rec["k"],
                "median_before_nats": rec["median_before_nats"],
                "median_after_nats": rec["median_after_nats"],
                "mass_in_window_before": rec.get("mass_in_window_before"),
                "mass_in_window_after": rec.get("mass_in_window_after"),
                "window_nats": rec.get("window_nats"),
                "data_std": rec["data_std"],
                "command": f"fasterdit snr --recipe flow-{law}.yaml --data <latents> --recommend "
                f"--method {method}",
            }
        out[law]["recipe_yaml"] = recipe.to_yaml()
    common.write_json(results_dir(args) / "snr_recommend.json", out)
    for law in STD_LAWS:
        common.log(
            f"snr --recommend, flow + {law}: k = {out[law]['median']['k']:.3g} (median), "
            f"{out[law]['mass']['k']:.3g} (mass)"
        )
    return out


def run_part(args: argparse.Namespace, part: str, latents: dict[str, Any]) -> None:
    jobs = plan(args, part)
    print_estimate(args, part, jobs)
    t0 = time.time()
    if jobs:
        ae_floor(args, jobs[0].sizes.num_samples)
    if part == "std":
        snr_recommendations(args)
    for j in jobs:
        run_job(args, j, latents)
    common.log(f"part {part}: done in {(time.time() - t0) / 60:.1f} min")


# ----------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------


def as_run(m: dict[str, Any], kind: str = "evals") -> convergence.Run:
    r = convergence.Run(m["variant"], int(m["seed"]), Path(m.get("work_dir", "")), evals=list(m[kind]))
    r.samples_per_sec = (m.get("train") or {}).get("samples_per_sec") or math.nan
    return r


def by_variant(ms: list[dict[str, Any]], kind: str = "evals") -> dict[str, list[convergence.Run]]:
    out: dict[str, list[convergence.Run]] = {}
    for m in ms:
        if m["status"] == "ok" and m[kind]:
            out.setdefault(m["variant"], []).append(as_run(m, kind))
    for rs in out.values():
        rs.sort(key=lambda r: r.seed)
    return out


def value_at(steps: list[float], values: list[float], x: float) -> float | None:
    """The curve at step ``x`` (linear interpolation between evaluations); None outside the evaluations."""
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if math.isfinite(v)]
    if pts and abs(pts[0][0] - x) < 1e-6:
        return pts[0][1]
    for (s0, v0), (s1, v1) in itertools.pairwise(pts):
        if s0 <= x <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (x - s0) / (s1 - s0)
    if pts and abs(pts[-1][0] - x) < 1e-6:
        return pts[-1][1]
    return None


def spread(xs: list[float | None]) -> tuple[float, float] | None:
    """(min, max) of the finite values; None if there are none."""
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return (min(vals), max(vals)) if vals else None


def _bounds(xs: list[float]) -> tuple[float, float] | None:
    """(min, max) keeping infinities (a run that never reaches a target), dropping NaN."""
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return (min(vals), max(vals)) if vals else None


def speedup_reading(by: dict[str, list[convergence.Run]], base: str, budget: int) -> dict[str, Any] | None:
    """The paper's two readings against ``base`` on one kind of curve (equal or converged NFE): steps for
    fasterdit to reach base's final FID ÷ base's steps (per seed, seed s against seed s, and on seed-mean
    curves), and fasterdit's FID at 1/7 of base's budget against base's final FID."""
    if base not in by or "fasterdit" not in by:
        return None
    fast = {r.seed: r for r in by["fasterdit"]}
    per = []
    for b in by[base]:
        f = fast.get(b.seed)
        if f is None:
            continue
        d = convergence.speedup(b, f)
        d.update(seed=b.seed, fast_fid_at_seventh=value_at(f.steps, f.fids, budget / 7))
        per.append(d)
    pooled = convergence.speedup(convergence.mean_curve(by[base]), convergence.mean_curve(by["fasterdit"]))
    fs, fm, _, _ = convergence.mean_curve(by["fasterdit"])
    pooled["fast_fid_at_seventh"] = value_at(fs, fm, budget / 7)
    ratios = [d["speedup"] for d in per]
    return {
        "per_seed": per,
        "pooled": pooled,
        "speedup_range": spread(ratios),
        "not_reached_seeds": [d["seed"] for d in per if d["speedup"] is None],
        "seventh_step": budget / 7,
        "budget": budget,
        "base_points": len(convergence.mean_curve(by[base])[0]),
        "target": SPEEDUP_TARGET[base],
    }


def speedup_profile(by: dict[str, list[convergence.Run]], base: str) -> list[dict[str, Any]]:
    """The speed-up read at each of ``base``'s evaluations instead of only its last (seed-mean curves): the
    steps ``fasterdit`` needs to reach the FID ``base`` had at step s, against s. A ratio that grows along
    the curve says the final-FID speed-up understates the one at a later, flatter point; a steady one says
    the budget does not change the reading much."""
    if base not in by or "fasterdit" not in by:
        return []
    bs, bf, _, _ = convergence.mean_curve(by[base])
    fs, ff, _, _ = convergence.mean_curve(by["fasterdit"])
    out = []
    for step, fid in zip(bs, bf):
        n = common.steps_to_reach(fs, ff, fid)
        out.append(
            {
                "base_step": step,
                "target_fid": fid,
                "fast_steps": n,
                "speedup": step / n if n else None,
                "lower_bound": common.reach_is_bounded(fs, ff, fid),
            }
        )
    return out


def slope(steps: list[int], fids: list[float], last: int = 3) -> float:
    """Least-squares slope of the last ``last`` evaluations, FID per 1000 steps."""
    xs, ys = [s / 1000 for s in steps[-last:]], fids[-last:]
    if len(xs) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else math.nan


def flatness(by: dict[str, list[convergence.Run]]) -> dict[str, Any] | None:
    """Has dit's equal-NFE curve flattened? Slope of its last 3 evaluations, and the drop over its last two
    intervals against the seed spread of its final FID (a drop inside that spread is not resolved)."""
    if "dit" not in by:
        return None
    per = []
    for r in by["dit"]:
        drop = r.fids[-3] - r.fids[-1] if len(r.fids) >= 3 else math.nan
        per.append(
            {
                "seed": r.seed,
                "slope_per_1k": slope(r.steps, r.fids),
                "drop_last_two": drop,
                "final": r.fids[-1],
                "rel_slope_per_1k": slope(r.steps, r.fids) / r.fids[-1],
            }
        )
    finals = [p["final"] for p in per]
    sp = max(finals) - min(finals) if len(finals) > 1 else math.nan
    drop = common.mean_std([p["drop_last_two"] for p in per])[0]
    rel = per[0]["rel_slope_per_1k"]
    if len(per) > 1:
        flat, rule = math.isfinite(sp) and math.isfinite(drop) and drop <= sp, "seed spread"
    else:
        flat, rule = math.isfinite(rel) and -rel < FLAT_REL_SLOPE, "relative slope"
    return {"per_seed": per, "final_spread": sp, "mean_drop_last_two": drop, "flat": flat, "rule": rule}


def ablation_reading(
    headline: dict[str, list[convergence.Run]],
    abl: dict[str, list[convergence.Run]],
    headline_conv: dict[str, list[convergence.Run]],
    abl_conv: dict[str, list[convergence.Run]],
) -> dict[str, Any]:
    """Each ablation against fasterdit's seed range: final FID (equal NFE), final FID at converged NFE, and
    steps to reach dit's seed-mean final FID. An effect counts only if the ranges do not overlap."""
    target = convergence.mean_curve(headline["dit"])[1][-1] if "dit" in headline else None

    def values(runs: list[convergence.Run] | None, conv: list[convergence.Run] | None) -> dict[str, list]:
        runs, conv = runs or [], conv or []
        out = {"final_fid": [r.fids[-1] for r in runs], "converged_fid": [r.fids[-1] for r in conv]}
        out["steps_to_dit"] = [
            common.steps_to_reach(r.steps, r.fids, target) if target is not None else None for r in runs
        ]
        return out

    ref = values(headline.get("fasterdit"), headline_conv.get("fasterdit"))
    res: dict[str, Any] = {"fasterdit": ref, "dit_target": target, "ablations": {}}
    for v in ABLATIONS:
        if v not in abl:
            continue
        vals = values(abl[v], abl_conv.get(v))
        verdicts = {}
        for metric, xs in vals.items():
            ys = ref[metric]
            if metric == "steps_to_dit":  # None: dit's final FID never reached in the budget (worst)
                if target is None:
                    verdicts[metric] = "not measured (no dit runs)"
                    continue
                xs, ys = (
                    [math.inf if x is None else x for x in xs],
                    [math.inf if y is None else y for y in ys],
                )
            a, b = _bounds(xs), _bounds(ys)
            if a is None or b is None:
                verdicts[metric] = "not measured"
            elif len(ys) < 2:
                verdicts[metric] = "no seed spread of fasterdit yet (one seed)"
            elif a[0] > b[1]:
                verdicts[metric] = "worse without it, beyond the seed spread (effect)"
            elif a[1] < b[0]:
                verdicts[metric] = "better without it, beyond the seed spread (effect)"
            else:
                verdicts[metric] = "within the seed spread (no effect resolved)"
        res["ablations"][v] = {"values": vals, "verdict": verdicts, "seeds": [r.seed for r in abl[v]]}
    return res


def std_reading(ms: list[dict[str, Any]], recs: dict[str, Any] | None) -> dict[str, Any]:
    """FID after the fixed budget vs scale per law; the best two scales; whether the SNR tool's recommended
    scale (median and mass methods) rounds to one of them; what the sweep says it should recommend."""
    out: dict[str, Any] = {}
    for law in STD_LAWS:
        rows = sorted(
            (m for m in ms if m["settings"].get("law") == law and m["status"] == "ok" and m["evals"]),
            key=lambda m: m["settings"]["k"],
        )
        if not rows:
            continue
        ks = [float(m["settings"]["k"]) for m in rows]
        fids = [m["evals"][-1]["fid"] for m in rows]
        mids = [m["evals"][-2]["fid"] if len(m["evals"]) > 1 else None for m in rows]
        order = sorted(range(len(ks)), key=lambda i: fids[i])
        best2 = [ks[i] for i in order[:2]]
        d: dict[str, Any] = {"k": ks, "fid": fids, "fid_mid": mids, "best_two": best2, "best": ks[order[0]]}
        d["class_accuracy"] = [m["evals"][-1].get("class_accuracy") for m in rows]
        # refine the best scale: a parabola in log2 k through the best and its two neighbours (interior only)
        i = order[0]
        if 0 < i < len(ks) - 1:
            x = [math.log2(ks[j]) for j in (i - 1, i, i + 1)]
            y = [fids[j] for j in (i - 1, i, i + 1)]
            den = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
            a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / den
            b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / den
            d["best_refined"] = 2 ** (-b / (2 * a)) if a > 0 else ks[i]
        else:
            d["best_refined"] = ks[i]
            d["best_at_edge"] = True
        if recs and law in recs:
            d["recommend"] = {}
            for method in ("median", "mass"):
                r = recs[law][method]
                k = float(r["k"])
                nearest = min(ks, key=lambda kk: abs(math.log2(kk) - math.log2(k)))
                d["recommend"][method] = {
                    "k": k,
                    "nearest_scale": nearest,
                    "within_best_two": nearest in best2,
                    "octaves_from_best": math.log2(k) - math.log2(d["best_refined"]),
                    # the median λ the tool should have aimed at for the sweep's best scale
                    "median_for_best_nats": r["median_before_nats"] + 2 * math.log(d["best_refined"]),
                }
        out[law] = d
    return out


def lr_reading(ms: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in sorted(ms, key=lambda m: (m["variant"], m["lr"])):
        d = out.setdefault(m["variant"], {"lr": [], "fid": [], "class_accuracy": [], "status": []})
        d["lr"].append(m["lr"])
        ok = m["status"] == "ok" and m["evals"]
        d["fid"].append(m["evals"][-1]["fid"] if ok else None)
        d["class_accuracy"].append(m["evals"][-1].get("class_accuracy") if ok else None)
        d["status"].append(m["status"])
    for d in out.values():
        ok = [(f, lr) for f, lr in zip(d["fid"], d["lr"]) if f is not None]
        d["best_lr"] = min(ok)[1] if ok else None
        d["best_at_edge"] = d["best_lr"] in (min(d["lr"]), max(d["lr"])) if ok and len(d["lr"]) > 2 else None
    return out


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------


def _finish_figure(plt, fig, ax, path: Path) -> Path:
    """The house style shared by the report's single-axis figures: light grid, legend, no top/right
    spines; saved and closed."""
    ax.grid(True, which="both", color="0.92")
    ax.legend(frameon=False, fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _floor_lines(ax, floors: dict[str, Any] | None, real: float | None) -> None:
    if real is not None:
        ax.axhline(real, color="k", lw=0.8, ls="--", label=f"real digits at this N ({real:.3g})")
    if floors:
        rec = floors["posterior_sample"]["fid"]
        ax.axhline(rec, color="0.45", lw=0.9, ls="-.", label=f"autoencoder reconstructions ({rec:.3g})")


def real_floor(ms: list[dict[str, Any]]) -> float | None:
    for m in ms:
        for e in m["evals"]:
            if e.get("fid_real_at_n") is not None:
                return float(e["fid_real_at_n"])
    return None


def plot_headline(by, byc, floors, real, budget: int, path: Path, title: str) -> Path:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), dpi=150)
    for ax, b, what in ((axes[0], by, "equal NFE"), (axes[1], byc, "converged NFE")):
        for v in HEADLINE:
            if v not in b:
                continue
            st, m, lo, hi = convergence.mean_curve(b[v])
            c = COLOURS[v]
            n = len(b[v])
            ax.plot(st, m, color=c, lw=2, marker="o", ms=3.5, label=f"{v} ({n} seed{'s' * (n > 1)})")
            if n > 1:
                if len(st) > 1:
                    ax.fill_between(st, lo, hi, color=c, alpha=0.15, lw=0)
                else:
                    ax.errorbar(st, m, yerr=[[m[0] - lo[0]], [hi[0] - m[0]]], color=c, capsize=3)
        _floor_lines(ax, floors, real)
        if "dit" in b:
            ax.axhline(convergence.mean_curve(b["dit"])[1][-1], color=COLOURS["dit"], lw=0.8, ls=":")
        ax.axvline(budget * SEVENTH, color="0.7", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("training step (dotted: 1/7 of the budget)")
        ax.set_ylabel("FID (MNIST-classifier features)")
        ax.set_title(f"{title}: {what}", loc="left")
        ax.grid(True, which="both", color="0.92")
        ax.legend(frameon=False, fontsize=7)
    ax = axes[2]
    for v in HEADLINE:
        if v in by:
            st = by[v][0].steps
            accs = [statistics.mean(r.accs[r.steps.index(s)] for r in by[v] if s in r.steps) for s in st]
            ax.plot(st, accs, color=COLOURS[v], lw=2, marker="o", ms=3.5, label=v)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("class accuracy of conditional samples")
    ax.set_title("class accuracy (equal NFE, seed mean)", loc="left")
    ax.grid(True, color="0.92")
    ax.legend(frameon=False, fontsize=7)
    for a in axes:
        a.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ablations(headline, abl, floors, real, path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for v, b, ls in [("dit", headline, ":"), ("fasterdit", headline, "-")] + [
        (v, abl, "--") for v in ABLATIONS
    ]:
        if v not in b:
            continue
        st, m, lo, hi = convergence.mean_curve(b[v])
        ax.plot(st, m, color=COLOURS[v], lw=1.8, ls=ls, marker="o", ms=3, label=f"{v} ({len(b[v])} seeds)")
        if len(b[v]) > 1 and len(st) > 1:
            ax.fill_between(st, lo, hi, color=COLOURS[v], alpha=0.12, lw=0)
    _floor_lines(ax, floors, real)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (equal NFE)")
    ax.set_title("fasterdit and its ablations (bands: seed min–max)", loc="left")
    return _finish_figure(plt, fig, ax, path)


def plot_lr(lr: dict[str, Any], path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=150)
    for v, d in lr.items():
        pts = [(x, f) for x, f in zip(d["lr"], d["fid"]) if f is not None]
        if pts:
            ax.plot(*zip(*pts), color=COLOURS.get(v), marker="o", lw=1.8, label=v)
        for x, st in zip(d["lr"], d["status"]):
            if st != "ok":
                ax.axvline(x, color=COLOURS.get(v), lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("AdamW lr")
    ax.set_ylabel("final FID (equal NFE)")
    ax.set_title("lr sweep (shorter budget, seed 0)", loc="left")
    ax.grid(True, which="both", color="0.92")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_std(std: dict[str, Any], floors, real, path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for law, d in std.items():
        c = COLOURS[law]
        ax.plot(d["k"], d["fid"], color=c, marker="o", lw=1.8, label=f"flow + {law} t")
        for method, ls in (("median", "-"), ("mass", "--")):
            r = (d.get("recommend") or {}).get(method)
            if r:
                ax.axvline(r["k"], color=c, lw=0.9, ls=ls, alpha=0.7)
    ax.plot([], [], color="0.4", lw=0.9, ls="-", label="snr --recommend (median)")
    ax.plot([], [], color="0.4", lw=0.9, ls="--", label="snr --recommend (mass)")
    _floor_lines(ax, floors, real)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ks = sorted({k for d in std.values() for k in d["k"]})
    ax.set_xticks(ks, [f"×{k:g}" for k in ks])
    ax.set_xlabel("data scale k on top of the autoencoder's scaling_factor")
    ax.set_ylabel("FID after the fixed budget (equal NFE)")
    ax.set_title("data scale on latents", loc="left")
    return _finish_figure(plt, fig, ax, path)


def _x(v: float | None, suffix: str = "×") -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.2f}{suffix}"


def _range(r: tuple[float, float] | None, fmt: str = "{:.2f}×") -> str:
    return "–" if r is None else f"{fmt.format(r[0])}–{fmt.format(r[1])}"


def _sizes_line(m: dict[str, Any]) -> str:
    s = m["settings"]
    return (
        f"`{s['model']}`, {s['steps']} steps × batch {s['batch_size']}, evaluation every {s['eval_every']} "
        f"steps (N = {s['num_samples']}, {s['equal_nfe']['steps']} NFE)"
    )


def not_run(part: str) -> str:
    return f"*Not run yet:* `python benchmarks/latent_convergence.py --part {part}`.\n"


def speedup_section(name: str, rd: dict[str, Any] | None, base: str) -> list[str]:
    if rd is None:
        return [f"*{name}: needs `{base}` and `fasterdit` runs.*\n"]
    budget = rd["budget"]

    def row(label: str, d: dict[str, Any]) -> list[Any]:
        vs_budget = budget / d["fast_steps"] if d["fast_steps"] else None
        bound = "≥ " if d.get("bound") == "lower bound" and vs_budget else ""
        return [
            label,
            d["target_fid"],
            d["base_steps"],
            d["fast_steps"],
            convergence.fmt_speedup(d),
            f"{bound}{_x(vs_budget)}",
            d["fast_fid_at_seventh"],
        ]

    rows = [row(f"seed {d['seed']}", d) for d in rd["per_seed"]] + [row("seed-mean curves", rd["pooled"])]
    head = [
        "curves",
        f"{base} final FID",
        f"steps {base} needs to reach it",
        "fasterdit steps",
        "speed-up",
        f"{base}'s budget ÷ fasterdit steps",
        f"fasterdit FID at step {rd['seventh_step']:.0f} (1/7)",
    ]
    L = [common.md_table(head, rows)]
    L.append(
        f"\nSpeed-up = the steps `{base}` needs to first reach its own final FID (at most its budget of "
        f"{budget} steps; the definition of convergence.md) ÷ the steps `fasterdit` needs to reach that FID, "
        "by linear interpolation between evaluations; the next column divides the whole budget instead (the "
        "paper's 7M ÷ 1M)."
        + (
            f" `{base}` is evaluated at its final checkpoint only here, so its steps are its budget."
            if rd["base_points"] == 1
            else ""
        )
    )
    p = rd["pooled"]
    r = rd["speedup_range"]
    nr = rd["not_reached_seeds"]
    tgt = rd["target"]
    sp = p["speedup"]
    per = f", per seed {_range(r)}" if r else ""
    if nr:
        per += f"; seeds {nr} never reach {base}'s final FID"
    if sp is not None and sp >= tgt:
        verdict = "**met**"
    elif sp is not None and p.get("bound") == "lower bound":
        verdict = (
            f"**not resolved**: fasterdit is already below {base}'s final FID at its first evaluation, so "
            f"{sp:.2f}× is only a lower bound; evaluate earlier to measure it"
        )
    else:
        verdict = "**not met** (" + ("not reached" if sp is None else f"{sp / tgt:.0%} of it") + ")"
    L.append("")
    L.append(
        f"Speed-up over `{base}` ({name}): **{convergence.fmt_speedup(p)}** on the seed-mean curves{per}. "
        f"Target ≥ {tgt:g}×: {verdict}."
    )
    f7 = p["fast_fid_at_seventh"]
    if f7 is not None and base == "dit":
        L.append(
            f"At 1/7 of `dit`'s budget (step {rd['seventh_step']:.0f}) `fasterdit` scores FID {f7:.3g} "
            "against "
            f"`dit`'s final {p['target_fid']:.3g} (ratio {f7 / p['target_fid']:.2f}; ≤ 1 is the paper's 7×)."
        )
    L.append("")
    return L


def profile_section(profile: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The speed-up at every evaluation of each baseline (equal NFE, seed-mean curves)."""
    if not any(profile.values()):
        return []
    L = ["### The speed-up along the baseline's curve (equal NFE)\n"]
    for b, rows in profile.items():
        if not rows:
            continue
        cells = []
        for d in rows:
            ratio = "not reached" if d["speedup"] is None else f"{d['speedup']:.2f}×"
            if d["lower_bound"] and d["speedup"] is not None:
                ratio = f"≥ {ratio} (first evaluation)"
            cells.append([d["base_step"], d["target_fid"], d["fast_steps"], ratio])
        L += [
            common.md_table(
                [f"`{b}` step", f"`{b}` FID (seed mean)", "fasterdit steps to reach it", "speed-up"], cells
            ),
            "",
        ]
    L.append(
        "Each row reads the speed-up at an earlier point of the baseline's curve. A ratio that grows down "
        "the table says that the final-FID ratio above would grow with a longer budget; a steady one says "
        "the budget is not what keeps it from the target.\n"
    )
    return L


def _runs_by(ms: list[dict[str, Any]]) -> str:
    """The commands that made a part's runs (each metrics file holds its own)."""
    return "; ".join(f"`{c}`" for c in sorted({m["command"] for m in ms}))


def setup_section(
    all_ms: list[dict[str, Any]], floors: dict[str, Any] | None, real: float | None
) -> list[str]:
    L = ["## Where the runs ran\n"]
    machines: dict[tuple[str, str], dict[str, Any]] = {}
    for m in all_ms:
        mf = m["machine"]
        key = (f"{mf['cpu']}, {mf['logical_cores']} cores, torch {mf['torch']}", m["part"])
        e = machines.setdefault(key, {"runs": 0, "dates": []})
        e["runs"] += 1
        e["dates"].append(m["date"])
    if machines:
        rows = [
            [k[0], k[1], v["runs"], f"{min(v['dates'])} … {max(v['dates'])}"] for k, v in machines.items()
        ]
        L += [common.md_table(["machine", "part", "runs", "dates"], rows), ""]
    else:
        L.append("No run has finished yet.\n")
    L.append("## Setup\n")
    lat = next((m["latents"] for m in all_ms), None)
    if lat:
        chans = ", ".join(f"{v:.3f}" for v in lat["channel_std"])
        split = {"train": "training"}.get((lat.get("origin") or {}).get("split"), "held-out (--quick only)")
        L.append(
            f"* data: the {lat['num_items']} MNIST {split} digits, padded to {RESOLUTION}×{RESOLUTION} and "
            f"encoded by the shipped autoencoder `{lat['vae']}` to {lat['channels']}×{lat['resolution']}×"
            f"{lat['resolution']} latents; the shards hold the posterior, each batch draws a latent and "
            f"multiplies it by the autoencoder's `scaling_factor` {lat['scaling_factor']:.4g} (pooled std "
            f"{lat['std']:.3f}, per channel {chans})."
        )
    conv = CONVERGED
    L.append(
        "* one DiT, batch, optimizer (AdamW, no weight decay, linear warm-up then constant lr, gradient clip "
        f"{GRAD_CLIP:g}), EMA {EMA_DECAY:g} with the (1+n)/(10+n) ramp, label dropout 0.1, fp32, for every "
        "run of a part; only the recipe (and, in the lr part, the lr) changes. The seed sets the "
        "initialisation, data order, noise and timesteps.\n"
        "* evaluation: samples of the EMA weights decoded by the autoencoder, cropped to 28×28, scored "
        "by the shipped MNIST classifier against the held-out digits (`mnist/heldout`): FID in its "
        "feature space (not comparable with Inception FIDs), class accuracy of the class-conditional "
        "samples (balanced labels), precision/recall (k = 3). No guidance (cfg 1), as the paper's FID "
        "without guidance. The same noise at every evaluation of a run.\n"
        "* equal NFE (in training): `dit` DDPM ancestral sampling on the respaced chain with its learned "
        "variance, flow recipes Euler on the probability-flow ODE, with the NFE stated per part. Converged "
        f"NFE (after training): `dit` DDPM {conv['ddpm']['steps']} steps; flow recipes dopri5 (rtol = atol "
        f"= {conv['flow']['kwargs']['rtol']:g}).\n"
        "* floors at N: "
        + ("the real-data floor, " if real is not None else "")
        + "FID of N real training digits against the same reference (what a perfect model scores), and the "
        "autoencoder's reconstruction floor, FID of the same N digits after encoding (a posterior draw, as "
        "the DiT trains on) and decoding: no latent model can be expected below it.\n"
    )
    if floors:
        rows = [["real digits (other split)", floors.get("fid_real_at_n"), None, None, None]]
        for k in ("posterior_sample", "posterior_mean"):
            f = floors[k]
            name = f"reconstructions ({k.replace('_', ' ')})"
            rows.append([name, f["fid"], f.get("class_accuracy"), f.get("precision"), f.get("recall")])
        head = [f"floor at N = {floors['num_samples']}", "FID", "class acc", "precision", "recall"]
        L += [common.md_table(head, rows), ""]
    return L


#: the two parts read like the paper: their section titles and figure names
HEADLINE_PARTS = {
    "headline": ("Headline: dit, sit, fasterdit at their own best lr", "latent_convergence.png"),
    "long": (
        "Long budget: 4× the headline's steps (one seed), to see whether dit's curve flattens",
        "latent_convergence_long.png",
    ),
}


def headline_section(
    part: str,
    hl: list[dict[str, Any]],
    floors: dict[str, Any] | None,
    real: float | None,
    out: Path,
    res: dict,
) -> list[str]:
    title, figure = HEADLINE_PARTS[part]
    L = [f"## {title}\n"]
    if not hl:
        return [*L, not_run(part)]
    L.append(f"Runs by: {_runs_by(hl)}. Sizes: {_sizes_line(hl[0])}.\n")
    rows = []
    for v in HEADLINE:
        ms = [m for m in hl if m["variant"] == v]
        if ms:
            bad = ", ".join(f"seed {m['seed']} {m['status']}" for m in ms if m["status"] != "ok")
            seeds = ", ".join(str(m["seed"]) for m in ms)
            rows.append([f"`{v}`", seeds, f"{ms[0]['lr']:g}", ms[0]["lr_source"], bad or "ok"])
    L += [common.md_table(["recipe", "seeds", "lr", "lr from", "status"], rows), ""]
    if not any(m.get("quick") for m in hl):
        names = {m["name"] for m in hl}
        missing = [f"{v}-s{s}" for v in HEADLINE for s in SEEDS[part] if f"{v}-s{s}" not in names]
        if missing:
            L.append(f"Runs not made yet: {', '.join(missing)}.\n")
    by, byc = by_variant(hl), by_variant(hl, "converged")
    budget = hl[0]["settings"]["steps"]
    readings = {
        "equal": {b: speedup_reading(by, b, budget) for b in ("dit", "sit")},
        "converged": {b: speedup_reading(byc, b, budget) for b in ("dit", "sit")},
    }
    fl = flatness(by)
    profile = {b: speedup_profile(by, b) for b in ("dit", "sit")}
    res[part] = {"readings": readings, "flatness": fl, "profile_equal_nfe": profile}
    png = plot_headline(by, byc, floors, real, budget, out / figure, hl[0]["settings"]["model"])
    L.append(f"![FID vs steps at equal and converged NFE]({png.name})\n")
    for kind, label in (("equal", "equal NFE"), ("converged", "converged NFE")):
        for b in ("dit", "sit"):
            L.append(f"### Speed-up over `{b}`, {label}\n")
            L.extend(speedup_section(label, readings[kind][b], b))
    L += profile_section(profile)
    L.append("### Has dit's curve flattened?\n")
    if fl is None:
        L.append("*Needs the `dit` runs.*\n")
    else:
        head = [
            "dit seed",
            "final FID",
            "slope of the last 3 evaluations (FID / 1k steps)",
            "relative slope / 1k steps",
            "drop over the last two intervals",
        ]
        rows = [
            [
                p["seed"],
                p["final"],
                p["slope_per_1k"],
                f"{100 * p['rel_slope_per_1k']:.1f}%",
                p["drop_last_two"],
            ]
            for p in fl["per_seed"]
        ]
        L += [common.md_table(head, rows), ""]
        verdict = (
            "**flat** by this rule: the speed-up is read near dit's converged regime."
            if fl["flat"]
            else "**still falling**: dit's final FID is not its converged FID, so the speed-up against it is "
            "measured before convergence"
            + (
                "; the long part below runs 4× longer."
                if part == "headline"
                else "; it needs a longer budget."
            )
        )
        if fl["rule"] == "seed spread" and math.isfinite(fl["mean_drop_last_two"]):
            L.append(
                f"Mean drop over the last two evaluation intervals {fl['mean_drop_last_two']:.3g} against a "
                f"seed spread (max − min) of dit's final FID of {fl['final_spread']:.3g}: {verdict}\n"
            )
        elif fl["rule"] == "relative slope" and math.isfinite(fl["per_seed"][0]["rel_slope_per_1k"]):
            L.append(
                f"One seed, so no seed spread to compare with: the rule is a fall of less than "
                f"{100 * FLAT_REL_SLOPE:.0f}% of the final FID per 1,000 steps over the last 3 evaluations "
                f"(here {-100 * fl['per_seed'][0]['rel_slope_per_1k']:.1f}%): {verdict}\n"
            )
        else:
            L.append("Not decidable: it needs ≥ 3 evaluations per run.\n")
    if real is not None:
        low = [v for v in HEADLINE if v in by and convergence.mean_curve(by[v])[1][-1] < real]
        if low:
            L.append(
                f"Saturation check: {', '.join(low)} end below the real-data floor ({real:.3g}): the metric "
                "no longer separates them there.\n"
            )
    return L


def lr_section(ms: list[dict[str, Any]], out: Path, res: dict) -> list[str]:
    L = ["## lr sweep\n"]
    if not ms:
        return [*L, not_run("lr"), f"Until it has run, every recipe uses the default lr {DEFAULT_LR:g}.\n"]
    lr = lr_reading(ms)
    res["lr"] = lr
    L.append(
        f"Runs by: {_runs_by(ms)}. Sizes: {_sizes_line(ms[0])}, seed {ms[0]['seed']}; each recipe's headline "
        "lr is the one with the lowest final FID.\n"
    )
    lrs = sorted({x for d in lr.values() for x in d["lr"]})
    rows = []
    for v, d in lr.items():
        cells = []
        for x in lrs:
            if x not in d["lr"]:
                cells.append("–")
                continue
            i = d["lr"].index(x)
            ok = d["status"][i] == "ok" and d["fid"][i] is not None
            cell = f"{d['fid'][i]:.3g} ({d['class_accuracy'][i]:.2f})" if ok else d["status"][i]
            cells.append(f"**{cell}**" if x == d["best_lr"] else cell)
        rows.append([f"`{v}`", *cells, {True: "yes", False: "no"}.get(d["best_at_edge"], "–")])
    head = ["recipe", *[f"lr {x:g}: FID (acc)" for x in lrs], "best at the edge?"]
    L += [common.md_table(head, rows), ""]
    if not any(m.get("quick") for m in ms):
        names = {m["name"] for m in ms}
        planned = [f"{v}-lr{x:g}-s{s}" for v in HEADLINE for x in LRS for s in SEEDS["lr"]]
        missing = [n for n in planned if n not in names]
        if missing:
            L.append(f"Runs of the planned sweep not made: {', '.join(missing)}.\n")
    L.append("A best lr at the edge of the swept range means the sweep should be widened on that side.\n")
    png = plot_lr(lr, out / "latent_convergence_lr.png")
    L.append(f"![lr sweep]({png.name})\n")
    return L


def ablations_section(
    ab: list[dict[str, Any]], hl: list[dict[str, Any]], floors, real, out: Path, res: dict
) -> list[str]:
    L = ["## Ablations of fasterdit\n"]
    if not ab:
        return [*L, not_run("ablations")]
    L.append(
        f"Runs by: {_runs_by(ab)}. Sizes: {_sizes_line(ab[0])}; lr {ab[0]['lr']:g} ({ab[0]['lr_source']}).\n"
    )
    hfd = [m for m in hl if m["variant"] == "fasterdit"]

    def key(m: dict[str, Any]) -> tuple:
        s = m["settings"]
        return s["steps"], s["eval_every"], s["lr"], s["num_samples"], s["equal_nfe"]

    if hfd and key(hfd[0]) != key(ab[0]):
        L.append(
            "**Warning:** the ablations and the headline fasterdit runs differ in budget, lr, N or NFE; the "
            "comparison below is not like for like.\n"
        )
    L += [common.md_table(["variant", "what changes"], [[f"`{v}`", VARIANTS[v][2]] for v in ABLATIONS]), ""]
    if not hfd:
        return [*L, "*The fasterdit reference (headline part) has not run yet: no verdict.*\n"]
    by_h, by_a = by_variant(hl), by_variant(ab)
    ar = ablation_reading(by_h, by_a, by_variant(hl, "converged"), by_variant(ab, "converged"))
    res["ablations"] = ar
    names = {
        "final_fid": "final FID (equal NFE)",
        "converged_fid": "final FID (converged NFE)",
        "steps_to_dit": "steps to dit's final FID",
    }
    rows = []
    for metric, label in names.items():
        row = [label, _range(_bounds_of(ar["fasterdit"][metric]), "{:.3g}")]
        for v in ABLATIONS:
            a = ar["ablations"].get(v)
            if a is None:
                row.append("not run")
            else:
                rng = _range(_bounds_of(a["values"][metric]), "{:.3g}")
                row.append(f"{rng}: {a['verdict'].get(metric, '–')}")
        rows.append(row)
    L += [common.md_table(["metric (min–max over seeds)", "fasterdit", *[f"`{v}`" for v in ABLATIONS]], rows)]
    L.append(
        "\nAn ablation counts as an effect only when its range over seeds and fasterdit's do not overlap "
        "(steps: ∞ = never reached in the budget). On latents, `fasterdit-no-std` is the autoencoder's "
        "`scaling_factor` alone (pooled std 1), so it isolates the per-channel standardisation that the "
        "preset adds on top.\n"
    )
    png = plot_ablations(by_h, by_a, floors, real, out / "latent_convergence_ablations.png")
    L.append(f"![ablations]({png.name})\n")
    return L


def _bounds_of(xs: list[float | None]) -> tuple[float, float] | None:
    return _bounds([math.inf if x is None else x for x in xs])


def trivial_recommendation_note(recs: dict[str, Any]) -> list[str]:
    """Why a x1 recommendation is weak evidence when the latents already have std 1: say so in the report
    rather than let "the tool lands within the best two" read as more than it is."""
    picks = [recs[law][m] for law in recs for m in ("median", "mass") if m in recs[law]]
    if not picks:
        return []
    std = picks[0]["data_std"]
    if any(abs(math.log(r["k"])) > 0.05 for r in picks) or abs(math.log(std)) > 0.05:
        return []
    return [
        "A ×1 recommendation is close to a default here, not a finding: the autoencoder's "
        f"scaling_factor was fitted to these very latents (std after it: {std:.3g}), and with flow-linear "
        "both laws have their median at t = 0.5, where λ = 2 ln std ≈ 0, the centre of the tool's window. "
        "So the sweep tests whether that centre is the right target on these latents. Latents whose std "
        "after the factor is not 1 (a factor fitted on other data, another autoencoder) are where the "
        "recommendation does real work.\n"
    ]


#: per law of the std sweep, the 3-seed headline recipe whose final-FID spread is the noise yardstick:
#: `sit` *is* flow + uniform at x1; `fasterdit` is the nearest lognorm recipe with seeds (a proxy)
STD_NOISE_YARDSTICK = {"uniform": "sit", "lognorm": "fasterdit"}


def std_noise_note(sr: dict[str, Any], hl: list[dict[str, Any]]) -> list[str]:
    """The std sweep has one seed: set each row's gap between the recommended and the best scale against
    the seed spread of the closest 3-seed headline recipe, so a miss inside the noise is not read as one."""
    L = []
    for law, d in sr.items():
        r = (d.get("recommend") or {}).get("median")
        yard = STD_NOISE_YARDSTICK[law]
        finals = [m["evals"][-1]["fid"] for m in hl if m["variant"] == yard and m["evals"]]
        if r is None or len(finals) < 2:
            continue
        by_k = dict(zip(d["k"], d["fid"]))
        gap = by_k[r["nearest_scale"]] - min(d["fid"])
        spread = max(finals) - min(finals)
        how = "inside" if gap <= spread else "**beyond**"
        same = "the same setting" if law == "uniform" else "a proxy"
        L.append(
            f"* flow + {law}: ×{r['nearest_scale']:g} scores {gap:.3g} above the sweep's best scale, {how} "
            f"the seed spread of final FID of `{yard}` ({same}; {len(finals)} headline "
            f"seeds: {min(finals):.3g}–{max(finals):.3g}, spread {spread:.3g})."
        )
    if not L:
        return []
    head = (
        "The sweep has one seed per scale; the nearest yardstick of its noise is the headline's seed spread "
        "at the same budget:\n"
    )
    return [head, *L, ""]


def std_section(
    st: list[dict[str, Any]], hl: list[dict[str, Any]], recs, floors_all: dict, out: Path, res: dict
) -> list[str]:
    L = ["## Data scale on latents, and the SNR tool's recommendation\n"]
    if not st:
        return [*L, not_run("std")]
    sr = std_reading(st, recs)
    res["std"], res["snr_recommend"] = sr, recs
    L.append(
        f"Runs by: {_runs_by(st)}. Sizes: {_sizes_line(st[0])}; lr {st[0]['lr']:g} ({st[0]['lr_source']}), "
        f"seed {st[0]['seed']}. The `sit` preset (flow-linear, velocity, no direction loss) with lognorm(0, "
        "1) or uniform t and the latents × k on top of the autoencoder's scaling_factor (`scaling: {mode: "
        "scalar, multiplier: k}`).\n"
    )
    ks = sorted({k for d in sr.values() for k in d["k"]})
    rows = []
    for law, d in sr.items():
        by_k = {k: f for k, f in zip(d["k"], d["fid"])}
        rows.append(
            [f"flow + {law}"]
            + [
                ("–" if k not in by_k else f"**{by_k[k]:.3g}**" if k in d["best_two"] else f"{by_k[k]:.3g}")
                for k in ks
            ]
        )
    L += ["FID after the fixed budget (bold: the best two scales of the row):\n"]
    L += [common.md_table(["setting", *[f"×{k:g}" for k in ks]], rows), ""]
    if not recs:
        L.append("*The SNR recommendation has not been computed (it runs with the std part).*\n")
    else:
        rows = []
        for law, d in sr.items():
            for method, r in (d.get("recommend") or {}).items():
                rows.append(
                    [
                        f"flow + {law}",
                        method,
                        r["k"],
                        f"×{r['nearest_scale']:g}",
                        "yes" if r["within_best_two"] else "**no**",
                        f"×{d['best_refined']:.3g}",
                        f"{r['octaves_from_best']:+.2f}",
                        r["median_for_best_nats"],
                    ]
                )
        head = [
            "setting",
            "method",
            "recommended k",
            "nearest swept",
            "within the best two?",
            "sweep's best (parabola in log k)",
            "octaves off",
            "median λ at it (nats)",
        ]
        L.append("`fasterdit snr --recipe <setting at ×1> --data <latents> --recommend --method M`:\n")
        L += [common.md_table(head, rows), ""]
        for law, d in sr.items():
            r = (d.get("recommend") or {}).get("median")
            if r is None:
                continue
            edge = " (the best scale is at the edge of the sweep: widen it)" if d.get("best_at_edge") else ""
            if r["within_best_two"]:
                L.append(
                    f"* flow + {law}: the recommendation k = {r['k']:.3g} lands within the best two "
                    f"scales.{edge}"
                )
            else:
                best = ", ".join(f"×{k:g}" for k in d["best_two"])
                L.append(
                    f"* flow + {law}: the recommendation k = {r['k']:.3g} does **not** land within the best "
                    f"two scales ({best}); the sweep says k ≈ {d['best_refined']:.3g}, i.e. the tool should "
                    f"aim the median of λ at {r['median_for_best_nats']:+.2f} nats instead of the window "
                    f"centre.{edge}"
                )
        L.append("")
        L += std_noise_note(sr, hl)
        L += trivial_recommendation_note(recs)
    floors = floors_all.get(f"mnist-ae/N={st[0]['settings']['num_samples']}")
    png = plot_std(sr, floors, real_floor(st), out / "latent_convergence_std.png")
    L.append(f"![FID vs data scale]({png.name})\n")
    return L


def rerun_commands(args: argparse.Namespace) -> list[str]:
    """The report's opening: the commands that rerun the whole benchmark, part by part (each fits the
    100-min budget of one unattended run; --seeds/--only split a part further), then rebuild the report."""
    script = "python benchmarks/latent_convergence.py"
    if args.quick:
        cmds = [f"{script} --quick"]
    else:
        cmds = [f"{script} --part {p}" for p in PARTS] + [f"{script} --report"]
    return [
        "Command (from the repository root), one per part, that reruns every figure and table below; a run "
        "whose metrics file exists is skipped, so each part can be split with `--seeds` / `--only` across "
        "sessions:\n",
        "```bash",
        *cmds,
        "```\n",
        "The report is assembled from the committed per-run metrics files "
        f"(`{common.shown_path(results_dir(args))}`); each part's section names the commands that made its "
        "runs, and every metrics file holds the exact command, machine and date of its run.\n",
    ]


def report(args: argparse.Namespace, out: Path) -> Path:
    """docs/benchmarks/latent_convergence.md + .json + PNGs from the metrics files that exist."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {p: load_part(args, p) for p in PARTS}
    fpath = results_dir(args) / "floors.json"
    floors_all = json.loads(fpath.read_text()) if fpath.is_file() else {}
    rpath = results_dir(args) / "snr_recommend.json"
    recs = json.loads(rpath.read_text()) if rpath.is_file() else None
    facts = common.machine_facts()
    all_ms = [m for p in PARTS for m in parts[p]]
    n = next((m["settings"]["num_samples"] for m in parts["headline"] + all_ms), None)
    floors = floors_all.get(f"mnist-ae/N={n}") if n else None
    real = real_floor(parts["headline"] or all_ms) or (floors or {}).get("fid_real_at_n")
    res: dict[str, Any] = {"floors": floors, "real_floor": real}
    title = "Convergence on latents: dit vs sit vs fasterdit, tuned baselines, data std on latents"
    L = [f"# {title}\n", *rerun_commands(args), "## Report assembled on\n", common.facts_markdown(facts), ""]
    L += setup_section(all_ms, floors, real)
    L += headline_section("headline", parts["headline"], floors, real, out, res)
    L += headline_section("long", parts["long"], floors, real, out, res)
    L += lr_section(parts["lr"], out, res)
    L += ablations_section(parts["ablations"], parts["headline"], floors, real, out, res)
    L += std_section(parts["std"], parts["headline"], recs, floors_all, out, res)
    md = out / "latent_convergence.md"
    md.write_text("\n".join(L) + "\n")
    keys = (
        "part",
        "name",
        "variant",
        "seed",
        "lr",
        "lr_source",
        "status",
        "evals",
        "converged",
        "train",
        "wall_seconds",
        "date",
    )
    runs = [{**{k: m[k] for k in keys}, "cpu": m["machine"]["cpu"]} for m in all_ms]
    common.write_json(out / "latent_convergence.json", {"facts": facts, "analysis": res, "runs": runs})
    return md


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
        for part in args.parts:
            run_part(args, part, latents)
    if args.report or (args.parts and not args.no_report):
        md = report(args, Path(args.out))
        common.log(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
