"""The sections of ``latent_convergence.py``'s report on what was varied around the headline: the lr
sweep, fasterdit's ablations, and the data scale with the SNR tool's recommendation (and the notes that
keep its one-seed reading honest).

Why a module of its own: each of these sections reads one part's metrics files against the headline's,
and none of them takes part in the paper's speed-up reading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import common
from latent_convergence_analysis import (
    ablation_reading,
    bounds_of,
    by_variant,
    lr_reading,
    real_floor,
    std_reading,
)
from latent_convergence_markdown import fmt_range, not_run, runs_by, sizes_line
from latent_convergence_plan import ABLATIONS, DEFAULT_LR, HEADLINE, LRS, SEEDS, VARIANTS
from latent_convergence_plots import plot_ablations, plot_lr, plot_std


def lr_section(ms: list[dict[str, Any]], out: Path, res: dict) -> list[str]:
    L = ["## lr sweep\n"]
    if not ms:
        return [*L, not_run("lr"), f"Until it has run, every recipe uses the default lr {DEFAULT_LR:g}.\n"]
    lr = lr_reading(ms)
    res["lr"] = lr
    L.append(
        f"Runs by: {runs_by(ms)}. Sizes: {sizes_line(ms[0])}, seed {ms[0]['seed']}; each recipe's headline "
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
        f"Runs by: {runs_by(ab)}. Sizes: {sizes_line(ab[0])}; lr {ab[0]['lr']:g} ({ab[0]['lr_source']}).\n"
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
        row = [label, fmt_range(bounds_of(ar["fasterdit"][metric]), "{:.3g}")]
        for v in ABLATIONS:
            a = ar["ablations"].get(v)
            if a is None:
                row.append("not run")
            else:
                rng = fmt_range(bounds_of(a["values"][metric]), "{:.3g}")
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
        f"Runs by: {runs_by(st)}. Sizes: {sizes_line(st[0])}; lr {st[0]['lr']:g} ({st[0]['lr_source']}), "
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
