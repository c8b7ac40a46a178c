"""Scale against shift, with the sampler's grid moved too (issue #26, a reading of the ``shift`` part).

Written 2026-12-05 23:15 UTC, after the ``shift`` part had finished (data × 0.5: 8.78, shift 2: 6.83;
data × 2: 10.69, shift 0.5: 14.01; 3 seeds each), before any of the evaluations below ran.

**Why.** A training-time shift ``s`` and a data scale ``1/s`` put the same PDF on λ_data during training,
but ``snr_validation`` evaluates every run with the same unshifted Euler grid (25 steps). In λ_data terms
the grid of a scaled run moves with its data (λ_data = λ + 2·ln k), the grid of a shifted run does not: the
two parametrisations are trained alike but sampled on different λ grids. Sampling a shift-``s`` run with the
sampler's own time shift ``s`` (``--sampler-opt shift=s``, the same ``t' = s·t / (1 + (s − 1)·t)``) puts its
grid where the scaled run's grid is, exactly, so what remains between the two is the parametrisation alone
(the amplitude the network reads and writes).

**What runs.** ``fasterdit eval`` (fresh process, the run's own N, seed, sampler and steps) on the final
checkpoint of every shift run whose run dir is on this machine, once with the sampler's grid shifted by the
run's ``s``. Compared with the scaled runs' final FIDs at ``k = 1/s`` (their metrics files). No verdict rule
beyond the one of the main report (a gap is a gap when it exceeds the larger seed spread); with fewer than
3 seeds it is a reading, not a test.

Usage (after ``snr_validation.py --part shift``; its run dirs in ``--work``)::

    python benchmarks/snr_validation_shift_grid.py   # docs/benchmarks/snr_validation_shift_grid.{md,json}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import snr_validation as sv


def eval_with_grid_shift(run_dir: Path, shift: float, out: Path) -> dict[str, Any]:
    """``fasterdit eval`` on the run's final checkpoint, its settings, the sampler's grid shifted."""
    cmd = [sys.executable, "-m", "fasterdit.cli", "eval", "--ckpt", str(run_dir), "--no-progress"]
    cmd += ["--sampler-opt", f"shift={shift:g}", "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    shift_runs = [m for m in sv.finished(args, "shift") if float(m["settings"]["time_shift"]) != 1.0]
    scaled = sv.finished(args, "shift") + sv.finished(args, "sweep")
    out = []
    for s in sorted({float(m["settings"]["time_shift"]) for m in shift_runs}):
        k = 1.0 / s
        at_k = {
            int(m["seed"]): sv.final_fid(m)
            for m in scaled
            if m["name"].startswith("latents-raw-lognorm-k")
            and float(m["settings"]["time_shift"]) == 1.0
            and abs(float(m["settings"]["k"]) / k - 1.0) < 1e-9
        }
        row: dict[str, Any] = {"time_shift": s, "k": k, "fid_scale": at_k, "runs": []}
        with tempfile.TemporaryDirectory() as tmp:
            for m in sorted((m for m in shift_runs if float(m["settings"]["time_shift"]) == s),
                            key=lambda m: m["seed"]):  # fmt: skip
                run_dir = Path(args.work) / "runs" / "shift" / m["name"]
                entry = {"run": m["name"], "seed": int(m["seed"]), "fid_unshifted_grid": sv.final_fid(m)}
                if run_dir.is_dir():
                    again = eval_with_grid_shift(run_dir, s, Path(tmp) / f"{m['name']}.json")
                    entry["fid_shifted_grid"] = float(again["fid"])
                else:
                    entry["fid_shifted_grid"] = None  # the run dir was on an earlier machine
                row["runs"].append(entry)
        out.append(row)
    return out


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def markdown(table: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Scale against shift, sampled on the same λ grid (issue #26)",
        "",
        "Command: `python benchmarks/snr_validation_shift_grid.py` (after `snr_validation.py --part shift`).",
        "",
        "## Machine",
        "",
        common.facts_markdown(machine),
        "",
        "## Why and what",
        "",
        __doc__.split("\n\n", 2)[2].split("Usage (")[0].strip(),
        "",
        "## Results",
        "",
    ]
    md_rows = []
    for r in table:
        scale = list(r["fid_scale"].values())
        for e in r["runs"]:
            md_rows.append([f"{r['time_shift']:g}", e["run"], e["fid_unshifted_grid"], e["fid_shifted_grid"],
                            f"{_mean(scale):.2f} (seeds {len(scale)})" if scale else "not run"])  # fmt: skip
    lines.append(
        common.md_table(
            ["shift s", "run", "FID, unshifted grid (report)", "FID, grid shifted by s", "data × 1/s (mean)"],
            md_rows,
        )
    )
    lines.append("")
    for r in table:
        scale = list(r["fid_scale"].values())
        shifted = [e["fid_shifted_grid"] for e in r["runs"] if e["fid_shifted_grid"] is not None]
        plain = [e["fid_unshifted_grid"] for e in r["runs"]]
        if scale and shifted:
            lines.append(
                f"* s = {r['time_shift']:g} (data × {r['k']:g}): scaled {_mean(scale):.2f}, shifted with the "
                f"report's grid {_mean(plain):.2f}, shifted with its grid moved {_mean(shifted):.2f} "
                f"({len(shifted)} of {len(plain)} seeds re-evaluated)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/snr_validation", help="snr_validation's --work (its run dirs)")
    p.add_argument("--results", default=str(sv.RESULTS), help="snr_validation's metrics files")
    p.add_argument("--docs", default=str(sv.DOCS), help="where the report goes")
    args = p.parse_args(argv)
    common.set_argv(argv)
    table = rows(args)
    machine = common.machine_facts()
    docs = Path(args.docs)
    record = {"rows": table, "machine": machine, "command": common.command_line(__file__)}
    common.write_json(docs / "snr_validation_shift_grid.json", record)
    (docs / "snr_validation_shift_grid.md").write_text(markdown(table, machine))
    print(f"wrote {docs / 'snr_validation_shift_grid.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
