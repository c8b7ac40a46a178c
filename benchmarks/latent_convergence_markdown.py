"""Markdown cells and lines that every section of ``latent_convergence.py``'s report shares: ratios and
ranges as shown in tables, a part's sizes, the commands that made its runs, and the note for a part that
has not run.

Why a module of its own: the report's sections live in several modules and must phrase these the same way.
"""

from __future__ import annotations

import math
from typing import Any


def fmt_times(v: float | None, suffix: str = "×") -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.2f}{suffix}"


def fmt_range(r: tuple[float, float] | None, fmt: str = "{:.2f}×") -> str:
    return "–" if r is None else f"{fmt.format(r[0])}–{fmt.format(r[1])}"


def sizes_line(m: dict[str, Any]) -> str:
    s = m["settings"]
    return (
        f"`{s['model']}`, {s['steps']} steps × batch {s['batch_size']}, evaluation every {s['eval_every']} "
        f"steps (N = {s['num_samples']}, {s['equal_nfe']['steps']} NFE)"
    )


def not_run(part: str) -> str:
    return f"*Not run yet:* `python benchmarks/latent_convergence.py --part {part}`.\n"


def runs_by(ms: list[dict[str, Any]]) -> str:
    """The commands that made a part's runs (each metrics file holds its own)."""
    return "; ".join(f"`{c}`" for c in sorted({m["command"] for m in ms}))
