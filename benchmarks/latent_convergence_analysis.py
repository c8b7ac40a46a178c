"""The readings ``latent_convergence.py``'s report draws its verdicts from: speed-ups at equal and converged
NFE, whether dit's curve has flattened, the ablations against fasterdit's seed range, the data-scale sweep
against the SNR tool's recommendation, and the lr sweep.

Why a module of its own: these are pure functions of the metrics files (no training, no plotting, no
Markdown), so the tests check them on hand-made curves and the report only formats what they return.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import common
import convergence_curves as curves
from latent_convergence_plan import ABLATIONS, FLAT_REL_SLOPE, SPEEDUP_TARGET, STD_LAWS


def as_run(m: dict[str, Any], kind: str = "evals") -> curves.Run:
    r = curves.Run(m["variant"], int(m["seed"]), Path(m.get("work_dir", "")), evals=list(m[kind]))
    r.samples_per_sec = (m.get("train") or {}).get("samples_per_sec") or math.nan
    return r


def by_variant(ms: list[dict[str, Any]], kind: str = "evals") -> dict[str, list[curves.Run]]:
    out: dict[str, list[curves.Run]] = {}
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


def speedup_reading(
    by: dict[str, list[curves.Run]], base: str, budget: int, fast: str = "fasterdit"
) -> dict[str, Any] | None:
    """The paper's two readings against ``base`` on one kind of curve (equal or converged NFE): steps for
    ``fast`` (fasterdit, or a composed recipe of issue #29) to reach base's final FID ÷ base's steps (per
    seed, seed s against seed s, and on seed-mean curves), and its FID at 1/7 of base's budget against
    base's final FID."""
    if base not in by or fast not in by:
        return None
    by_seed = {r.seed: r for r in by[fast]}
    per = []
    for b in by[base]:
        f = by_seed.get(b.seed)
        if f is None:
            continue
        d = curves.speedup(b, f)
        d.update(seed=b.seed, fast_fid_at_seventh=value_at(f.steps, f.fids, budget / 7))
        per.append(d)
    pooled = curves.speedup(curves.mean_curve(by[base]), curves.mean_curve(by[fast]))
    fs, fm, _, _ = curves.mean_curve(by[fast])
    pooled["fast_fid_at_seventh"] = value_at(fs, fm, budget / 7)
    ratios = [d["speedup"] for d in per]
    return {
        "per_seed": per,
        "pooled": pooled,
        "speedup_range": spread(ratios),
        "not_reached_seeds": [d["seed"] for d in per if d["speedup"] is None],
        "seventh_step": budget / 7,
        "budget": budget,
        "base_points": len(curves.mean_curve(by[base])[0]),
        "target": SPEEDUP_TARGET.get(base),
    }


def speedup_profile(by: dict[str, list[curves.Run]], base: str) -> list[dict[str, Any]]:
    """The speed-up read at each of ``base``'s evaluations instead of only its last (seed-mean curves): the
    steps ``fasterdit`` needs to reach the FID ``base`` had at step s, against s. A ratio that grows along
    the curve says the final-FID speed-up understates the one at a later, flatter point; a steady one says
    the budget does not change the reading much."""
    if base not in by or "fasterdit" not in by:
        return []
    bs, bf, _, _ = curves.mean_curve(by[base])
    fs, ff, _, _ = curves.mean_curve(by["fasterdit"])
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


def flatness(by: dict[str, list[curves.Run]]) -> dict[str, Any] | None:
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
    headline: dict[str, list[curves.Run]],
    abl: dict[str, list[curves.Run]],
    headline_conv: dict[str, list[curves.Run]],
    abl_conv: dict[str, list[curves.Run]],
) -> dict[str, Any]:
    """Each ablation against fasterdit's seed range: final FID (equal NFE), final FID at converged NFE, and
    steps to reach dit's seed-mean final FID. An effect counts only if the ranges do not overlap."""
    target = curves.mean_curve(headline["dit"])[1][-1] if "dit" in headline else None

    def values(runs: list[curves.Run] | None, conv: list[curves.Run] | None) -> dict[str, list]:
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


def real_floor(ms: list[dict[str, Any]]) -> float | None:
    for m in ms:
        for e in m["evals"]:
            if e.get("fid_real_at_n") is not None:
                return float(e["fid_real_at_n"])
    return None


def bounds_of(xs: list[float | None]) -> tuple[float, float] | None:
    return _bounds([math.inf if x is None else x for x in xs])
