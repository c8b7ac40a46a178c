"""``fasterdit snr``: the density of the extended log-SNR that recipes put on your data.

Examples::

    fasterdit snr --recipe fasterdit --data-std 0.6
    fasterdit snr --recipe fasterdit --compare dit,sit --data-std 0.5,1,2 --out snr.png
    fasterdit snr --recipe sit --data mnist --recommend --json
    fasterdit snr --recipe my_recipe.yaml --data /data/prepared --per-channel --out snr.pdf

Everything is in nats (λ = ln(α²·std²/σ²)); ``--units dB`` switches every number and axis to dB.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from fasterdit.errors import ConfigError, UserError

if TYPE_CHECKING:  # the names only: run() imports the modules, so that --help does not import torch
    from fasterdit.diffusion.recipe import Recipe
    from fasterdit.diffusion.snr import DataStd

HELP = "Plot and summarise the extended log-SNR density a recipe puts on your data (FasterDiT's PDF view)."
#: the most Monte-Carlo draws per curve: they are held in memory (10^7 float64 are 80 MB)
MAX_MC = 10_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        default="fasterdit",
        help="preset (dit, sit, fasterdit) or recipe YAML (default: fasterdit)",
    )
    p.add_argument(
        "--compare", default=None, metavar="R1,R2", help="more presets/YAMLs to overlay, comma-separated"
    )
    p.add_argument(
        "--data-std",
        default=None,
        metavar="S1,S2",
        help="raw data std(s) to analyse, comma-separated (default: 1)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH_OR_NAME",
        help="measure the data std: mnist, digits, an image folder, a prepared folder or a .npy/.npz file",
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="centre-crop images to this size when measuring a folder"
    )
    p.add_argument(
        "--per-channel",
        action="store_true",
        help="one curve per channel (with --data) instead of the pooled std",
    )
    p.add_argument(
        "--window",
        default=None,
        metavar="LO,HI",
        help="target λ window in nats (default: FasterDiT's central 80%%)",
    )
    p.add_argument(
        "--units", choices=("nats", "dB"), default="nats", help="units of every output (default: nats)"
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write the figure (.png, .pdf or .svg)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument(
        "--recommend", action="store_true", help="print the recommended data scale k for each curve"
    )
    p.add_argument(
        "--reference-recipe",
        default=None,
        metavar="RECIPE",
        help="with --recommend: match this recipe's median instead of the window",
    )
    p.add_argument(
        "--method",
        choices=("median", "mass", "mean", "mode", "tail"),
        default="median",
        help="with --recommend: centre the median (default), maximise the mass in the window, "
        "match the mean/mode, or put a quantile at a λ (tail, with --tail)",
    )
    p.add_argument(
        "--tail",
        default=None,
        metavar="LAMBDA_LO,Q",
        help="with --method tail: put the Q-quantile of λ at LAMBDA_LO nats (0,0.5 is the median rule)",
    )
    p.add_argument(
        "--mc", type=int, default=200_000, metavar="N", help="Monte-Carlo draws for the check (0: skip)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo check")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_stds(value: str | None) -> list[float]:
    if value is None:
        return [1.0]
    out: list[float] = []
    for item in _split(value) or [value]:
        try:
            v = float(item)
        except ValueError:
            raise ConfigError(
                "--data-std", f"{item!r} is not a number; give positive stds like 0.5,1,2"
            ) from None
        if not (math.isfinite(v) and v > 0):
            raise ConfigError("--data-std", f"{item!r} is not a positive finite std")
        out.append(v)
    return out


def _parse_window(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = _split(value)
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise ConfigError("--window", f"expected two numbers LO,HI in nats, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError("--window", f"needs finite LO < HI, got {value!r}")
    return lo, hi


def _parse_tail(value: str | None, method: str) -> tuple[float, float] | None:
    if (value is None) != (method != "tail"):
        raise ConfigError("--tail", "give --tail LAMBDA_LO,Q exactly when --method is tail")
    if value is None:
        return None
    try:
        lam, q = (float(v) for v in _split(value))
    except ValueError:
        raise ConfigError("--tail", f"expected two numbers LAMBDA_LO,Q, got {value!r}") from None
    if not (math.isfinite(lam) and 0.0 < q < 1.0):
        raise ConfigError("--tail", f"needs a finite LAMBDA_LO (nats) and 0 < Q < 1, got {value!r}")
    return lam, q


def _load(spec: str, option: str) -> Recipe:
    from fasterdit.diffusion.recipe import load_recipe

    try:
        return load_recipe(spec)
    except UserError as err:
        msg = str(err)
        if isinstance(err, ConfigError) and err.field == "recipe":  # "--recipe: recipe: ..." reads badly
            msg = msg[len("recipe: ") :]
        raise ConfigError(option, msg) from None


#: the recipe fields a stage changes that move the λ density (the rest are loss weights)
_LAW_FIELDS = ("timesteps", "timestep_params", "time_shift")


def _with_stages(
    recipes: list[tuple[str, Recipe]],
) -> tuple[list[tuple[str, Recipe, int | None]], dict[str, list[str]]]:
    """Each recipe's curve, plus one per stage of its step schedule that changes the timestep law (the
    recipe in force after that step); and each scheduled recipe's stages, described, by its spec."""
    out: list[tuple[str, Recipe, int | None]] = []
    schedules: dict[str, list[str]] = {}
    for spec, recipe in recipes:
        out.append((spec, recipe.at(0), None))
        if recipe.stages:
            schedules[spec] = recipe.describe_stages()
        for st in recipe.stages:
            if any(k in st.set for k in _LAW_FIELDS):
                out.append((spec, recipe.at(st.at), st.at))
    return out, schedules


def run(args: argparse.Namespace) -> int:
    from fasterdit.data.measure import measure_data_std
    from fasterdit.diffusion import snr
    from fasterdit.viz.snr import save_snr_plot

    if args.data is not None and args.data_std is not None:
        raise ConfigError("--data", "give either --data (measure the std) or --data-std (state it), not both")
    if not 0 <= args.mc <= MAX_MC:
        raise ConfigError("--mc", f"must be in [0, {MAX_MC}] draws, got {args.mc}")
    f = snr.NATS_TO_DB if args.units == "dB" else 1.0
    u = args.units
    window_user = _parse_window(args.window)
    window = window_user or snr.default_window()
    tail = _parse_tail(args.tail, args.method)

    recipes = [(args.recipe, _load(args.recipe, "--recipe"))]
    for spec in _split(args.compare or ""):
        recipes.append((spec, _load(spec, "--compare")))
    recipes, schedules = _with_stages(recipes)

    measured = None
    if args.data is not None:
        measured = measure_data_std(args.data, resolution=args.resolution)
        stds: list[DataStd] = [measured]
    else:
        if args.per_channel:
            raise ConfigError("--per-channel", "needs --data (per-channel stds are measured)")
        stds = _parse_stds(args.data_std)

    dists = []
    for spec, recipe, after in recipes:
        for s in stds:
            label = snr.recipe_label(recipe, spec)  # an unnamed YAML recipe: its file name
            label += f">{after}" if after is not None else ""  # a stage's law: "fasterdit>4000"
            dists.extend(snr.snr_distributions(recipe, s, per_channel=args.per_channel, label=label))
            where = snr.placement(recipe, s)
            if where.far:  # the silent failure: unscaled latents, or scaled twice (stderr: --json stays JSON)
                print(where.warning(), file=sys.stderr)

    curves = []
    for d in dists:
        entry: dict[str, Any] = {
            "recipe": d.label,
            "data_std": d.data_std,
            "effective_std": d.effective_std,
            "channel": d.channel,
            "scaling": d.scaling_note or "none",
            "stats": d.summary(window).to_dict(u),
        }
        if args.mc:
            entry["monte_carlo"] = d.monte_carlo_check(args.mc, seed=args.seed)
        if args.recommend:
            ref = None
            if args.reference_recipe is not None:
                ref = _load(args.reference_recipe, "--reference-recipe")
            entry["recommendation"] = snr.recommend_scale(
                d, window=window, reference=ref, reference_std=d.data_std, method=args.method, tail=tail
            ).to_dict(u)
        curves.append(entry)

    plot_path = None
    if args.out:
        plot_path = str(save_snr_plot(dists, None, args.out, window=window, title=args.title, units=u))

    result: dict[str, Any] = {
        "units": u,
        "definition": (
            "lambda = ln(alpha(t)^2 * std^2 / sigma(t)^2); std = data std after the recipe's scaling"
        ),
        "dB_per_nat": snr.NATS_TO_DB,
        "window": {
            f"lo_{u}": window[0] * f,
            f"hi_{u}": window[1] * f,
            "source": "--window" if window_user else "default: central 80% of the fasterdit preset",
        },
        "curves": curves,
        "plot": plot_path,
    }
    if schedules:
        result["schedules"] = schedules
    if measured is not None:
        result["data"] = {
            "source": str(args.data),
            "channel_mean": measured.mean.tolist(),
            "channel_std": measured.std.tolist(),
            "pooled_std": measured.pooled_std,
            "count_per_channel": measured.count,
        }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(result, u)
    return 0


def _fmt(v: float | None, width: int = 7, prec: int = 2) -> str:
    return f"{'-':>{width}}" if v is None else f"{v + 0.0:>{width}.{prec}f}"  # + 0.0: no "-0.00"


def _print_table(result: dict[str, Any], u: str) -> None:
    w = result["window"]
    print(
        "extended log-SNR  λ = ln(α²·std²/σ²)  (std: of the data as the model sees it, after the recipe's "
        "scaling)"
    )
    print(f"all λ values in {u}; target window [{w[f'lo_{u}']:.2f}, {w[f'hi_{u}']:.2f}] {u} ({w['source']})")
    if "data" in result:
        d = result["data"]
        chans = ", ".join(f"{s:.4g}" for s in d["channel_std"])
        print(f"measured {d['source']}: pooled std {d['pooled_std']:.4g}; per-channel std [{chans}]")
    head = (
        f"{'recipe':<14}{'data std':>9}{'eff std':>9}{'mode':>8}{'mean':>8}{'std':>7}"
        f"{'5%':>8}{'25%':>8}{'50%':>8}{'75%':>8}{'95%':>8}{'in win':>8}"
    )
    print(head)
    print("-" * len(head))
    for c in result["curves"]:
        s = c["stats"]
        q = s[f"quantiles_{u}"]
        name = c["recipe"] + (f"[c{c['channel']}]" if c["channel"] is not None else "")
        cols = [_fmt(s[f"mode_{u}"], 8), _fmt(s[f"mean_{u}"], 8), _fmt(s[f"std_{u}"])]
        cols += [_fmt(q[k], 8) for k in ("5%", "25%", "50%", "75%", "95%")]
        cols.append(_fmt(s.get("mass_in_window"), 8, 3))
        print(f"{name:<14}{c['data_std']:>9.4g}{c['effective_std']:>9.4g}" + "".join(cols))
    for name, lines in result.get("schedules", {}).items():
        print(f"step schedule of {name} (rows 'NAME>N': the timestep law after step N): " + "; ".join(lines))
    mcs = [c["monte_carlo"] for c in result["curves"] if "monte_carlo" in c]
    if mcs:
        ks = max(m["ks_distance"] for m in mcs)
        crit = min(m["ks_critical_1pct"] for m in mcs)
        z = max(m["hist_max_abs_z"] for m in mcs)
        verdict = "agrees" if ks < crit and z < 5 else "DISAGREES"
        print(
            f"Monte-Carlo check ({mcs[0]['n']} draws/curve): exact PDF {verdict}; max KS distance {ks:.4f} "
            f"(1% critical {crit:.4f}), max histogram |z| {z:.2f}"
        )
    recs = [c for c in result["curves"] if "recommendation" in c]
    if recs:
        print("recommended scale k (multiply the data the model sees by k; λ shifts by 2·ln k), or shift:")
        for c in recs:
            r = c["recommendation"]
            line = (
                f"  {r['recipe']:<12} data std {r['data_std']:.4g}: k = {r['k']:.4g}  "
                f"(shift {r[f'shift_{u}']:+.3f} {u}; effective std {r['effective_std_before']:.4g} -> "
                f"{r['effective_std_after']:.4g}; target: {r['target']}"
            )
            if "mass_in_window_before" in r:
                line += (
                    f"; mass in window {r['mass_in_window_before']:.3f} -> {r['mass_in_window_after']:.3f}"
                )
            print(line + ")")
            if r["time_shift"] is not None:
                print(
                    f"  {'':<12} or, as a timestep shift (same PDF): --set recipe.time_shift="
                    f"{r['time_shift']:.4g}  (SD3's t' = s·t/(1+(s-1)·t); λ moves by -2·ln s)"
                )
            else:
                print(f"  {'':<12} (no equivalent timestep shift: it is a λ translation only on flow-linear)")
    if result.get("plot"):
        print(f"figure written to {result['plot']}")
