"""The figures of ``latent_convergence.py``'s report: FID against steps at equal and converged NFE, the
ablations, the lr sweep, and FID against the data scale, each with the real-data and autoencoder floors.

Why a module of its own: the figures share one house style and the floor lines, and keeping matplotlib
code apart leaves the report sections to decide only what is shown.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import common
import convergence_curves as curves
from latent_convergence_plan import ABLATIONS, COLOURS, HEADLINE, REPA_VARIANTS, SEVENTH


def _style_axis(ax) -> None:
    """The house style shared by the report's figures: light grid, legend, no top/right spines."""
    ax.grid(True, which="both", color="0.92")
    ax.legend(frameon=False, fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)


def _save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _finish_figure(plt, fig, ax, path: Path) -> Path:
    """A single-axis figure in the house style, saved and closed."""
    _style_axis(ax)
    return _save_figure(plt, fig, path)


def _floor_lines(ax, floors: dict[str, Any] | None, real: float | None) -> None:
    if real is not None:
        ax.axhline(real, color="k", lw=0.8, ls="--", label=f"real digits at this N ({real:.3g})")
    if floors:
        rec = floors["posterior_sample"]["fid"]
        ax.axhline(rec, color="0.45", lw=0.9, ls="-.", label=f"autoencoder reconstructions ({rec:.3g})")


def plot_headline(by, byc, floors, real, budget: int, path: Path, title: str) -> Path:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), dpi=150)
    for ax, b, what in ((axes[0], by, "equal NFE"), (axes[1], byc, "converged NFE")):
        for v in HEADLINE:
            if v not in b:
                continue
            st, m, lo, hi = curves.mean_curve(b[v])
            c = COLOURS[v]
            n = len(b[v])
            ax.plot(st, m, color=c, lw=2, marker="o", ms=3.5, label=f"{v} ({n} seed{'s' * (n > 1)})")
            if n > 1:
                if len(st) > 1:
                    ax.fill_between(st, lo, hi, color=c, alpha=0.15, lw=0)
                else:
                    ax.errorbar(st, m, yerr=[[m[0] - lo[0]], [hi[0] - m[0]]], color=c, capsize=3)
        _floor_lines(ax, floors, real)
        if "dit" in b:
            ax.axhline(curves.mean_curve(b["dit"])[1][-1], color=COLOURS["dit"], lw=0.8, ls=":")
        ax.axvline(budget * SEVENTH, color="0.7", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("training step (dotted: 1/7 of the budget)")
        ax.set_ylabel("FID (MNIST-classifier features)")
        ax.set_title(f"{title}: {what}", loc="left")
        ax.grid(True, which="both", color="0.92")
        ax.legend(frameon=False, fontsize=7)
    ax = axes[2]
    for v in HEADLINE:
        if v in by:
            st = by[v][0].steps
            accs = [statistics.mean(r.accs[r.steps.index(s)] for r in by[v] if s in r.steps) for s in st]
            ax.plot(st, accs, color=COLOURS[v], lw=2, marker="o", ms=3.5, label=v)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("class accuracy of conditional samples")
    ax.set_title("class accuracy (equal NFE, seed mean)", loc="left")
    ax.grid(True, color="0.92")
    ax.legend(frameon=False, fontsize=7)
    for a in axes:
        a.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ablations(headline, abl, floors, real, path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for v, b, ls in [("dit", headline, ":"), ("fasterdit", headline, "-")] + [
        (v, abl, "--") for v in ABLATIONS
    ]:
        if v not in b:
            continue
        st, m, lo, hi = curves.mean_curve(b[v])
        ax.plot(st, m, color=COLOURS[v], lw=1.8, ls=ls, marker="o", ms=3, label=f"{v} ({len(b[v])} seeds)")
        if len(b[v]) > 1 and len(st) > 1:
            ax.fill_between(st, lo, hi, color=COLOURS[v], alpha=0.12, lw=0)
    _floor_lines(ax, floors, real)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (equal NFE)")
    ax.set_title("fasterdit and its ablations (bands: seed min–max)", loc="left")
    return _finish_figure(plt, fig, ax, path)


def plot_lr(lr: dict[str, Any], path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=150)
    for v, d in lr.items():
        pts = [(x, f) for x, f in zip(d["lr"], d["fid"]) if f is not None]
        if pts:
            ax.plot(*zip(*pts), color=COLOURS.get(v), marker="o", lw=1.8, label=v)
        for x, st in zip(d["lr"], d["status"]):
            if st != "ok":
                ax.axvline(x, color=COLOURS.get(v), lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("AdamW lr")
    ax.set_ylabel("final FID (equal NFE)")
    ax.set_title("lr sweep (shorter budget, seed 0)", loc="left")
    ax.grid(True, which="both", color="0.92")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_std(std: dict[str, Any], floors, real, path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for law, d in std.items():
        c = COLOURS[law]
        ax.plot(d["k"], d["fid"], color=c, marker="o", lw=1.8, label=f"flow + {law} t")
        for method, ls in (("median", "-"), ("mass", "--")):
            r = (d.get("recommend") or {}).get(method)
            if r:
                ax.axvline(r["k"], color=c, lw=0.9, ls=ls, alpha=0.7)
    ax.plot([], [], color="0.4", lw=0.9, ls="-", label="snr --recommend (median)")
    ax.plot([], [], color="0.4", lw=0.9, ls="--", label="snr --recommend (mass)")
    _floor_lines(ax, floors, real)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ks = sorted({k for d in std.values() for k in d["k"]})
    ax.set_xticks(ks, [f"×{k:g}" for k in ks])
    ax.set_xlabel("data scale k on top of the autoencoder's scaling_factor")
    ax.set_ylabel("FID after the fixed budget (equal NFE)")
    ax.set_title("data scale on latents", loc="left")
    return _finish_figure(plt, fig, ax, path)


def plot_repa(by, byc, floors, real, path: Path) -> Path:
    """Issue #29: the composed recipes against the headline's, FID at equal and converged NFE (seed mean,
    bands: seed min–max); dashed: REPA on, dotted: dit."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=150)
    for ax, b, what in ((axes[0], by, "equal NFE"), (axes[1], byc, "converged NFE")):
        for v in (*HEADLINE, *REPA_VARIANTS):
            if v not in b:
                continue
            st, m, lo, hi = curves.mean_curve(b[v])
            ls = ":" if v == "dit" else "--" if "repa" in v else "-"
            n = len(b[v])
            ax.plot(st, m, color=COLOURS[v], lw=1.8, ls=ls, marker="o", ms=3, label=f"{v} ({n} seeds)")
            if n > 1 and len(st) > 1:
                ax.fill_between(st, lo, hi, color=COLOURS[v], alpha=0.12, lw=0)
        _floor_lines(ax, floors, real)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"FID ({what})")
        ax.set_title(f"REPA composed with the recipes: {what}", loc="left")
        _style_axis(ax)
    return _save_figure(plt, fig, path)
