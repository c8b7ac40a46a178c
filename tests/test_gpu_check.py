"""The GPU check's logic, on the CPU: ``scripts/gpu_check.sh`` without CUDA, the throughput driver's
whole pipeline in its tiny ``--device cpu --quick`` mode (cases, guards, ratios, dry run, test results,
report), and the synthetic latent set it trains on. The CUDA measurements themselves are
``tests/test_cuda.py`` and the driver's full plan, which only a GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="3.0">
<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>
<testcase classname="tests.test_cuda" name="test_b[DiT-B/2]" time="0.5"/>
<testcase classname="tests.test_cuda" name="test_c" time="1.0">
  <failure message="AssertionError: the skipped step moved the weights">long traceback</failure>
</testcase>
<testcase classname="tests.test_cuda" name="test_d" time="0.0">
  <skipped type="pytest.skip" message="needs two GPUs">skip</skipped>
</testcase>
</testsuite></testsuites>
"""


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_data
        import gpu_throughput

        yield gpu_throughput, gpu_data
    finally:
        sys.path.remove(str(BENCH))


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    report = tmp_path / "report"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env["GPU_CHECK_REPORT_DIR"] = str(report)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 0
    assert len(out) == 1 and "no CUDA GPU" in out[0], out
    assert not report.exists(), "nothing may be written without a GPU"


@pytest.fixture(scope="module")
def quick_report(bench, tmp_path_factory):
    gpu_throughput, _ = bench
    out = tmp_path_factory.mktemp("gpu-report")
    junit = out / "junit.xml"
    junit.write_text(JUNIT)
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--tests-junit", str(junit)]
    assert gpu_throughput.main(argv) == 0
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_quick_run_measures_every_case(bench, quick_report):
    gpu_throughput, _ = bench
    data, _ = quick_report
    rows = data["results"]
    plan = gpu_throughput.QUICK
    assert [(r["model"], r["batch"], r["variant"]) for r in rows] == gpu_throughput.cases(plan)
    assert {r["variant"] for r in rows} == {"official-fp32", "official-amp", "fasterdit", "dit-recipe",
                                            "fasterdit-compiled"}  # fmt: skip
    peak = data["peak"]["bf16_flops"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["tflops"] == pytest.approx(r["train_flops"] / r["step_s"] / 1e12)
        assert r["frac_peak"] == pytest.approx(r["train_flops"] / r["step_s"] / peak)
        assert r["first_step_s"] > 0 and r["step_s"] > 0
    # the ratios divide by the official steps at the same model and batch
    by = {(r["batch"], r["variant"]): r for r in rows}
    for (batch, _), r in by.items():
        fp32, amp = by[(batch, "official-fp32")], by[(batch, "official-amp")]
        assert r["x_official_fp32"] == pytest.approx(r["images_per_s"] / fp32["images_per_s"])
        assert r["x_official_amp"] == pytest.approx(r["images_per_s"] / amp["images_per_s"])
    # the analytic FLOPs: the official step learns sigma (8 output channels), fasterdit does not (4)
    assert by[(16, "official-fp32")]["train_flops"] > by[(16, "fasterdit")]["train_flops"]


def test_quick_run_dry_runs_targets_and_tests(quick_report):
    data, md = quick_report
    rows = [r for r in data["results"] if r["variant"] in ("fasterdit", "fasterdit-compiled")]
    assert [(d["model"], d["batch"]) for d in data["dry_run"]] == [("DiT-Mi/2", 8), ("DiT-Mi/2", 16)]
    for d in data["dry_run"]:
        assert d["rc"] == 0 and "config ok" in d["text"] and d["mfu"] == 0.4
        assert d["est_ms"] > 0 and d["peak_tflops"] == pytest.approx(989.4)
        fastest = min(r["step_s"] for r in rows if r["batch"] == d["batch"])
        assert d["measured_ms"] == pytest.approx(1e3 * fastest)
    (t,) = data["targets"]
    at16 = {r["variant"]: r for r in data["results"] if r["batch"] == 16}
    best = max(at16["fasterdit"]["images_per_s"], at16["fasterdit-compiled"]["images_per_s"])
    assert t["batch"] == 16 and t["ratio"] == pytest.approx(best / at16["official-fp32"]["images_per_s"])
    assert t["ratio_met"] == (t["ratio"] >= 1.5)
    tests = data["tests"]
    assert tests["counts"] == {"passed": 2, "failed": 1, "skipped": 1}
    failed = next(c for c in tests["cases"] if c["outcome"] == "failed")
    assert failed["name"] == "test_c" and failed["seconds"] == 1.0
    for heading in ("# GPU check (CPU smoke run", "## CUDA tests", "## Peak matmul rates",
                    "## Training throughput", "## `fasterdit train --dry-run`", "## Targets"):  # fmt: skip
        assert heading in md, heading
    assert "the skipped step moved the weights" in md and "needs two GPUs" in md


def test_an_exhausted_budget_skips_every_case_and_still_reports(bench, tmp_path):
    gpu_throughput, _ = bench
    assert gpu_throughput.main(["--device", "cpu", "--quick", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["results"] and all(r["status"] == "skipped" for r in data["results"])
    assert all(r["note"].startswith("budget") for r in data["results"])
    assert data["targets"] == [{"model": "DiT-Mi/2", "status": "not measured"}]
    assert data["tests"] is None and "Not run in this invocation" in (tmp_path / "gpu.md").read_text()


def test_the_full_plan_puts_the_comparison_first_and_sizes_memory(bench):
    import gpu_throughput_cases as g  # the plans and the memory guard (on the path the fixture set)

    order = g.cases(g.FULL)
    head = g.FULL.head_batch["DiT-XL/2"]
    assert order[:4] == [("DiT-XL/2", head, v) for v in (*g.OFFICIAL, "fasterdit", "fasterdit-compiled")]
    assert len(order) == len(set(order))
    # on an H200 (140 GiB, 90% usable) the fp32 official XL/2 step fits at the head batch, not at 256
    usable = 0.9 * 140
    assert g.memory_need("DiT-XL/2", head, "official-fp32", g.FULL) < usable
    assert g.memory_need("DiT-XL/2", 256, "official-fp32", g.FULL) > usable
    assert g.memory_need("DiT-XL/2", 256, "fasterdit", g.FULL) < usable


def test_synthetic_latent_set_statistics_match_its_draws(bench, tmp_path):
    from fasterdit.data.prepared import PreparedDataset

    _, gpu_data = bench
    gpu_data.write_latent_set(tmp_path, items=300, channels=3, resolution=4, num_classes=5, shard_items=128,
                              vae="some/vae")  # fmt: skip
    ds = PreparedDataset(tmp_path)
    assert (len(ds), ds.channels, ds.resolution, ds.num_classes) == (300, 3, 4, 5)
    assert len(ds.shard_files) == 3 and ds.is_latent and ds.vae == "some/vae"
    g = torch.Generator().manual_seed(0)
    x = torch.cat([ds.get_batch(torch.arange(300), g)[0] for _ in range(20)]).double()
    # the manifest's statistics are those of the latents the reader draws (Monte Carlo: 96,000 values)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.tensor(ds.stats.mean, dtype=torch.float64),
                               atol=0.02, rtol=0)  # fmt: skip
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.tensor(ds.stats.std, dtype=torch.float64),
                               rtol=0.02, atol=0)  # fmt: skip
    assert min(ds.stats.std) > 0.5 and max(ds.stats.std) < 1.5  # about unit std, like SD latents
    labels = ds.get_batch(torch.arange(300), g)[1]
    assert labels.min() >= 0 and labels.max() < 5


def test_a_cut_test_run_is_read_from_its_verbose_log(bench, tmp_path):
    gpu_throughput, _ = bench
    log = tmp_path / "cuda-tests.log"
    log.write_text(
        "tests/test_cuda.py::test_a PASSED                [  8%]\n"
        "tests/test_cuda.py::test_b[DiT-XL/2] FAILED      [ 16%]\n"
        "tests/test_cuda.py::test_c SKIPPED (needs two GPUs) [ 25%]\n"
        "tests/test_cuda.py::test_d \n"  # running when the time limit struck: no outcome
    )
    got = gpu_throughput.read_pytest_log(log)
    assert got["cut"] and got["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [(c["name"], c["outcome"]) for c in got["cases"]] == [
        ("test_a", "passed"),
        ("test_b[DiT-XL/2]", "failed"),
        ("test_c", "skipped"),
    ]
    assert gpu_throughput.read_pytest_log(tmp_path / "missing.log") is None
