"""Every benchmark script runs end to end in its --quick mode and writes its report (CI smoke test).

The quick modes train for a handful of steps, so the numbers in their reports mean nothing; what is
checked is that the real code paths (trainer, evaluation, samplers, profiler) still fit together and
that each report holds its command, machine facts, tables and plots. The pure helpers the reports
rely on (curve interpolation, the baseline network) are checked against independent references.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


# ---------------------------------------------------------------------------------------------- helpers


def test_steps_to_reach_interpolates_linearly(bench):
    common = bench("common")
    # FID falls linearly from 100 at step 100 to 50 at step 200: it reaches 80 at step 140
    assert common.steps_to_reach([100, 200, 300], [100.0, 50.0, 40.0], 80.0) == pytest.approx(140.0)
    # first crossing counts even if the curve goes up again later
    assert common.steps_to_reach([1, 2, 3, 4], [10.0, 4.0, 8.0, 3.0], 5.0) == pytest.approx(1 + 5 / 6)
    assert common.steps_to_reach([1, 2], [10.0, 9.0], 5.0) is None
    # already below at the first evaluation: the first step, flagged as a bound
    assert common.steps_to_reach([50, 100], [3.0, 2.0], 5.0) == 50
    assert common.reach_is_bounded([50, 100], [3.0, 2.0], 5.0)


def test_speedup_definition(bench):
    conv = bench("convergence_curves")
    # baseline reaches its final FID 10 at step 1000; the fast curve reaches 10 at step 250 -> 4x
    base = ([250, 500, 750, 1000], [40.0, 20.0, 15.0, 10.0])
    fast = ([250, 500, 750, 1000], [10.0, 6.0, 5.0, 4.0])
    fast_late = ([250, 500, 750, 1000], [30.0, 14.0, 6.0, 4.0])
    d = conv.speedup(base, fast_late)
    assert d["fast_steps"] == pytest.approx(500 + 250 * 4 / 8)
    assert d["speedup"] == pytest.approx(1000 / 625)
    assert d["bound"] is None
    assert conv.speedup(base, fast)["bound"] == "lower bound"
    assert conv.speedup(fast, base)["speedup"] is None  # never reached


def test_baseline_network_matches_fasterdit_dit(bench):
    """The throughput baseline is the same network: same weights -> same outputs."""
    from fasterdit.models import create_model

    baseline = bench("baseline_dit")
    torch.manual_seed(0)
    ours = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=True).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    base = baseline.BaselineDiT(8, 2, 1, 128, 4, 2, 10).eval()
    base.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 1, 8, 8)
    t, y = torch.tensor([0.0, 400.0, 999.0]), torch.tensor([1, 5, 10])
    with torch.no_grad():
        # the reference is ours in float64: two float32 implementations need not round alike, but each
        # must be within float32 round-off of the exact network (the baseline embeds t in float32 only)
        out = ours.double()(x.double(), t, y)
        assert out.abs().max() > 0.1  # a non-trivial output (the zero-init layers were perturbed)
        torch.testing.assert_close(base(x, t, y).double(), out, rtol=1e-4, atol=1e-4)


def test_baseline_loss_matches_fasterdit_dit_loss(bench):
    """The baseline's DiT loss (numpy tables, tanh CDF) agrees with fasterdit's `dit` loss at fixed draws."""
    from fasterdit.diffusion import DiffusionLoss, get_preset

    baseline = bench("baseline_dit")
    torch.manual_seed(1)
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    idx = torch.tensor([0, 1, 10, 250, 700, 999])
    noise = torch.randn_like(x0)
    weights = torch.randn(1, 2, 1, 1, dtype=torch.float64)

    def net(x, t, y=None, **kw):  # a fixed smooth function of (x, t): the losses must agree on it
        s = torch.sin(t / 300.0).view(-1, 1, 1, 1)
        return torch.cat([torch.tanh(x + s), torch.tanh(0.3 * x - s)], dim=1) * weights.abs()

    bd = baseline.BaselineDiffusion()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(123)
    ref = bd.training_losses(net, x0, idx, None)
    torch.manual_seed(123)
    eps = torch.randn_like(x0)  # the noise the baseline drew
    terms = DiffusionLoss(get_preset("dit"))(net, x0, None, generator=gen, t=(idx + 1) / 1000.0, noise=eps)
    torch.testing.assert_close(terms["mse"], ref["mse"].mean(), rtol=1e-5, atol=1e-7)
    # VB: the baseline uses DiT's tanh approximation of the normal CDF (exact CDF in fasterdit)
    torch.testing.assert_close(terms["vb"], ref["vb"].mean(), rtol=2e-3, atol=1e-4)
    del noise


# ------------------------------------------------------------------------------------------ quick runs


def _check_report(md: Path, must: list[str]) -> str:
    assert md.is_file(), md
    text = md.read_text()
    assert "Command (from the repository root)" in text and "--quick" in text
    assert "torch " in text and "logical cores" in text
    for s in must:
        assert s in text, f"{s!r} missing from {md.name}"
    for img in [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (md.parent / img).is_file(), img
        assert (md.parent / img).stat().st_size > 5000  # a real plot, not an empty canvas
    return text


def test_convergence_quick(bench, tmp_path):
    conv = bench("convergence")
    assert conv.main(["--quick", "--out", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "runs")]) == 0
    _check_report(
        tmp_path / "r" / "convergence.md",
        [
            "speed-up",
            "fasterdit-no-dir",
            "fasterdit-uniform",
            "fasterdit-no-std",
            "Comparison with the paper",
        ],
    )
    data = json.loads((tmp_path / "r" / "convergence.json").read_text())
    runs = data["runs"]
    assert {r["variant"] for r in runs} == set(conv.VARIANTS)
    assert sorted(r["seed"] for r in runs if r["variant"] == "fasterdit") == [0, 1]
    for r in runs:
        assert r["steps"] == [8, 16] and all(math.isfinite(f) and f > 0 for f in r["fid"])


def test_std_sweep_quick(bench, tmp_path):
    std = bench("std_sweep")
    assert std.main(["--quick", "--out", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "runs")]) == 0
    _check_report(tmp_path / "r" / "std_sweep.md", ["ddpm-linear", "flow-linear", "lognorm", "median λ"])
    res = json.loads((tmp_path / "r" / "std_sweep.json").read_text())["results"]
    assert len(res) == 2 * 2 * 2 and all(math.isfinite(r["fid"]) for r in res)


def test_throughput_quick(bench, tmp_path):
    tp = bench("throughput")
    assert tp.main(["--quick", "--out", str(tmp_path), "--tag", "t"]) == 0
    _check_report(tmp_path / "throughput.md", ["GFLOP/s", "baseline", "Where the time goes"])
    raw = json.loads((tmp_path / "throughput_t.json").read_text())
    r = raw["results"]["bench"]
    assert r["baseline"]["max_output_diff"] < 1e-4
    for v in ("baseline", "fasterdit", "dit-recipe"):
        assert r[v]["samples_per_sec"] > 0 and r[v]["flops_per_sec"] > 0


def test_checkpoint_io_quick(bench, tmp_path):
    cio = bench("checkpoint_io")
    assert cio.main(["--quick", "--out", str(tmp_path / "r"), "--dir", str(tmp_path)]) == 0
    _check_report(tmp_path / "r" / "checkpoint_io.md", ["s/GB", "What fits between SIGTERM and SIGKILL"])
    data = json.loads((tmp_path / "r" / "checkpoint_io.json").read_text())
    assert set(data["s_per_gb"]) == set(cio.VARIANTS) and all(v > 0 for v in data["s_per_gb"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # what it wrote to measure is gone


def test_loader_io_quick(bench, tmp_path):
    lio = bench("loader_io")
    assert lio.main(["--quick", "--out", str(tmp_path / "r"), "--dir", str(tmp_path / "set")]) == 0
    _check_report(tmp_path / "r" / "loader_io.md", ["Samples/s per core", "data.prefetch"])
    data = json.loads((tmp_path / "r" / "loader_io.json").read_text())
    assert data["rows"] == 20_000 and data["warm"]["samples_per_s"] > 0
    assert [s["prefetch"] for s in data["stalls"]][:2] == [0, 1]
    assert not (tmp_path / "set").exists()  # the set is removed unless --keep


def test_sampling_cost_quick(bench, tmp_path):
    sc = bench("sampling_cost")
    argv = [
        "--quick",
        "--out",
        str(tmp_path),
        "--ckpt",
        str(tmp_path / "none"),
        "--dit-ckpt",
        str(tmp_path / "none"),
    ]
    assert sc.main(argv) == 0
    _check_report(tmp_path / "sampling_cost.md", ["euler", "heun", "dopri5", "ddpm (dit)"])
    rows = json.loads((tmp_path / "sampling_cost.json").read_text())["rows"]
    heun = [r for r in rows if r["sampler"] == "heun"]
    assert [r["nfe"] for r in heun] == [2.0, 4.0]  # quick mode: 1 and 2 steps, 2·steps (full Heun to t = 0)
    assert all(math.isfinite(r["fid"]) for r in rows)


def test_std_sweep_spearman_matches_scipy(bench):
    """The sweep's paper check uses its own rank correlation: compare with scipy's, ties included."""
    from scipy.stats import spearmanr

    sweep = bench("std_sweep")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, generator=g).tolist()
    b = [x + 0.5 * y for x, y in zip(a, torch.rand(40, generator=g).tolist())]
    assert sweep.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    tied_a, tied_b = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0], [0.3, 0.1, 0.2, 0.9, 0.5, 0.7]
    assert sweep.spearman(tied_a, tied_b) == pytest.approx(spearmanr(tied_a, tied_b).statistic, abs=1e-12)
    assert sweep.spearman(a, [-x for x in a]) == pytest.approx(-1.0)
