"""The report of ``snr_validation.py``: ``docs/benchmarks/snr_validation.{md,json,png}`` from whatever metrics
files exist (a case whose runs have not run is listed as such, never guessed).

``snr_validation.json`` holds ``cases``, one per (data, law), each with exactly the keys the issue fixes:
``data``, ``law``, ``raw_std``, ``best_scale``, ``recommended_scale``, ``fid_best``, ``fid_recommended``,
``fid_default``, ``seed_spread`` (None where not measured yet); the readings and the runs sit beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import common
import snr_validation as sv
import snr_validation_calibrate as cal

CASE_KEYS = (
    "data",
    "law",
    "raw_std",
    "best_scale",
    "recommended_scale",
    "fid_best",
    "fid_recommended",
    "fid_default",
    "seed_spread",
)


def _runs_at(args: argparse.Namespace, data: str, law: str, k: float) -> list[dict[str, Any]]:
    """Every finished run of (data, law) at scale k, no shift, any seed (sweep, seeds and calibrated parts);
    for a relabelled set, its source's runs at the same multiplier (equal to round-off: rel. 1e-6)."""
    source = sv.DATASETS[data].relabels
    if source is not None:
        f = sv.relabel_factor(args, data)
        return _measured_runs_at(args, source, law, k / f, rel_tol=1e-6)
    return _measured_runs_at(args, data, law, k)


def _measured_runs_at(
    args: argparse.Namespace, data: str, law: str, k: float, rel_tol: float = 1e-9
) -> list[dict[str, Any]]:
    out = []
    for part in ("sweep", "seeds", "calibrated"):
        for m in sv.finished(args, part):
            s = m["settings"]
            same = m["name"].startswith(f"{data}-{law}-") and s.get("time_shift", 1.0) == 1.0
            if same and math.isclose(float(s["k"]), k, rel_tol=rel_tol):
                out.append(m)
    return sorted(out, key=lambda m: m["seed"])


def _mean_fid(runs: list[dict[str, Any]]) -> float | None:
    fids = [sv.final_fid(m) for m in runs]
    return statistics.fmean(fids) if fids else None


def case(args: argparse.Namespace, data: str, law: str) -> dict[str, Any]:
    sweep = sv.sweep_of(args, data, law)
    rec_path = Path(args.results) / "recommend.json"
    recs = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    rec = recs.get(f"{data}/{law}")
    source = sv.DATASETS[data].relabels
    if source is not None and recs.get(f"{source}/{law}"):
        rec = sv.recommendation(args, data, law)  # the real command on the rescaled data (cheap)
    out: dict[str, Any] = dict.fromkeys(CASE_KEYS)
    out.update(data=data, law=law, raw_std=rec["raw_std"] if rec else None)
    out["recommended_scale"] = rec["k"] if rec else None
    out["sweep"] = {f"{k:g}": sv.final_fid(m) for k, m in sorted(sweep.items())}
    if not sweep:
        out["status"] = "not run"
        return out
    best = min(sweep, key=lambda k: sv.final_fid(sweep[k]))
    at_best = _runs_at(args, data, law, best)
    out["best_scale"] = best
    out["fid_best"] = _mean_fid(at_best)
    out["fid_default"] = sv.final_fid(sweep[1.0]) if 1.0 in sweep else None
    if len(at_best) >= 2:
        fids = [sv.final_fid(m) for m in at_best]
        out["seed_spread"] = max(fids) - min(fids)
    if rec:
        at_rec = _runs_at(args, data, law, rec["k"])
        out["fid_recommended"] = _mean_fid(at_rec)
        out["seeds"] = {"best": [m["seed"] for m in at_best], "recommended": [m["seed"] for m in at_rec]}
    seeds_rec = len(out.get("seeds", {}).get("recommended", []))
    out["status"] = "complete" if len(at_best) >= 3 and seeds_rec >= 3 else "partial"
    out["verdict"] = verdict(out)
    if source is not None:
        out.update(relabelling(args, data, source, rec, recs.get(f"{source}/{law}")))
    return out


def relabelling(
    args: argparse.Namespace, data: str, source: str, rec: dict | None, src: dict | None
) -> dict[str, Any]:
    """What a relabelled case is: its source's runs, read at k × factor, and whether the tool's answer
    moves with the data's scale exactly (the rule is scale-equivariant: k·raw std is what it sets)."""
    f = sv.relabel_factor(args, data)
    out: dict[str, Any] = {
        "relabels": source,
        "k_factor": f,
        "note": f"{data} is {source} rescaled: every run read here is a run of {source} at k / {f:.6g}, "
        "the same multiplier on what the trainer reads; it adds no training evidence of its own, it shows "
        "what the tool answers on data scaled far from 1",
    }
    if rec and src:  # the tool's answers on this set and on its source
        out["recommended_scale_over_source"] = rec["k"] / (src["k"] * f)  # 1 if the tool is equivariant
    return out


def verdict(c: dict[str, Any]) -> str:
    """The goal of the protocol, read plainly."""
    if c["fid_recommended"] is None or c["seed_spread"] is None:
        return "not measured yet (needs the seeds part)"
    gap = c["fid_recommended"] - c["fid_best"]
    within = gap <= c["seed_spread"]
    parts = [f"recommended − best = {gap:+.3g} vs seed spread {c['seed_spread']:.3g}: "
             + ("within the noise (goal met)" if within else "MISSED (worse than the noise)")]  # fmt: skip
    # "far from 1" as the issue sets it for its data sets: a raw std >= 3 or <= 1/3
    far = abs(math.log(c["raw_std"])) >= math.log(3.0)
    if far and c["fid_default"] is None:
        parts.append("raw std far from 1 but ×1 not measured yet")
    elif far:
        beat = c["fid_default"] - c["fid_recommended"]
        parts.append(
            f"×1 − recommended = {beat:+.3g}: "
            + ("better than ×1 beyond the noise" if beat > c["seed_spread"] else "NOT beyond the noise")
        )
    else:
        parts.append("raw std within [1/3, 3]: ×1 is not required to lose")
    return "; ".join(parts)


def _main_protocol() -> str:
    """The docstring's protocol up to its calibration part (which the calibration section shows)."""
    text = sv.__doc__.split("Protocol (written before any run of it):", 1)[1]
    return text.split("Calibration protocol", 1)[0].strip()


def calibration_section(args: argparse.Namespace, cases: list[dict[str, Any]]) -> tuple[dict, list[str]]:
    """Item 4: the fit, the old and the new rule side by side, and the held-out test where it has run."""
    fitted = cal.calibration(args)
    lines = ["## Calibration (item 4)", ""]
    proto = sv.__doc__.split("Calibration protocol", 1)[1].split("Parts,")[0]
    lines += ["Protocol" + proto.rstrip(), ""]
    if fitted["status"] != "fitted":
        return fitted, [*lines, f"Not fitted yet: {fitted['status']}.", ""]
    lines += [
        f"Fitted on {', '.join(fitted['fit_on'])}: **λ_lo = {fitted['lam_lo']:+.3f} nats, q = "
        f"{fitted['q']:.2f}** (rms error in 2·ln k {fitted['rms_2lnk']:.3f} nats; the sweep's grid step is "
        f"2·ln 2 = 1.386). The rule: at most {100 * fitted['q']:.0f}% of training below λ = "
        f"{fitted['lam_lo']:+.2f} nats.",
        "",
    ]
    by_case = {(c["data"], c["law"]): c for c in cases}
    rows = []
    for p in fitted["cases"]:
        c = by_case[(p["data"], p["law"])]
        held = [m for m in _runs_at(args, p["data"], p["law"], p["new_k"]) if m["part"] == "calibrated"]
        fid_new = _mean_fid(held)
        rows.append([p["data"], p["law"], "fit" if p["data"] in fitted["fit_on"] else "held out",
                     _fmt(p["best_k"]), _fmt(p["old_k"]), _fmt(p["new_k"]), _fmt(c["fid_best"]),
                     _fmt(c["fid_recommended"]), _fmt(fid_new), _fmt(c["seed_spread"])])  # fmt: skip
        p["fid_new"] = fid_new
        p["fid_new_seeds"] = [sv.final_fid(m) for m in held]
    head = ["data", "law", "role", "best k (parabola)", "old rule k", "new rule k", "FID best",
            "FID old rule", "FID new rule", "seed spread"]  # fmt: skip
    lines += [
        common.md_table(head, rows),
        "",
        "Leave-one-out (from the sweeps, no new runs): "
        + "; ".join(
            f"without {r['held_out']}: λ_lo {r['lam_lo']:+.2f}, q {r['q']:.2f}, its error in 2·ln k "
            + ", ".join(f"{e:+.2f}" for e in r["held_out_errors_2lnk"])
            for r in fitted["leave_one_out"]
        ),
        "",
    ]
    return fitted, lines


def shift_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for k in sv.SHIFT_KS:
        # seed 0 of data × k is the sweep's run; the shift part's own copy of it (run before the reuse) is
        # its independent re-run: 8.326332 vs 8.326325 at k 0.5, round-off (the sweep ran before #30's
        # one-pass EMA update, which moves the EMA weights by ≤ 3e-8)
        scale = [
            m for m in sv.finished(args, "shift") if m["name"].startswith(f"latents-raw-lognorm-k{k:.4g}-")
        ]
        sweep0 = [m for m in sv.finished(args, "sweep") if m["name"] == f"latents-raw-lognorm-k{k:.4g}-s0"]
        rerun = [m for m in scale if m["seed"] == 0]
        scale = sorted([m for m in scale if m["seed"] != 0] + sweep0, key=lambda m: m["seed"])
        shift = [
            m
            for m in sv.finished(args, "shift")
            if m["name"].startswith(f"latents-raw-lognorm-shift{1 / k:.4g}-")
        ]
        rows.append(
            {
                "k": k,
                "time_shift": 1 / k,
                "fid_scale": [sv.final_fid(m) for m in scale],
                "fid_shift": [sv.final_fid(m) for m in shift],
                "rerun_of_sweep_seed0": [sv.final_fid(m) for m in rerun],
            }
        )
    return rows


def budget_check(results: Path) -> list[dict[str, Any]]:
    """The protocol's choice of 1,050 steps, checked on the committed 2,100-step std sweep of
    ``latent_convergence`` (the same latents, model and optimizer): its scales ranked by FID at 1,050 and at
    2,100 steps, per law."""
    rows = []
    std = results.parent / "latent_convergence" / "std"
    for law in sv.LAWS:
        at: dict[int, dict[float, float]] = {1050: {}, 2100: {}}
        for path in sorted(std.glob(f"{law}-x*-s0.json")):
            m = json.loads(path.read_text())
            for e in m["evals"]:
                if e["step"] in at:
                    at[e["step"]][float(m["settings"]["k"])] = float(e["fid"])
        if not at[2100]:
            continue
        ranks = {step: sorted(fids, key=fids.get) for step, fids in at.items()}
        first, last = ranks[1050], ranks[2100]
        rows.append(
            {"law": law, "ranking_1050": first, "ranking_2100": last, "same": first == last,
             "best_same": first[0] == last[0]}
        )  # fmt: skip
    return rows


def _budget_line(r: dict[str, Any]) -> str:
    first = ", ".join(f"×{k:g}" for k in r["ranking_1050"])
    last = ", ".join(f"×{k:g}" for k in r["ranking_2100"])
    verdict = "the same ranking" if r["same"] else "the same best" if r["best_same"] else "DIFFERENT best"
    return f"* {r['law']}: by FID at 1,050 steps {first}; at 2,100 {last}: {verdict}"


def _plot(cases: list[dict[str, Any]], path: Path) -> Path | None:
    done = [c for c in cases if c["sweep"]]
    if not done:
        return None
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(done), figsize=(4.2 * len(done), 3.4), squeeze=False)
    for ax, c in zip(axes[0], done, strict=True):
        ks = [float(k) for k in c["sweep"]]
        ax.plot(ks, list(c["sweep"].values()), "o-", label="sweep (seed 0)")
        if c["recommended_scale"]:
            ax.axvline(c["recommended_scale"], color="#d62728", ls="--", label="snr --recommend")
        ax.axvline(1.0, color="grey", ls=":", label="×1 (raw)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("data scale k (× raw data)")
        ax.set_ylabel("FID-clf (final)")
        ax.set_title(f"{c['data']}, {c['law']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shift_line(r: dict[str, Any]) -> str:
    """Scale against shift at one k: the means, and whether they differ beyond the larger seed spread."""
    scale, shifted = r["fid_scale"], r["fid_shift"]
    if len(scale) < 2 or len(shifted) < 2:
        return f"* k = {_fmt(r['k'])}: not all seeds run"
    noise = max(max(scale) - min(scale), max(shifted) - min(shifted))
    gap = statistics.fmean(shifted) - statistics.fmean(scale)
    beyond = "differ beyond the seed noise" if abs(gap) > noise else "within the seed noise"
    return (
        f"* k = {_fmt(r['k'])}: data × k {statistics.fmean(scale):.2f}, shift {_fmt(r['time_shift'])} "
        f"{statistics.fmean(shifted):.2f} (mean over {len(scale)} and {len(shifted)} seeds; shift − scale "
        f"{gap:+.2f}, larger seed spread {noise:.2f}): {beyond}"
    )


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write(args: argparse.Namespace) -> Path:
    datas = [d for d in sv.DATASETS]
    cases = [case(args, d, w) for d in datas for w in sv.LAWS]
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    png = _plot(cases, docs / "snr_validation.png")
    shift = shift_rows(args)
    budget = budget_check(Path(args.results))
    calibration, calibration_lines = calibration_section(args, cases)
    data = {
        "cases": [{k: c[k] for k in CASE_KEYS} for c in cases],
        "readings": [
            {k: v for k, v in c.items() if k not in CASE_KEYS} | {"data": c["data"], "law": c["law"]}
            for c in cases
        ],
        "scale_vs_shift": shift,
        "calibration": calibration,
        "budget_check": budget,
        "protocol": sv.__doc__,
        "lr": sv.LR,
        "lr_source": sv.LR_SOURCE,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": common.machine_facts(),
    }
    common.write_json(docs / "snr_validation.json", data)
    rows = [[c["data"], c["law"], _fmt(c["raw_std"]), _fmt(c["best_scale"]), _fmt(c["recommended_scale"]),
             _fmt(c["fid_best"]), _fmt(c["fid_recommended"]), _fmt(c["fid_default"]), _fmt(c["seed_spread"]),
             c["status"]] for c in cases]  # fmt: skip
    lines = [
        "# Does `snr --recommend` pick the best data scale? (issue #26)",
        "",
        f"Generated by `python benchmarks/snr_validation.py --report` on {data['date']}; "
        f"per-run metrics in `benchmarks/results/snr_validation/`.",
        "",
        "## Protocol (written before the runs)",
        "",
        _main_protocol(),
        "",
        "The calibration protocol (item 4) is under *Calibration* below.",
        "",
        "## Cases",
        "",
        common.md_table(
            [
                "data",
                "law",
                "raw std",
                "best k",
                "recommended k",
                "FID best",
                "FID rec.",
                "FID ×1",
                "seed spread",
                "status",
            ],
            rows,
        ),
        "",
        *[
            f"* **{c['data']}, {c['law']}**: {c.get('verdict', c['status'])}; sweep (k: FID) "
            + ", ".join(f"{k}: {v:.3g}" for k, v in c["sweep"].items())
            for c in cases
        ],
        "",
        *calibration_lines,
        "## The budget: do 1,050 steps rank the scales as 2,100 do?",
        "",
        "On `latent_convergence`'s committed std sweep (scaled latents × k, seed 0, 2,100 steps, FID at "
        "1,050 and 2,100):",
        "",
        *[_budget_line(r) for r in budget],
        "",
        "## Scale against shift (same PDF, different parametrisation)",
        "",
        common.md_table(
            ["k", "time shift 1/k", "FID, data × k (seeds)", "FID, shift 1/k (seeds)", "re-run of seed 0"],
            [
                [
                    _fmt(r["k"]),
                    _fmt(r["time_shift"]),
                    ", ".join(f"{v:.3g}" for v in r["fid_scale"]) or "not run",
                    ", ".join(f"{v:.3g}" for v in r["fid_shift"]) or "not run",
                    ", ".join(f"{v:.6g}" for v in r["rerun_of_sweep_seed0"]) or "—",
                ]
                for r in shift
            ],
        ),
        "",
        *[_shift_line(r) for r in shift],
        "",
        "## After this report",
        "",
        "* [snr_validation_posthoc.md](snr_validation_posthoc.md): why the rule misses where it does (the "
        "pooled std counts the mean image as signal), read from these sweeps without new runs;",
        "* [snr_validation_within.md](snr_validation_within.md): that reading tested on a held-out data set, "
        "by a protocol frozen before its runs.",
        "",
    ]
    if png is not None:
        lines += ["![FID against data scale](snr_validation.png)", ""]
    md = docs / "snr_validation.md"
    md.write_text("\n".join(lines) + "\n")
    common.log(f"wrote {md}")
    return md
