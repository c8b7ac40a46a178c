"""What ``convergence.py`` compares, and how: its variants (recipe presets and the overrides of the
ablations), one run's FID-vs-steps curve, the natural sampler of each recipe, and the speed-up read off two
curves (the issue's definition).

Why a module of its own: ``latent_convergence.py`` runs the same variants and reads its curves with the
same definition, so it imports them from here rather than from another benchmark's command line.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

import common

#: name -> (preset, recipe overrides, what it shows)
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "dit": ("dit", {}, "DiT: DDPM-linear, ε + learned variance (VB), uniform discrete t"),
    "sit": ("sit", {}, "SiT: rectified flow, velocity, uniform t"),
    "fasterdit": ("fasterdit", {}, "FasterDiT: flow, velocity, lognorm(0,1) t, std → 1, direction loss"),
    "fasterdit-no-dir": ("fasterdit", {"loss.direction_weight": 0.0}, "FasterDiT without the direction loss"),
    "fasterdit-uniform": (
        "fasterdit",
        {"timesteps": "uniform", "timestep_params": {}},
        "FasterDiT with uniform t instead of lognorm",
    ),
    "fasterdit-no-std": (
        "fasterdit",
        {"scaling.mode": "none"},
        "FasterDiT without data-std modulation (raw [-1, 1] pixels)",
    ),
}
HEADLINE = ("dit", "fasterdit")
COLOURS = {
    "dit": "#1f77b4",
    "sit": "#ff7f0e",
    "fasterdit": "#d62728",
    "fasterdit-no-dir": "#9467bd",
    "fasterdit-uniform": "#2ca02c",
    "fasterdit-no-std": "#8c564b",
}


@dataclasses.dataclass
class Run:
    variant: str
    seed: int
    run_dir: Path
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    samples_per_sec: float = math.nan
    wall: float = math.nan
    reused: bool = False

    @property
    def steps(self) -> list[int]:
        return [int(e["step"]) for e in self.evals]

    @property
    def fids(self) -> list[float]:
        return [float(e["fid"]) for e in self.evals]

    @property
    def accs(self) -> list[float]:
        return [float(e.get("class_accuracy", math.nan)) for e in self.evals]


def resumable(run_dir: Path, cfg: Any, fresh: bool) -> bool:
    """An interrupted run of the same config: the trainer resumes it exactly from its last checkpoint."""
    saved = run_dir / "config.yaml"
    return not fresh and saved.is_file() and common.same_config(yaml.safe_load(saved.read_text()), cfg)


def natural_sampler(preset: str) -> str:
    return "ddpm" if preset == "dit" else "euler"


def mean_curve(runs: list[Run]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean FID, min FID, max FID over seeds (on the steps every seed evaluated)."""
    common_steps = sorted(set.intersection(*[set(r.steps) for r in runs]))
    mean, lo, hi = [], [], []
    for s in common_steps:
        vals = [r.fids[r.steps.index(s)] for r in runs]
        mean.append(sum(vals) / len(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return common_steps, mean, lo, hi


def speedup(base: Run | tuple, fast: Run | tuple) -> dict[str, Any]:
    """Steps ``base`` needs to reach its own final FID ÷ steps ``fast`` needs to reach it."""
    bs, bf = (base.steps, base.fids) if isinstance(base, Run) else base[:2]
    fs, ff = (fast.steps, fast.fids) if isinstance(fast, Run) else fast[:2]
    target = bf[-1]
    n_base = common.steps_to_reach(bs, bf, target)
    n_fast = common.steps_to_reach(fs, ff, target)
    out = {"target_fid": target, "base_steps": n_base, "fast_steps": n_fast, "bound": None}
    if n_fast is None:
        out["speedup"] = None
        out["bound"] = "not reached"
    else:
        out["speedup"] = n_base / n_fast
        if common.reach_is_bounded(fs, ff, target):
            out["bound"] = "lower bound"  # reached before its first evaluation
    return out


def fmt_speedup(d: dict[str, Any]) -> str:
    if d["speedup"] is None:
        return "not reached (< 1×)"
    s = f"{d['speedup']:.2f}×"
    return f"≥ {s}" if d["bound"] == "lower bound" else s


def analyse(runs: list[Run]) -> dict[str, Any]:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.variant, []).append(r)
    res: dict[str, Any] = {"per_seed": {}, "pooled": {}}
    for base in ("dit", "sit"):
        if base not in by or "fasterdit" not in by:
            continue
        fast_by_seed = {r.seed: r for r in by["fasterdit"]}
        per = []
        for b in by[base]:
            if b.seed in fast_by_seed:
                d = speedup(b, fast_by_seed[b.seed])
                d["seed"] = b.seed
                per.append(d)
        res["per_seed"][base] = per
        res["pooled"][base] = speedup(mean_curve(by[base]), mean_curve(by["fasterdit"]))
    # every variant against dit's and sit's final FID (seed-mean curves)
    table = []
    for v, rs in by.items():
        st, m, lo, hi = mean_curve(rs)
        row = {
            "variant": v,
            "seeds": len(rs),
            "final_fid": m[-1],
            "final_fid_min": lo[-1],
            "final_fid_max": hi[-1],
            "final_acc": sum(r.accs[-1] for r in rs) / len(rs),
            "samples_per_sec": sum(r.samples_per_sec for r in rs) / len(rs),
        }
        for base in ("dit", "sit"):
            if base in by:
                _, bm, _, _ = mean_curve(by[base])
                row[f"steps_to_{base}"] = common.steps_to_reach(st, m, bm[-1])
                row[f"bounded_{base}"] = common.reach_is_bounded(st, m, bm[-1])
        table.append(row)
    res["table"] = table
    if "sit" in by and "fasterdit" in by:
        st, fm, _, _ = mean_curve(by["fasterdit"])
        sst, sm, _, _ = mean_curve(by["sit"])
        both = [s for s in st if s in sst]
        ahead = [s for s in both if fm[st.index(s)] < sm[sst.index(s)]]
        res["fasterdit_ahead_of_sit"] = {"evaluations": len(both), "ahead": len(ahead), "steps_ahead": ahead}
    return res
