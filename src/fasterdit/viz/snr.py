"""The SNR-PDF figure: the log-SNR densities of recipes on data, with the quantiles and a target window.

Why here and not in :mod:`fasterdit.diffusion.snr`: the law is numbers (testable without matplotlib),
the figure is presentation, beside the library's other pictures (:mod:`fasterdit.viz.images`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fasterdit.data.stats import DataStats, RunningStats
from fasterdit.diffusion.snr import (
    DataStd,
    LogSNRDistribution,
    RecipeLike,
    check_window,
    default_window,
    is_schedule_pair,
    snr_distributions,
    unit_factor,
)
from fasterdit.errors import ConfigError

__all__ = ["save_snr_plot"]

# Okabe–Ito colours (colour-blind safe); the presets keep fixed colours across every figure.
_PRESET_COLOURS = {"dit": "#0072B2", "sit": "#E69F00", "fasterdit": "#D55E00"}
_OTHER_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


#: what the figure draws: laws already made, or recipes to evaluate at every data std
Curves = LogSNRDistribution | RecipeLike | Iterable[LogSNRDistribution | RecipeLike]


def _as_distributions(
    curves_or_recipes: Curves, data_stds: DataStd | Sequence[DataStd] | None, per_channel: bool
) -> list[LogSNRDistribution]:
    if (
        isinstance(curves_or_recipes, LogSNRDistribution)
        or not isinstance(curves_or_recipes, Iterable)
        or isinstance(curves_or_recipes, (str, Path, Mapping))
        or is_schedule_pair(curves_or_recipes)
    ):
        items: list[LogSNRDistribution | RecipeLike] = [curves_or_recipes]
    else:
        items = list(curves_or_recipes)
    if data_stds is None:
        stds: list[DataStd] = [1.0]
    elif isinstance(data_stds, (int, float, DataStats, RunningStats, torch.Tensor, np.ndarray)):
        stds = [data_stds]  # one dataset; a tensor/array holds its channel stds
    else:
        stds = list(data_stds)
    out: list[LogSNRDistribution] = []
    for item in items:
        if isinstance(item, LogSNRDistribution):
            out.append(item)
            continue
        for s in stds:
            out.extend(snr_distributions(item, s, per_channel=per_channel))
    return out


def _fmt_std(v: float) -> str:
    return f"{v:.3g}"


def save_snr_plot(
    curves_or_recipes: Curves,
    data_stds: DataStd | Sequence[DataStd] | None = None,
    path: str | os.PathLike = "snr.png",
    window: tuple[float, float] | None = None,
    title: str | None = None,
    *,
    units: str = "nats",
    per_channel: bool = False,
    dpi: int = 200,
) -> Path:
    """Write a publication-style figure of the log-SNR densities (PNG/PDF/SVG by extension).

    ``curves_or_recipes``: LogSNRDistribution(s), or recipe(s) (Recipe, preset name, YAML path) which
    are evaluated at every std of ``data_stds``: a number, a RunningStats or a tensor of channel stds
    (one dataset), or a list of those (overlaid; a dataset's channel stds as an inner list).
    Colour = recipe (fixed colours for the presets), line style = data std; a recipe whose scaling
    makes its law independent of the raw std (standardisation) is drawn once. ``window`` (nats) is
    shaded; pass ``False`` for none, ``None`` for :func:`default_window`. Axes are in ``units``
    ("nats", or "dB" with the density per dB).
    """
    import matplotlib  # lazy: only the figure needs it (the analyser's numbers do not)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    f = unit_factor(units)
    dists = _as_distributions(curves_or_recipes, data_stds, per_channel)
    if not dists:
        raise ConfigError("recipe", "nothing to plot")
    win = None if window is False else (check_window(window) or default_window())

    # x range: the central 99.8 % of every curve, and the window
    qs = np.array([d.quantile([0.001, 0.999]) for d in dists])
    lo, hi = float(qs[:, 0].min()), float(qs[:, 1].max())
    if win is not None:
        lo, hi = min(lo, win[0]), max(hi, win[1])
    pad = 0.04 * (hi - lo)
    lam = np.linspace(lo - pad, hi + pad, 1601)

    labels = list(dict.fromkeys(d.label for d in dists))
    other = iter(_OTHER_COLOURS * 4)
    colour = {lab: _PRESET_COLOURS.get(lab) or next(other) for lab in labels}
    raw_stds = sorted({round(d.data_std, 12) for d in dists})
    channels = sorted({d.channel for d in dists if d.channel is not None})
    # a recipe "varies" when it has several distinct pooled curves (one per data std): those get a line
    # style per std; a recipe whose scaling makes every std give the same curve is drawn once, solid
    varies = {
        lab: len({round(d.effective_std, 9) for d in dists if d.label == lab and d.channel is None}) > 1
        for lab in labels
    }
    styled = sorted({round(d.data_std, 12) for d in dists if varies[d.label] and d.channel is None})
    style = {s: _LINESTYLES[i % len(_LINESTYLES)] for i, s in enumerate(styled)}

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9.5, "legend.fontsize": 8})
    fig, ax = plt.subplots(figsize=(7.4, 3.5), dpi=dpi)
    if win is not None:
        ax.axvspan(win[0] * f, win[1] * f, color="0.90", zorder=0, lw=0)
        ax.axvline(win[0] * f, color="0.6", lw=0.6, zorder=0)
        ax.axvline(win[1] * f, color="0.6", lw=0.6, zorder=0)

    drawn: set[tuple[str, float, int | None]] = set()
    ymax = 0.0
    for d in dists:
        key = (d.label, round(d.effective_std, 9), d.channel)
        if key in drawn:
            continue
        drawn.add(key)
        p = d.pdf(lam) / f
        ymax = max(ymax, float(p.max()))
        ls = style[round(d.data_std, 12)] if varies[d.label] and d.channel is None else "-"
        alpha = 1.0 if d.channel is None else 0.85
        ax.plot(lam * f, p, color=colour[d.label], ls=ls, lw=1.6, alpha=alpha, zorder=3)
        if d.channel is not None:  # label channels at their peak
            i = int(np.argmax(p))
            ax.annotate(
                f"c{d.channel}",
                (lam[i] * f, p[i]),
                textcoords="offset points",
                xytext=(2, 2),
                fontsize=6.5,
                color=colour[d.label],
            )

    handles: list[Line2D | Patch] = []
    for lab in labels:
        mine = [d for d in dists if d.label == lab]
        notes = [mine[0].scaling_note] if mine[0].scaling_note else []
        own = sorted({round(d.data_std, 12) for d in mine if d.channel is None})
        if len(raw_stds) > 1 and not varies[lab] and len(own) == 1 and not mine[0].scaling_note:
            notes.append(f"data std {_fmt_std(own[0])}")
        text = lab + (f" ({'; '.join(notes)})" if notes else "")
        handles.append(Line2D([], [], color=colour[lab], lw=1.8, label=text))
    if styled:
        handles.append(Line2D([], [], color="none", label=" "))
        for s in styled:
            handles.append(Line2D([], [], color="0.25", lw=1.4, ls=style[s], label=f"data std {_fmt_std(s)}"))
    if win is not None:
        handles.append(
            Patch(
                facecolor="0.90",
                edgecolor="0.6",
                lw=0.6,
                label=f"target window\n[{win[0] * f:.2f}, {win[1] * f:.2f}] {units}",
            )
        )
    legend_title = None if len(raw_stds) > 1 or channels else f"data std {_fmt_std(raw_stds[0])}"
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        title=legend_title,
        handlelength=2.4,
        title_fontsize=8,
        alignment="left",
        borderaxespad=0.0,
    )
    per = "nat" if units == "nats" else "dB"
    ax.set_xlabel(f"← noisier        extended log-SNR  λ = ln(α²·std² / σ²)  [{units}]        cleaner →")
    ax.set_ylabel(f"density  p(λ)  [1/{per}]")
    ax.set_xlim(lam[0] * f, lam[-1] * f)
    ax.set_ylim(0, ymax * 1.08)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="both", color="0.92", lw=0.6, zorder=-1)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, loc="left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out
