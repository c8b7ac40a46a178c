"""Item 4 of issue #26: calibrate the scale rule where the median rule misses, by the protocol written in
``snr_validation.py``'s docstring before any run of (b) or (c).

The rule family is a target PDF read by its low-SNR tail: k puts the ``q``-quantile of λ_data at ``λ_lo``
(``fasterdit snr --recommend --method tail --tail λ_lo,q``). The fit takes each (data, law)'s best ln k
from its sweep (a parabola through log FID at the lowest grid point and its neighbours), the λ quantiles of
the law on the raw data from the real ``snr`` law, and chooses ``(λ_lo, q)`` by least squares in ``2·ln k``
over the cases of ``FIT_ON``; ``HELD_OUT`` is then tested by training (the ``calibrated`` part).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

import snr_validation as sv
from latent_convergence_plan import std_overrides

FIT_ON = ("latents-raw", "latents16-raw")
HELD_OUT = "pixels"
Q_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))


def best_ln_k(fids: dict[float, float]) -> float | None:
    """ln k at the vertex of the parabola through log FID against ln k at the sweep's lowest point and its
    two neighbours; the grid point itself when it sits at an edge (or the parabola opens downwards, or
    fewer than three points are measured, as in ``--quick``)."""
    ks = sorted(k for k, f in fids.items() if math.isfinite(f))
    if not ks:
        return None
    i = min(range(len(ks)), key=lambda j: fids[ks[j]])
    if i in (0, len(ks) - 1):
        return math.log(ks[i])
    x = np.log(ks[i - 1 : i + 2])
    y = np.log([fids[k] for k in ks[i - 1 : i + 2]])
    a, b, _ = np.polyfit(x, y, 2)
    return float(-b / (2 * a)) if a > 0 else math.log(ks[i])


def quantile_at_raw(law: str, raw_std: float, q: float) -> float:
    """The q-quantile of λ_data (nats) for the law of the protocol on the raw data (k = 1), from the same
    ``snr`` law ``fasterdit snr`` uses."""
    from fasterdit.diffusion.recipe import get_preset
    from fasterdit.diffusion.snr import snr_distribution

    recipe = get_preset("sit").updated(std_overrides(law, 1.0))
    return float(snr_distribution(recipe, raw_std).quantile([q])[0])


def fit(points: list[dict[str, Any]]) -> dict[str, Any]:
    """(λ_lo, q) minimising Σ (2·ln k_best − (λ_lo − Q_case(q)))²: λ_lo in closed form for each q of the
    grid (the mean of 2·ln k_best + Q_case(q)), q by the scan."""
    best: dict[str, Any] | None = None
    for q in Q_GRID:
        target = [2 * p["best_ln_k"] + quantile_at_raw(p["law"], p["raw_std"], q) for p in points]
        lam_lo = float(np.mean(target))
        res = [t - lam_lo for t in target]  # observed 2 ln k − predicted 2 ln k
        sse = float(np.sum(np.square(res)))
        if best is None or sse < best["sse"]:
            best = {"lam_lo": lam_lo, "q": q, "sse": sse, "residuals_2lnk": res}
    assert best is not None
    best["rms_2lnk"] = math.sqrt(best["sse"] / len(points))
    best["cases"] = [f"{p['data']}/{p['law']}" for p in points]
    return best


def rule_k(law: str, raw_std: float, lam_lo: float, q: float) -> float:
    return math.exp(0.5 * (lam_lo - quantile_at_raw(law, raw_std, q)))


def _points(args: argparse.Namespace, datas: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for data in datas:
        for law in sv.LAWS:
            runs = sv.sweep_of(args, data, law)
            grid = sv.sweep_scales(args, data, law)  # not the extra runs a relabelled set adds
            if not all(k in runs for k in grid):
                continue  # a sweep enters the fit only once its grid (edge steps included) is finished
            ln_k = best_ln_k({k: sv.final_fid(runs[k]) for k in grid})
            if ln_k is None:
                continue
            raw_std = sv.recommendation(args, data, law)["raw_std"]
            out.append({"data": data, "law": law, "raw_std": raw_std, "best_ln_k": ln_k})
    return out


def calibration(args: argparse.Namespace) -> dict[str, Any]:
    """The fit on ``FIT_ON``, each case's old and new k, and the leave-one-out fits (from the sweeps)."""
    every = _points(args, sv.MEASURED)  # a relabelled set would count its source twice
    train = [p for p in every if p["data"] in FIT_ON]
    if len(train) < len(FIT_ON) * len(sv.LAWS):
        return {"status": f"waiting for the sweeps of {', '.join(FIT_ON)}", "fit_on": list(FIT_ON)}
    main = fit(train)
    main["lam_lo"] = float(f"{main['lam_lo']:.6g}")  # the value the command line carries (--tail)
    cases = []
    for p in every:
        old = sv.recommendation(args, p["data"], p["law"])["k"]
        # the new rule's k from the real command, as the runs at it get it
        new = sv.recommendation(args, p["data"], p["law"], tail=(main["lam_lo"], main["q"]))["k"]
        cases.append(p | {"best_k": math.exp(p["best_ln_k"]), "old_k": old, "new_k": new})
    loo = []
    for held in sv.MEASURED:
        rest = [p for p in every if p["data"] != held]
        if len({p["data"] for p in rest}) < 2 or not any(p["data"] == held for p in every):
            continue
        f = fit(rest)
        errs = [
            2 * p["best_ln_k"] - 2 * math.log(rule_k(p["law"], p["raw_std"], f["lam_lo"], f["q"]))
            for p in every
            if p["data"] == held
        ]
        loo.append({"held_out": held, "lam_lo": f["lam_lo"], "q": f["q"], "held_out_errors_2lnk": errs})
    return {
        "status": "fitted",
        "fit_on": list(FIT_ON),
        "held_out": HELD_OUT,
        "lam_lo": main["lam_lo"],
        "q": main["q"],
        "rms_2lnk": main["rms_2lnk"],
        "residuals_2lnk": dict(zip(main["cases"], main["residuals_2lnk"], strict=True)),
        "cases": cases,
        "leave_one_out": loo,
    }
