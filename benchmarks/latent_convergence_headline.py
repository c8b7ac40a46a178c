"""The headline and long-budget sections of ``latent_convergence.py``'s report: the paper's two readings
of fasterdit against dit and sit at equal and at converged NFE, the speed-up along the baseline's curve,
and whether dit's curve has flattened.

Why a module of its own: these two parts are read like the paper and share every table and verdict, which
is most of the report's text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import common
import convergence_curves as curves
from latent_convergence_analysis import by_variant, flatness, speedup_profile, speedup_reading
from latent_convergence_markdown import fmt_range, fmt_times, not_run, runs_by, sizes_line
from latent_convergence_plan import FLAT_REL_SLOPE, HEADLINE, SEEDS
from latent_convergence_plots import plot_headline
from latent_convergence_repa_report import COMPOSED_ROWS, add_composed_readings, composed_recipe_rows


def _verdict(p: dict[str, Any], tgt: float, base: str, fast: str) -> str:
    sp = p["speedup"]
    if sp is not None and sp >= tgt:
        return "**met**"
    if sp is not None and p.get("bound") == "lower bound":
        return (
            f"**not resolved**: {fast} is already below {base}'s final FID at its first evaluation, so "
            f"{sp:.2f}× is only a lower bound; evaluate earlier to measure it"
        )
    return "**not met** (" + ("not reached" if sp is None else f"{sp / tgt:.0%} of it") + ")"


def speedup_section(
    name: str,
    rd: dict[str, Any] | None,
    base: str,
    fast: str = "fasterdit",
    composed: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """One speed-up table of ``fast`` over ``base``, with issue #29's composed recipes as rows of their own
    (``composed``: variant -> its reading, or a ``not run yet`` record) and a verdict line each."""
    if rd is None or rd.get("status", "ok") != "ok":
        why = f" ({rd['status']}: `{rd['command']}`)" if rd else ""
        return [f"*{name}: needs `{base}` and `{fast}` runs{why}.*\n"]
    budget = rd["budget"]

    def row(label: str, d: dict[str, Any]) -> list[Any]:
        vs_budget = budget / d["fast_steps"] if d["fast_steps"] else None
        bound = "≥ " if d.get("bound") == "lower bound" and vs_budget else ""
        return [
            label,
            d["target_fid"],
            d["base_steps"],
            d["fast_steps"],
            curves.fmt_speedup(d),
            f"{bound}{fmt_times(vs_budget)}",
            d["fast_fid_at_seventh"],
        ]

    rows = [row(f"seed {d['seed']}", d) for d in rd["per_seed"]] + [row("seed-mean curves", rd["pooled"])]
    for v, c in (composed or {}).items():
        if c.get("status", "ok") != "ok":
            rows.append([f"`{v}`", c["status"], *["–"] * 5])
            continue
        rows += [row(f"`{v}`, seed {d['seed']}", d) for d in c["per_seed"]]
        rows.append(row(f"`{v}`, seed-mean curves", c["pooled"]))
    head = [
        "curves",
        f"{base} final FID",
        f"steps {base} needs to reach it",
        f"{fast} steps",
        "speed-up",
        f"{base}'s budget ÷ {fast} steps",
        f"{fast} FID at step {rd['seventh_step']:.0f} (1/7)",
    ]
    L = [common.md_table(head, rows)]
    L.append(
        f"\nSpeed-up = the steps `{base}` needs to first reach its own final FID (at most its budget of "
        f"{budget} steps; the definition of convergence.md) ÷ the steps `{fast}` needs to reach that FID, "
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
    per = f", per seed {fmt_range(r)}" if r else ""
    if nr:
        per += f"; seeds {nr} never reach {base}'s final FID"
    L.append("")
    L.append(
        f"Speed-up over `{base}` ({name}): **{curves.fmt_speedup(p)}** on the seed-mean curves{per}. "
        f"Target ≥ {tgt:g}×: {_verdict(p, tgt, base, fast)}."
    )
    f7 = p["fast_fid_at_seventh"]
    if f7 is not None and base == "dit":
        L.append(
            f"At 1/7 of `dit`'s budget (step {rd['seventh_step']:.0f}) `{fast}` scores FID {f7:.3g} "
            "against "
            f"`dit`'s final {p['target_fid']:.3g} (ratio {f7 / p['target_fid']:.2f}; ≤ 1 is the paper's 7×)."
        )
    if composed:
        L.append("")
    for v, c in (composed or {}).items():
        if c.get("status", "ok") != "ok":
            L.append(f"* `{v}` over `{base}`: {c['status']} (`{c['command']}`).")
            continue
        cp, cr = c["pooled"], c["speedup_range"]
        line = f"* `{v}` over `{base}` ({name}): **{curves.fmt_speedup(cp)}** on the seed-mean curves"
        line += f", per seed {fmt_range(cr)}" if cr else ""
        if c["not_reached_seeds"]:
            line += f"; seeds {c['not_reached_seeds']} never reach {base}'s final FID"
        if c.get("target") is not None:
            line += f". Issue #29's goal ≥ {c['target']:g}×: {_verdict(cp, c['target'], base, v)}"
        L.append(line + ".")
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
    composed: list[dict[str, Any]] | None = None,
) -> list[str]:
    """``composed``: the runs of issue #29's REPA parts (headline part only), read in the same tables."""
    title, figure = HEADLINE_PARTS[part]
    L = [f"## {title}\n"]
    if not hl:
        return [*L, not_run(part)]
    L.append(f"Runs by: {runs_by(hl)}. Sizes: {sizes_line(hl[0])}.\n")
    rows = []
    for v in HEADLINE:
        ms = [m for m in hl if m["variant"] == v]
        if ms:
            bad = ", ".join(f"seed {m['seed']} {m['status']}" for m in ms if m["status"] != "ok")
            seeds = ", ".join(str(m["seed"]) for m in ms)
            rows.append([f"`{v}`", seeds, f"{ms[0]['lr']:g}", ms[0]["lr_source"], bad or "ok"])
    if composed is not None:
        rows += composed_recipe_rows(composed)
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
    bases = ("dit", "sit")
    if composed is not None:  # issue #29: rows of the composed recipes, and the reading over sit+repa
        add_composed_readings(readings, hl, composed, budget)
        bases = ("dit", "sit", "sit+repa")
    fl = flatness(by)
    profile = {b: speedup_profile(by, b) for b in ("dit", "sit")}
    res[part] = {"readings": readings, "flatness": fl, "profile_equal_nfe": profile}
    png = plot_headline(by, byc, floors, real, budget, out / figure, hl[0]["settings"]["model"])
    L.append(f"![FID vs steps at equal and converged NFE]({png.name})\n")
    for kind, label in (("equal", "equal NFE"), ("converged", "converged NFE")):
        for b in bases:
            L.append(f"### Speed-up over `{b}`, {label}\n")
            rd = readings[kind][b]
            fast = rd.get("fast", "fasterdit") if rd else "fasterdit"
            rows = {v: rd[v] for v in COMPOSED_ROWS[b] if rd and v in rd} if composed is not None else None
            L.extend(speedup_section(label, rd, b, fast, rows))
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
        low = [v for v in HEADLINE if v in by and curves.mean_curve(by[v])[1][-1] < real]
        if low:
            L.append(
                f"Saturation check: {', '.join(low)} end below the real-data floor ({real:.3g}): the metric "
                "no longer separates them there.\n"
            )
    return L
