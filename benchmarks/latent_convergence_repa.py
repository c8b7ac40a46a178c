"""The REPA parts of ``latent_convergence.py`` (issue #29): REPA composed with the ``sit`` and ``fasterdit``
recipes on the unchanged DiT, each at its own tuned λ and block depth, and the alignment stopped half-way.

The protocol, fixed before any run (sizes in ``latent_convergence_plan.py``):

(a) ``--part repa-tune``, the tuning sweep, per composed recipe (``sit+repa``, ``fasterdit+repa``), seed 0,
    1,200 steps (4/7 of the headline's 2,100: its first four evaluations, 300 … 1,200, so the headline's
    seed-0 ``sit`` and ``fasterdit`` runs at those steps are the λ = 0 reference of the same seed; lr
    constant after warm-up, so a shorter run is the start of a longer one). The full grid λ ∈ {0.25, 0.5,
    1} × depth ∈ {1, 2, 3} of DiT-Ti's 6 blocks is 9 runs per recipe, too many for this 2-core CPU; the
    sweep is coordinate-wise instead, 3 + 2 runs per recipe:

    1. λ ∈ {0.25, 0.5, 1} at depth 2 (REPA's third of the blocks);
    2. depth ∈ {1, 3} at stage 1's best λ (stage 2 is planned when stage 1's three files exist).

    The score of a run is the mean of ln FID over its four evaluations (equal NFE), the area under its
    log-FID curve: the speed-up readings are made early (fasterdit reaches dit's final FID in ~500 steps),
    so a setting must be ahead over the whole stretch, not only at its end. The chosen setting is the
    lowest score among stage 2's three depths at the best λ. One seed: the report sets the gaps against the
    headline's seed spread at step 1,200. 10 runs, ≈ 60–75 min on the idle CPU.
(b) ``--part repa``: ``sit+repa`` and ``fasterdit+repa`` at their chosen settings, seeds 0, 1, 2, the
    headline's budget, lr (each preset's tuned lr), evaluations and converged-NFE checkpoints, so they are
    read in the headline's own tables. 6 runs, ≈ 70–80 min.
(c) ``--part repa-off``: ``fasterdit+repa`` at its chosen setting with ``recipe.stages`` setting
    ``align.weight`` to 0 from step 1,050 (half the budget) on (HASTE-style), seeds 0, 1, 2. 3 runs,
    ≈ 35–40 min. Its train log gives the per-step cost of the alignment within one run (on before step
    1,050, off after).

A composed recipe whose sweep has not run takes REPA's own setting (λ 0.5, depth 2), as a recipe whose lr
sweep has not run takes the default lr, and its metrics files say so; a sweep begun but not finished holds
the runs that need its choice back (the part stops and says which tuning runs are missing). The metrics
files hold the setting in ``recipe_overrides``, so a run at another setting is refused, never mixed in.

Why a module of its own: the sweep's two stages and the choice it feeds the other two parts are the REPA
parts' whole plan; ``latent_convergence_plan.py`` keeps the sizes and the plan of the issue #18 parts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from latent_convergence_plan import (
    QUICK_REPA_TUNE,
    QUICK_REPA_TUNE_DEPTHS,
    QUICK_REPA_TUNE_WEIGHTS,
    QUICK_SEEDS,
    REPA,
    REPA_DEFAULT,
    REPA_ENCODER,
    REPA_OFF,
    REPA_OFF_AT,
    REPA_TUNE_DEPTHS,
    REPA_TUNE_WEIGHTS,
    RESOLUTION,
    SEEDS,
    VARIANTS,
    Job,
    Sizes,
    best_lrs,
    load_part,
    repa_latents,
)

REPA_DATA = (
    f"mnist-ae latents with {REPA_ENCODER} features: fasterdit prepare --images mnist --vae mnist-ae "
    f"--resolution {RESOLUTION} --small pad --align-encoder {REPA_ENCODER}"
)


def tune_name(variant: str, weight: float, depth: int, seed: int) -> str:
    return f"{variant}-w{weight:g}-d{depth}-s{seed}"


def tune_grid(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """(recipes swept, stage 1's λ values, stage 2's depths)."""
    if args.quick:
        return QUICK_REPA_TUNE, QUICK_REPA_TUNE_WEIGHTS, QUICK_REPA_TUNE_DEPTHS
    return REPA, REPA_TUNE_WEIGHTS, REPA_TUNE_DEPTHS


def tune_score(m: dict[str, Any] | None) -> float:
    """Mean ln FID over a tuning run's evaluations (lower is better); inf for a diverged or empty run."""
    if m is None or m["status"] != "ok" or not m["evals"]:
        return math.inf
    fids = [e["fid"] for e in m["evals"]]
    if not all(math.isfinite(f) and f > 0 for f in fids):
        return math.inf
    return sum(math.log(f) for f in fids) / len(fids)


def tune_choice(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The λ and depth a composed recipe runs at, from the committed tuning files (seed 0).

    ``state``: ``tuned`` (both stages complete), ``default`` (no tuning run of this recipe: REPA's own
    setting), ``stage 2`` (stage 1 complete, its best λ known, stage 2 to run) or ``stage 1`` (to run or
    incomplete). ``runs`` maps each planned tuning run to its metrics (None when missing)."""
    _, weights, depths = tune_grid(args)
    seed = (QUICK_SEEDS if args.quick else SEEDS)["repa-tune"][0]
    d0 = REPA_DEFAULT[1]
    files = {m["name"]: m for m in load_part(args, "repa-tune") if m["variant"] == variant}
    stage1 = {(w, d0): files.get(tune_name(variant, w, d0, seed)) for w in weights}
    out: dict[str, Any] = {"variant": variant, "seed": seed, "weights": list(weights)}
    out["depths"] = [d0, *depths]
    if not files:
        w, d = REPA_DEFAULT
        src = f"REPA's default λ {w:g}, depth {d}: the tuning sweep of {variant} has not run"
        return {**out, "state": "default", "weight": w, "depth": d, "source": src, "runs": {}}
    runs = dict(stage1)
    if any(m is None for m in stage1.values()):
        return {**out, "state": "stage 1", "weight": None, "depth": None, "source": None, "runs": runs}
    best_w = min(weights, key=lambda w: (tune_score(stage1[(w, d0)]), abs(w - REPA_DEFAULT[0])))
    stage2 = {(best_w, d): files.get(tune_name(variant, best_w, d, seed)) for d in depths}
    runs.update(stage2)
    if any(m is None for m in stage2.values()):
        return {**out, "state": "stage 2", "weight": best_w, "depth": None, "source": None, "runs": runs}
    at_best = {d: m for (w, d), m in runs.items() if w == best_w}
    best_d = min(at_best, key=lambda d: (tune_score(at_best[d]), abs(d - d0)))
    best = at_best[best_d]
    src = (
        f"tuning sweep: lowest mean ln FID over {len(best['evals'])} evaluations to step "
        f"{best['settings']['steps']} (seed {seed}) among λ {', '.join(f'{w:g}' for w in weights)} "
        f"at depth {d0}, then depths {', '.join(str(d) for d in sorted(at_best))} at λ {best_w:g}"
    )
    return {**out, "state": "tuned", "weight": best_w, "depth": best_d, "source": src, "runs": runs}


def _job(part, name, variant, seed, lr, lr_src, sizes, weight, depth, extra_ov=None) -> Job:
    preset, ov, _ = VARIANTS[variant]
    ov = {**ov, "align.weight": weight, "align.depth": depth, **(extra_ov or {})}
    return Job(part, name, variant, preset, ov, seed, lr, lr_src, sizes)


def repa_jobs(
    args: argparse.Namespace, part: str, sizes: Sizes, seeds: tuple[int, ...], wanted: Callable[[str], bool]
) -> list[Job]:
    """The runs of ``repa-tune``, ``repa`` or ``repa-off``. A run that needs a choice the sweep has not made
    yet is planned as ``pending`` (at REPA's default, for the estimate only): ``run_part`` never runs it."""
    lrs = best_lrs(args)
    jobs: list[Job] = []
    d0 = REPA_DEFAULT[1]
    if part == "repa-tune":
        swept, weights, depths = tune_grid(args)
        for v in swept:
            if not wanted(v):
                continue
            lr, src = lrs[VARIANTS[v][0]]
            ch = tune_choice(args, v)
            for s in seeds:
                for w in weights:
                    jobs.append(_job(part, tune_name(v, w, d0, s), v, s, lr, src, sizes, w, d0))
                for d in depths:
                    w = ch["weight"]
                    if ch["state"] in ("stage 2", "tuned"):
                        jobs.append(_job(part, tune_name(v, w, d, s), v, s, lr, src, sizes, w, d))
                    else:
                        j = _job(part, f"{v}-w(best)-d{d}-s{s}", v, s, lr, src, sizes, REPA_DEFAULT[0], d)
                        j.extra["pending"] = f"at stage 1's best λ, once the {len(weights)} λ runs exist"
                        jobs.append(j)
        for j in jobs:
            j.extra.update(source=repa_latents(args), data=REPA_DATA)
            ov = j.overrides
            j.extra.setdefault("note", f"λ {ov['align.weight']:g}, depth {ov['align.depth']}")
        return jobs
    variants = REPA if part == "repa" else (REPA_OFF,)
    for v in variants:
        if not wanted(v):
            continue
        base = "fasterdit+repa" if v == REPA_OFF else v
        ch = tune_choice(args, base)
        lr, src = lrs[VARIANTS[v][0]]
        w, d = (ch["weight"], ch["depth"]) if ch["state"] in ("tuned", "default") else REPA_DEFAULT
        extra_ov = None
        if v == REPA_OFF:
            extra_ov = {"stages": [{"at": round(REPA_OFF_AT * sizes.steps), "set": {"align.weight": 0}}]}
        for s in seeds:
            j = _job(part, f"{v}-s{s}", v, s, lr, src, sizes, w, d, extra_ov)
            j.extra.update(source=repa_latents(args), data=REPA_DATA)
            if ch["state"] in ("tuned", "default"):
                j.extra["align_source"] = ch["source"]
                j.extra["note"] = f"λ {w:g}, depth {d} ({ch['source']})"
            else:
                missing = [tune_name(base, *k, ch["seed"]) for k, m in ch["runs"].items() if m is None]
                j.extra["pending"] = (
                    f"the tuning sweep of {base} is at {ch['state']}; missing: "
                    f"{', '.join(missing) or 'stage 2 runs'} (python benchmarks/latent_convergence.py "
                    "--part repa-tune)"
                )
            jobs.append(j)
    return jobs
