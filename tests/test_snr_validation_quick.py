"""benchmarks/snr_validation.py: its --quick mode end to end (every part through the real trainer, the real
``fasterdit snr --recommend`` and the report), and the report's case record against the issue's keys.

The quick runs train a DiT-Mi/2 for 2 steps, so their numbers mean nothing; what is checked is that the parts
run, resume from their metrics files, and that ``snr_validation.json`` holds one case per (data, law) with
exactly the keys the issue fixes, filled from those files alone.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
KEYS = {"data", "law", "raw_std", "best_scale", "recommended_scale", "fid_best", "fid_recommended",
        "fid_default", "seed_spread"}  # fmt: skip


@pytest.fixture(scope="module")
def sv():
    sys.path.insert(0, str(BENCH))
    try:
        import snr_validation

        yield snr_validation
    finally:
        sys.path.remove(str(BENCH))


def test_quick_mode_runs_every_part_and_writes_the_cases(sv, capsys):
    assert sv.main(["--quick"]) == 0  # its own temp work, results and docs dirs
    out = capsys.readouterr().out
    docs = Path(out.split("wrote ")[-1].strip()).parent
    report = json.loads((docs / "snr_validation.json").read_text())
    cases = {(c["data"], c["law"]): c for c in report["cases"]}
    assert set(cases) == {(d, w) for d in sv.DATASETS for w in sv.LAWS}
    assert all(set(c) == KEYS for c in cases.values())
    a = cases[("latents-raw", "lognorm")]
    # the raw latents: the scaled latents (std ~1) x 1/scaling_factor; the tool moves them back to std 1
    assert a["raw_std"] == pytest.approx(1.0 / a["recommended_scale"], rel=1e-6)
    assert a["best_scale"] in sv.SCALES and math.isfinite(a["fid_best"]) and a["seed_spread"] >= 0
    b = cases[("latents16-raw", "uniform")]  # the second autoencoder's raw latents, also moved to std 1
    assert b["raw_std"] == pytest.approx(1.0 / b["recommended_scale"], rel=1e-6)
    # (d), the scaled latents x 5, is (a) relabelled: the same runs read at k x f, and the tool's answer
    # moves by f exactly (it sets k * raw std): a statement about the rule, not new training evidence
    d = cases[("latents-x5", "lognorm")]
    f = a["raw_std"] / d["raw_std"]
    assert d["raw_std"] == pytest.approx(5.0, rel=0.02)  # the scaled latents have std ~1 by construction
    assert d["recommended_scale"] == pytest.approx(a["recommended_scale"] * f, rel=1e-6)
    assert d["best_scale"] == pytest.approx(a["best_scale"] * f, rel=1e-9)
    assert (d["fid_best"], d["fid_recommended"]) == (a["fid_best"], a["fid_recommended"])
    reading = next(r for r in report["readings"] if r["data"] == "latents-x5" and r["law"] == "lognorm")
    assert reading["relabels"] == "latents-raw"
    cal = report["calibration"]  # item 4: fitted on (a) and (b), the held-out (c) trained at the new rule's k
    assert cal["status"] == "fitted" and 0 < cal["q"] < 1 and math.isfinite(cal["lam_lo"])
    held = [c for c in cal["cases"] if c["data"] == cal["held_out"]]
    assert held and all(c["fid_new_seeds"] and math.isfinite(c["fid_new"]) for c in held)
    assert len(report["scale_vs_shift"]) == len(sv.SHIFT_KS)
    assert all(r["fid_scale"] and r["fid_shift"] for r in report["scale_vs_shift"])


def test_the_sweep_grows_past_an_edge_where_its_best_sits_and_stops_after_two_steps(sv, tmp_path):
    """The protocol's amendment: a best at the grid's edge adds the next ×2 step beyond it (at most twice)."""
    args = sv.parse_args(["--report", "--results", str(tmp_path)])

    def finish(k: float, fid: float) -> None:
        name = f"latents16-raw-lognorm-k{k:.4g}-s0"
        m = {"name": name, "status": "ok", "settings": {"k": k}, "evals": [{"step": 1, "fid": fid}]}
        (tmp_path / "sweep").mkdir(exist_ok=True)
        (tmp_path / "sweep" / f"{name}.json").write_text(json.dumps(m))

    assert sv.sweep_scales(args, "latents16-raw", "lognorm") == list(sv.SCALES)
    for k in sv.SCALES:
        finish(k, 10.0 + k)  # lowest at the low edge
    assert sv.sweep_scales(args, "latents16-raw", "lognorm") == [0.125, *sv.SCALES]
    finish(0.125, 9.0)
    assert sv.sweep_scales(args, "latents16-raw", "lognorm") == [0.0625, 0.125, *sv.SCALES]
    finish(0.0625, 8.0)  # still at the edge, but two steps is the limit
    assert sv.sweep_scales(args, "latents16-raw", "lognorm") == [0.0625, 0.125, *sv.SCALES]
    finish(0.0625, 12.0)  # now interior: no further growth either way
    assert sv.sweep_scales(args, "latents16-raw", "lognorm") == [0.0625, 0.125, *sv.SCALES]
