"""The plan of ``latent_convergence.py``: every budget and setting of its parts, the runs each part
makes (with the lr each recipe takes from the lr sweep), what makes a run that run, and the estimate of how
long the runs take.

Why a module of its own: the sizes here are what gets retuned after measuring the training speed, and the
time estimate reads them, so a budget changes in one place, away from the running and report code; the
report reads the same constants (parts, seeds, targets), so what it says was planned is what was planned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import common
import convergence_curves as curves
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
#: parts run only when named (``--part repa-tune``...), never by ``--part all``: issue #29's REPA variants, in
#: their order (the tuning sweep picks each composed recipe's λ and depth; latent_convergence_repa.py)
EXTRA_PARTS = ("repa-tune", "repa", "repa-off")
REPA = ("sit+repa", "fasterdit+repa")
REPA_OFF = "fasterdit+repa-off"  # fasterdit+repa with the alignment off after REPA_OFF_AT of the budget
REPA_VARIANTS = (*REPA, REPA_OFF)
#: REPA on the test bed (docs/repa.md): the shipped self-supervised mnist-ssl encoder, features stored by
#: ``prepare --align-encoder`` on the 4x4 token grid of DiT-Ti/2; projector width 512 for the 192-wide DiT-Ti
#: (REPA's 2048 is for the 1152-wide XL: at 2048 the projector would cost more than the DiT-Ti step)
REPA_ENCODER = "mnist-ssl"
REPA_BASE_OVERRIDES = {"align.encoder": REPA_ENCODER, "align.projector_dim": 512}
#: REPA's own setting, the default until the tuning sweep has run: λ 0.5, depth 2 of DiT-Ti's 6 blocks
#: (REPA: 8 of 28 for XL/2, 4 of 12 for B/2, about a third)
REPA_DEFAULT = (0.5, 2)
#: the tuning sweep (part repa-tune, seed 0, SIZES["repa-tune"]): stage 1 λ over REPA_TUNE_WEIGHTS at depth
#: REPA_DEFAULT[1]; stage 2 the other depths REPA_TUNE_DEPTHS at stage 1's best λ: 3 + 2 runs per recipe
REPA_TUNE_WEIGHTS = (0.25, 0.5, 1.0)
REPA_TUNE_DEPTHS = (1, 3)
REPA_OFF_AT = 0.5  # HASTE-style: align.weight 0 from this fraction of the budget on (1050 of 2100 steps)
SEVENTH = 1 / 7  # the paper's reading: FasterDiT at 1M steps vs DiT at 7M
SPEEDUP_TARGET = {"dit": 7.0, "sit": 1.5, "sit+repa": 1.5}  # issue #18's targets; #29's over sit+repa


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
    # issue #29: the tuning sweep at 4/7 of the budget (the headline's first 4 evaluations, so the headline's
    # seed-0 runs at step 1200 are its λ = 0 reference); the composed runs at the headline's budget, read in
    # its tables: converged NFE where the headline reads sit (final) and fasterdit (1/7, 3/7, final)
    "repa-tune": Sizes(1200, 300),
    "repa": Sizes(2100, 300, (("sit+repa", (1.0,)), ("*", (SEVENTH, 3 / 7, 1.0)))),
    "repa-off": Sizes(2100, 300, (("*", (SEVENTH, 3 / 7, 1.0)),)),
}
SEEDS = {
    "headline": (0, 1, 2),
    "long": (0,),
    "lr": (0,),
    "ablations": (0, 1, 2),
    "std": (0,),
    "repa-tune": (0,),
    "repa": (0, 1, 2),
    "repa-off": (0, 1, 2),
}
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
    "repa-tune": Sizes(2, 2, (), "DiT-Mi/2", 8, 50, 4, 1),
    "repa": Sizes(4, 2, (("sit+repa", (1.0,)), ("*", (0.5, 1.0))), "DiT-Mi/2", 8, 50, 4, 1),
    "repa-off": Sizes(4, 2, (("*", (0.5, 1.0)),), "DiT-Mi/2", 8, 50, 4, 1),
}
QUICK_SEEDS = {
    "headline": (0, 1),
    "long": (0,),
    "lr": (0,),
    "ablations": (0,),
    "std": (0,),
    "repa-tune": (0,),
    "repa": (0,),
    "repa-off": (0,),
}
QUICK_LRS = (1e-3, 3e-3)
QUICK_LR_VARIANTS = ("dit",)  # sit and fasterdit keep the default lr: both branches of the lr pick run
QUICK_STD_SCALES = (0.5, 2.0)
QUICK_STD_LAWS = ("lognorm",)  # the recommendation is still computed for every law
QUICK_ABLATIONS = ("fasterdit-no-std",)
#: the quick tuning sweep: fasterdit+repa only (sit+repa keeps REPA's default: both branches of the pick run)
QUICK_REPA_TUNE = ("fasterdit+repa",)
QUICK_REPA_TUNE_WEIGHTS = (0.5, 1.0)
QUICK_REPA_TUNE_DEPTHS = (1,)  # the other two are convergence.py's overrides, run by its quick test
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
    **curves.VARIANTS,
    "fasterdit-no-std": (
        "fasterdit",
        {"scaling.mode": "none"},
        "FasterDiT without data-std modulation (the autoencoder's scaling_factor only, as DiT/SiT)",
    ),
}
VARIANTS.update(
    {
        f"{preset}+repa": (
            preset,
            dict(REPA_BASE_OVERRIDES),
            f"{preset} + REPA alignment (mnist-ssl features, its own tuned λ and depth)",
        )
        for preset in ("sit", "fasterdit")
    }
)
VARIANTS[REPA_OFF] = (
    "fasterdit",
    dict(REPA_BASE_OVERRIDES),
    f"fasterdit+repa with the alignment off from {REPA_OFF_AT:g} of the budget on (HASTE-style stage)",
)
COLOURS = {
    **curves.COLOURS,
    "lognorm": "#d62728",
    "uniform": "#2ca02c",
    "sit+repa": "#17becf",
    "fasterdit+repa": "#9467bd",
    REPA_OFF: "#8c564b",
}
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


def repa_latents(args: argparse.Namespace) -> str:
    """The repa part's prepared set: the latents of ``args.latents`` plus the stored mnist-ssl features."""
    return str(Path(args.latents).with_name(Path(args.latents).name + "-repa"))


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
    elif part in EXTRA_PARTS:  # issue #29: the tuning sweep, the composed runs, the alignment stopped
        from latent_convergence_repa import repa_jobs  # it reads this module's plan: imported when used

        jobs = repa_jobs(args, part, sizes, seeds, wanted)
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
    nat = curves.natural_sampler(job.preset)
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
        "data": job.extra.get(
            "data",
            f"mnist-ae latents: fasterdit prepare --images mnist --vae mnist-ae --resolution {RESOLUTION} "
            "--small pad",
        ),
        **{k: v for k, v in job.extra.items() if k in ("law", "k", "time_shift")},
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
        note = f"; {j.extra['note']}" if j.extra.get("note") else ""
        if j.extra.get("pending"):
            note = f"; pending: {j.extra['pending']}"
        common.log(
            f"  {j.name}: lr {j.lr:g} ({j.lr_source}){note}; "
            f"≈ {estimate_seconds(j, img_s, s_nfe) / 60:.1f} min"
        )
    return secs
