"""``benchmarks/diffusers_fid.py --quick``: every arm through the real code, the report and the docs table.

The quick run trains a 2-step DiT-Mi/2, exports it, samples N = 20 per arm and seed through ``fasterdit
eval``, the shipped ``FasterDiTPipeline`` and the stock ``DiTPipeline`` (diffusers' and DiT's frequencies),
and writes the report and a filled-in copy of docs/diffusers.md under its work folder, never into the
repository.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ARMS = {"fasterdit", "shipped", "stock-shift1", "stock-shift0", "fasterdit-cfg1"}
WATCHED = [ROOT / "docs" / "diffusers.md", *sorted((ROOT / "docs" / "benchmarks").glob("diffusers_fid*"))]


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def _results_listing() -> list[str]:
    d = ROOT / "benchmarks" / "results" / "diffusers_fid"
    return sorted(str(p) for p in d.rglob("*")) if d.is_dir() else []


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    before, listing = _digest(WATCHED), _results_listing()
    work = tmp_path_factory.mktemp("dfid")
    try:
        bench = importlib.import_module("diffusers_fid")
        assert bench.main(["--quick", "--work", str(work)]) == 0
        yield bench, work
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))
    assert _digest(WATCHED) == before, "--quick wrote into the repository's docs"
    assert _results_listing() == listing, "--quick wrote into benchmarks/results"


def test_report_has_every_arm_and_seed_with_finite_fids(quick):
    bench, work = quick
    data = json.loads((work / "docs" / "benchmarks" / "diffusers_fid.json").read_text())
    got = {(r["arm"], r["seed"]) for r in data["arms"]}
    assert got == {(a, s) for a in ARMS for s in bench.SEEDS}
    for r in data["arms"]:
        assert math.isfinite(r["fid"]) and r["fid"] > 0, r
        assert r["num_samples"] == r["n"] == 20
        assert 0.0 <= r["class_accuracy"] <= 1.0
    by = {(r["arm"], r["seed"]): r for r in data["arms"]}
    assert by[("fasterdit", 0)]["cfg_scale"] == by[("shipped", 0)]["cfg_scale"] == 4.0
    assert by[("stock-shift1", 0)]["downscale_freq_shift"] == 1
    assert by[("stock-shift0", 0)]["downscale_freq_shift"] == 0
    rd = data["readings"]
    assert len(rd["frequency_effect"]) == 2 and all(math.isfinite(v) for v in rd["frequency_effect"])
    assert rd["frequency_matters"] in (True, False)
    # the shipped pipeline from fasterdit's noise gives fasterdit's 8-bit images (up to one level)
    pairs = {(tuple(p["arms"]), p["seed"]): p for p in data["paired"]}
    for s in bench.SEEDS:
        assert pairs[(("fasterdit", "shipped"), s)]["max_abs_levels"] <= 1
        assert pairs[(("stock-shift1", "stock-shift0"), s)]["same_labels"]
    md = (work / "docs" / "benchmarks" / "diffusers_fid.md").read_text()
    assert "python benchmarks/diffusers_fid.py --quick" in md and "## Machine" in md


def test_docs_table_filled_in_the_copy(quick):
    bench, work = quick
    text = (work / "docs" / "diffusers.md").read_text()
    inside = text.split(bench.START, 1)[1].split(bench.END, 1)[0]
    assert "| arm |" in inside and "(3) stock DiTPipeline" in inside
    assert "frequency shift changes FID" in inside
    assert "Not measured yet" not in inside
    assert text.count(bench.START) == text.count(bench.END) == 1


def test_rerun_keeps_finished_arms(quick, capsys):
    bench, work = quick
    files = sorted((work / "results").glob("*-s*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--work", str(work)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert len(files) == 10 and {p: p.stat().st_mtime_ns for p in files} == stamps
    assert capsys.readouterr().out.count("done, kept") == 10
