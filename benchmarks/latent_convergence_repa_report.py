"""Issue #29 in ``latent_convergence.py``'s report: the composed recipes' rows in the headline's tables and
JSON, and a section of their own (the tuning sweep, the goals, the step cost of the alignment, a figure).

Why a module of its own: the REPA parts are read against the headline's runs through the headline's own
speed-up readings, but everything they add (the sweep's choice, the cost, "not run yet" rows where their
metrics files are missing) is theirs; the issue #18 sections stay as they were.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

import common
from latent_convergence_analysis import by_variant, speedup_reading
from latent_convergence_markdown import fmt_range, not_run, runs_by, sizes_line
from latent_convergence_plan import REPA, REPA_DEFAULT, REPA_OFF, REPA_VARIANTS, SEEDS, VARIANTS
from latent_convergence_plots import plot_repa
from latent_convergence_repa import tune_choice, tune_score

#: per base of a headline speed-up table, the composed recipes that get rows in it ("sit+repa": the table of
#: fasterdit+repa over sit+repa, issue #29's second goal)
COMPOSED_ROWS = {
    "dit": ("fasterdit+repa", REPA_OFF),
    "sit": ("sit+repa", "fasterdit+repa", REPA_OFF),
    "sit+repa": (REPA_OFF,),
}
PART_OF = {"sit+repa": "repa", "fasterdit+repa": "repa", REPA_OFF: "repa-off"}
GOAL_BASES = ("dit", "sit+repa")  # issue #29's goals: ≥ 7× over dit, ≥ 1.5× over sit+repa
COMMAND = "python benchmarks/latent_convergence.py --part {}"


def _key(m: dict[str, Any]) -> tuple:
    """What must match for a composed run to be read in the headline's tables."""
    s = m["settings"]
    return s["model"], s["batch_size"], s["steps"], s["eval_every"], s["num_samples"], s["equal_nfe"]["steps"]


def _missing(v: str, status: str = "not run yet") -> dict[str, Any]:
    return {"status": status, "command": COMMAND.format(PART_OF[v])}


def add_composed_readings(
    readings: dict[str, dict[str, Any]], hl: list[dict[str, Any]], composed: list[dict[str, Any]], budget: int
) -> None:
    """Into the headline's readings: each composed recipe's reading as a row of the dit and sit readings
    (``readings.equal.dit["fasterdit+repa"]``), and ``readings[kind]["sit+repa"]``, fasterdit+repa over
    sit+repa with the alignment-off variant as its row. Missing runs: a ``not run yet`` record, never a
    number; runs of another budget, N or NFE than the headline's: ``not comparable``."""
    key = _key(hl[0])
    same = [m for m in composed if _key(m) == key]
    other = {m["variant"] for m in composed if _key(m) != key}
    present = {m["variant"] for m in same}
    for kind, field in (("equal", "evals"), ("converged", "converged")):
        by = by_variant(hl + same, field)
        for b in ("dit", "sit"):
            if readings[kind][b] is not None:
                for v in COMPOSED_ROWS[b]:
                    readings[kind][b][v] = _reading(by, b, v, budget, other, present)
        main = _reading(by, "sit+repa", "fasterdit+repa", budget, other, present)
        main.setdefault("fast", "fasterdit+repa")
        if main["status"] == "ok":
            for v in COMPOSED_ROWS["sit+repa"]:
                main[v] = _reading(by, "sit+repa", v, budget, other, present)
        readings[kind]["sit+repa"] = main


def _reading(by, base: str, fast: str, budget: int, other: set[str], present: set[str]) -> dict[str, Any]:
    """``fast`` over ``base`` with the headline's reading, or why there is none."""
    for v in (base, fast):
        if v in by:
            continue
        if v in other:
            return _missing(v, "not comparable (another budget, N or NFE than the headline's)")
        if v in present:
            return _missing(v, "no run finished ok")
        if v in PART_OF:
            return _missing(v)
        return {"status": f"needs the headline's {v} runs", "command": COMMAND.format("headline")}
    rd = speedup_reading(by, base, budget, fast)
    assert rd is not None
    rd.update(fast=fast, status="ok")
    if base not in GOAL_BASES:
        rd["target"] = None
    return rd


def _setting(ms: list[dict[str, Any]]) -> str:
    ov = ms[0]["settings"]["recipe_overrides"]
    s = f"λ {ov['align.weight']:g}, depth {ov['align.depth']}"
    for st in ov.get("stages", []):
        s += f", align.weight {st['set']['align.weight']:g} from step {st['at']}"
    return s


def composed_recipe_rows(composed: list[dict[str, Any]]) -> list[list[Any]]:
    """The composed recipes' rows of the headline's recipe table (``not run yet`` without metrics files)."""
    rows = []
    for v in REPA_VARIANTS:
        ms = sorted((m for m in composed if m["variant"] == v), key=lambda m: m["seed"])
        if not ms:
            rows.append([f"`{v}`", "–", "–", "–", f"not run yet (`{COMMAND.format(PART_OF[v])}`)"])
            continue
        bad = ", ".join(f"seed {m['seed']} {m['status']}" for m in ms if m["status"] != "ok")
        seeds = ", ".join(str(m["seed"]) for m in ms)
        label = f"`{v}` ({_setting(ms)})"
        rows.append([label, seeds, f"{ms[0]['lr']:g}", ms[0]["lr_source"], bad or "ok"])
    return rows


# ----------------------------------------------------------------------------------------------------
# the section
# ----------------------------------------------------------------------------------------------------


def _fid_at(m: dict[str, Any], step: int) -> float | None:
    return next((e["fid"] for e in m["evals"] if e["step"] == step), None)


def tuning_section(args: argparse.Namespace, tune: list[dict[str, Any]], hl, res: dict) -> list[str]:
    L = ["### Tuning sweep (seed 0, shorter budget)\n"]
    w0, d0 = REPA_DEFAULT
    if not tune:
        return [
            *L,
            not_run("repa-tune"),
            f"Until it has run, each composed recipe takes REPA's own setting, λ {w0:g} at depth {d0}.\n",
        ]
    L.append(
        f"Runs by: {runs_by(tune)}. Sizes: {sizes_line(tune[0])}. Stage 1: λ at depth {d0}; stage 2: the "
        "other depths at stage 1's best λ. Score: the mean of ln FID over the run's evaluations (shown as "
        "its geometric-mean FID; lower is better); the chosen setting in bold. The `λ 0` row is the "
        "headline's run of the same preset and seed at the same steps (the sweep's budget is the start of "
        "the headline's: same lr schedule and evaluations).\n"
    )
    res["tuning"] = {}
    for v in dict.fromkeys(m["variant"] for m in tune):
        ch = tune_choice(args, v)
        res["tuning"][v] = {k: ch[k] for k in ("state", "weight", "depth", "source", "seed")}
        ms = sorted((m for m in ch["runs"].values() if m), key=lambda m: m["name"])
        steps = [e["step"] for e in ms[0]["evals"]] if ms else []
        rows = []
        ref = next((m for m in hl if m["variant"] == VARIANTS[v][0] and m["seed"] == ch["seed"]), None)
        if ref is not None and steps:
            fids = [_fid_at(ref, s) for s in steps]
            ok = all(f is not None for f in fids)
            gm = math.exp(sum(math.log(f) for f in fids) / len(fids)) if ok else None
            rows.append(["λ 0 (headline)", "–", gm, *fids])
        table = {}
        for (w, d), m in sorted(ch["runs"].items()):
            if m is None:
                rows.append([f"λ {w:g}", d, "not run yet", *["–"] * len(steps)])
                continue
            sc = tune_score(m)
            gm = math.exp(sc) if math.isfinite(sc) else m["status"]
            fids = [_fid_at(m, s) for s in steps]
            chosen = ch["state"] == "tuned" and (w, d) == (ch["weight"], ch["depth"])
            cell = f"**{gm:.3g}**" if chosen and isinstance(gm, float) else gm
            rows.append([f"λ {w:g}", d, cell, *fids])
            table[f"w{w:g}-d{d}"] = {"weight": w, "depth": d, "score": sc, "fids": fids}
        res["tuning"][v]["runs"] = table
        head = ["setting", "depth", "geometric-mean FID", *[f"FID at {s}" for s in steps]]
        L += [f"`{v}`:\n", common.md_table(head, rows), ""]
        if ch["state"] == "tuned":
            L.append(f"Chosen for `{v}`: **λ {ch['weight']:g}, depth {ch['depth']}**.\n")
        else:
            L.append(f"`{v}`: the sweep is at {ch['state']}; no setting chosen yet.\n")
        if steps:
            last = steps[-1]
            finals = [f for m in hl if m["variant"] == VARIANTS[v][0] and (f := _fid_at(m, last)) is not None]
            if len(finals) > 1:
                L.append(
                    f"Noise yardstick: the headline's `{VARIANTS[v][0]}` spans FID {min(finals):.3g}–"
                    f"{max(finals):.3g} over {len(finals)} seeds at step {last}; gaps between settings "
                    "smaller than that are not resolved by one seed.\n"
                )
    return L


def _goal_rows(readings: dict[str, Any]) -> list[list[Any]]:
    """One row per reading issue #29 asks for: fast over base at equal and converged NFE, against its goal."""
    rows = []
    for fast, base in (
        ("fasterdit+repa", "dit"),
        ("fasterdit+repa", "sit+repa"),
        (REPA_OFF, "dit"),
        (REPA_OFF, "sit+repa"),
        ("sit+repa", "sit"),
        ("fasterdit+repa", "sit"),
    ):
        cells = []
        for kind in ("equal", "converged"):
            rd = readings[kind].get(base)
            ok = rd is not None and rd.get("status", "ok") == "ok"
            if ok and rd.get("fast", "fasterdit") != fast:  # a row of the base's reading
                rd = rd.get(fast)
            if rd is None or rd.get("status", "ok") != "ok":
                cells.append(rd["status"] if rd else "–")
                continue
            p, r = rd["pooled"], rd["speedup_range"]
            sp = "not reached" if p["speedup"] is None else f"{p['speedup']:.2f}×"
            if p.get("bound") == "lower bound" and p["speedup"] is not None:
                sp = f"≥ {sp}"
            cells.append(f"{sp} (seeds {fmt_range(r)})" if r else sp)
        goal = {"dit": "≥ 7×", "sit+repa": "≥ 1.5×"}.get(base, "–")
        rows.append([f"`{fast}` over `{base}`", *cells, goal])
    return rows


def _step_ms(m: dict[str, Any]) -> float | None:
    sps = (m.get("train") or {}).get("samples_per_sec")
    return 1000 * m["settings"]["batch_size"] / sps if sps and math.isfinite(sps) else None


def _on_off(m: dict[str, Any]) -> tuple[float, float] | None:
    """Per-step ms with the alignment on and off within one repa-off run (its per-interval throughput; the
    first interval, with the warm-up of the allocator, is left out when there are others)."""
    rows = (m.get("train") or {}).get("throughput") or []
    st = m["settings"]["recipe_overrides"].get("stages") or []
    if not rows or not st:
        return None
    n, batch = st[0]["at"], m["settings"]["batch_size"]
    on = [r for r in rows if r[0] <= n]
    off = [r for r in rows if r[0] > n]
    on = on[1:] if len(on) > 1 else on
    if not on or not off:
        return None
    return 1000 * batch / statistics.median(r[1] for r in on), 1000 * batch / statistics.median(
        r[1] for r in off
    )


def step_cost(hl, composed, enc: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    L = ["### Step cost of the alignment\n"]
    out: dict[str, Any] = {"encoder": enc}
    rows = []
    for v in REPA:
        base = VARIANTS[v][0]
        a = [x for m in composed if m["variant"] == v and m["status"] == "ok" if (x := _step_ms(m))]
        b = [x for m in hl if m["variant"] == base and m["status"] == "ok" if (x := _step_ms(m))]
        if not a or not b:
            rows.append([f"`{v}` vs `{base}`", "not run yet" if not a else "–", "–", "–", "–"])
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        out[v] = {"ms_per_step": a, "base_ms_per_step": b, "median_delta_ms": ma - mb, "rel": ma / mb - 1}
        rows.append(
            [f"`{v}` vs `{base}`", f"{ma:.1f} ({min(a):.1f}–{max(a):.1f})",
             f"{mb:.1f} ({min(b):.1f}–{max(b):.1f})", f"{ma - mb:+.1f}", f"{100 * (ma / mb - 1):+.0f}%"]
        )  # fmt: skip
    ab = [(m["seed"], x) for m in composed if m["variant"] == REPA_OFF and (x := _on_off(m))]
    if ab:
        on, off = statistics.median(x[0] for _, x in ab), statistics.median(x[1] for _, x in ab)
        out[REPA_OFF] = {"per_seed_on_off_ms": ab, "median_delta_ms": on - off, "rel": on / off - 1}
        rows.append(
            [f"`{REPA_OFF}`: on vs off, within each run", f"{on:.1f}", f"{off:.1f}", f"{on - off:+.1f}",
             f"{100 * (on / off - 1):+.0f}%"]
        )  # fmt: skip
    else:
        rows.append([f"`{REPA_OFF}`: on vs off, within each run", "not run yet", "–", "–", "–"])
    head = ["runs", "ms per step, REPA on (median, range)", "ms per step without", "difference", "relative"]
    L += [common.md_table(head, rows), ""]
    L.append(
        "Training steps only (the trainer's throughput excludes evaluations and checkpoints), at the runs' "
        "batch. The "
        "features are stored beside the latents, so a step pays for the hook and the projector (forward and "
        "backward), not for the encoder. Rows between runs compare runs made in different sessions of a "
        "shared CPU (their ranges show that noise); the `on vs off` row compares the two halves of the same "
        "runs, the cleaner measurement.\n"
    )
    if enc:
        L.append(
            f"The encoder (`{enc['encoder']}`, {enc['parameters'] / 1e3:.0f}k parameters): "
            f"{enc['forward_ms_per_batch']:.2f} ms per forward pass on a batch of {enc['batch']} "
            f"({enc['torch_threads']} threads): what each step would add if the features were computed on "
            "the fly; stored, it is paid once by `prepare --align-encoder`"
            + (
                f" ({enc['prepare_seconds']:.0f} s for the latents and features of the "
                f"{enc['prepare_split']} split)."
                if enc.get("prepare_seconds") is not None
                else "."
            )
            + "\n"
        )
    return L, out


def repa_section(
    args: argparse.Namespace,
    parts: dict[str, list[dict[str, Any]]],
    res: dict,
    enc: dict[str, Any] | None,
    floors,
    real,
    out: Path,
) -> list[str]:
    L = ["## REPA composed with the recipes (issue #29)\n"]
    L.append(
        "REPA's alignment term (docs/repa.md) added to `sit` (REPA's own setting) and to `fasterdit`, each "
        "at its own λ and depth from a tuning sweep, on the unchanged DiT, with the shipped self-supervised "
        "`mnist-ssl` encoder's features stored beside the latents; and `fasterdit+repa` with the alignment "
        "off after half the budget (`recipe.stages`). Protocol: `benchmarks/latent_convergence_repa.py`. "
        "The composed runs are read in the headline's tables above (their rows, and the tables over "
        "`sit+repa`) and in `analysis.headline.readings` of the JSON.\n"
    )
    hl, tune = parts["headline"], parts["repa-tune"]
    composed = parts["repa"] + parts["repa-off"]
    rr: dict[str, Any] = {}
    L += tuning_section(args, tune, hl, rr)
    L.append("### The goals\n")
    readings = (res.get("headline") or {}).get("readings")
    if not composed:
        L += [not_run("repa"), not_run("repa-off")]
    if readings and "sit+repa" in readings["equal"]:
        head = ["speed-up (seed-mean curves)", "equal NFE", "converged NFE", "issue #29's goal"]
        L += [common.md_table(head, _goal_rows(readings)), ""]
        L.append(
            "Read as the headline's: steps the base needs to reach its own final FID ÷ steps the composed "
            "recipe needs to reach it. `sit+repa` over `sit` is REPA's own gain on this test bed.\n"
        )
    elif not hl:
        L.append("*Needs the headline part's runs.*\n")
    if composed:
        L.append(f"Runs by: {runs_by(composed)}.\n")
        names = {m["name"] for m in composed}
        planned = [f"{v}-s{s}" for v in REPA_VARIANTS for s in SEEDS[PART_OF[v]]]
        missing = [n for n in planned if n not in names]
        if missing and not any(m.get("quick") for m in composed):
            L.append(f"Runs not made yet: {', '.join(missing)}.\n")
    cost_lines, rr["step_cost"] = step_cost(hl, composed, enc)
    L += cost_lines
    if composed and hl:
        both = hl + composed
        png = plot_repa(
            by_variant(both), by_variant(both, "converged"), floors, real, out / "latent_convergence_repa.png"
        )
        L.append(f"![REPA composed with the recipes]({png.name})\n")
    res["repa"] = rr
    return L
