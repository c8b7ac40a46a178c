"""benchmarks/snr_validation_shift_grid.py: which runs it pairs, from metrics files alone (no run dirs here,
so nothing is re-evaluated), and that the sampler's grid shift lands on the scaled run's λ grid."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

from fasterdit.diffusion.sampling_base import shift_time

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def grid():
    sys.path.insert(0, str(BENCH))
    try:
        import snr_validation_shift_grid

        yield snr_validation_shift_grid
    finally:
        sys.path.remove(str(BENCH))


def _metrics(folder: Path, name: str, seed: int, k: float, shift: float, fid: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m = {"name": name, "seed": seed, "status": "ok", "evals": [{"step": 1050, "fid": fid}],
         "settings": {"k": k, "time_shift": shift}}  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(m))


def test_each_shift_is_paired_with_the_runs_at_k_equal_to_one_over_it(grid, tmp_path):
    res = tmp_path / "results"
    _metrics(res / "sweep", "latents-raw-lognorm-k0.5-s0", 0, 0.5, 1.0, 8.0)
    _metrics(res / "sweep", "latents-raw-lognorm-k2-s0", 0, 2.0, 1.0, 10.0)
    _metrics(res / "shift", "latents-raw-lognorm-k0.5-s1", 1, 0.5, 1.0, 9.0)
    _metrics(res / "shift", "latents-raw-lognorm-shift2-s0", 0, 1.0, 2.0, 7.0)
    _metrics(res / "shift", "latents-raw-lognorm-shift0.5-s0", 0, 1.0, 0.5, 15.0)
    args = argparse.Namespace(work=str(tmp_path / "work"), results=str(res))
    rows = {r["time_shift"]: r for r in grid.rows(args)}
    assert set(rows) == {0.5, 2.0}
    assert rows[2.0]["fid_scale"] == {0: 8.0, 1: 9.0} and rows[0.5]["fid_scale"] == {0: 10.0}
    run = {"run": "latents-raw-lognorm-shift2-s0", "seed": 0, "fid_unshifted_grid": 7.0}
    assert rows[2.0]["runs"] == [run | {"fid_shifted_grid": None}]  # no run dir here: not re-evaluated


@pytest.mark.parametrize("s", [0.5, 2.0, 3.7])
def test_a_grid_shifted_by_s_on_data_x1_sits_where_the_plain_grid_sits_on_data_x_1_over_s(s):
    # linear flow: lambda(t) = 2 ln((1 - t) / t) + 2 ln std; the grid point t moves to shift_time(t, s)
    for t in (0.05, 0.3, 0.5, 0.8, 0.97):
        shifted = 2 * math.log((1 - shift_time(t, s)) / shift_time(t, s))
        scaled = 2 * math.log((1 - t) / t) + 2 * math.log(1 / s)
        assert shifted == pytest.approx(scaled, abs=1e-12)
