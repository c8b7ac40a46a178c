"""benchmarks/latent_convergence.py: its --quick mode end to end, resume from the metrics files, the report
of parts not run yet, and the pure readings the report draws its verdicts from.

The quick mode trains a DiT-Mi/2 for a few steps on real mnist-ae latents, so its numbers mean nothing; what
is checked is that every part runs through the real code paths (prepare, trainer with latent evaluation,
converged-NFE evaluation of kept checkpoints, the autoencoder floor, ``fasterdit snr --recommend``), writes
one metrics file per run, and that the report is assembled from those files alone.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from test_benchmarks_quick import _check_report

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def lc(bench):
    """The command line (``latent_convergence.py``)."""
    return bench("latent_convergence")


@pytest.fixture(scope="module")
def plan(bench):
    """The budgets, seeds and variants of every part (``latent_convergence_plan.py``)."""
    return bench("latent_convergence_plan")


@pytest.fixture(scope="module")
def repa(bench):
    """Issue #29's REPA parts: the tuning sweep and the choice it feeds (``latent_convergence_repa.py``)."""
    return bench("latent_convergence_repa")


@pytest.fixture(scope="module")
def readings(bench):
    """The pure readings the report draws its verdicts from (``latent_convergence_analysis.py``)."""
    return bench("latent_convergence_analysis")


def test_latent_convergence_quick(lc, plan, tmp_path):
    work, res, out = tmp_path / "work", tmp_path / "results", tmp_path / "report"
    argv = ["--quick", "--work", str(work), "--results", str(res), "--out", str(out)]
    assert lc.main(argv) == 0
    text = _check_report(
        out / "latent_convergence.md",
        [
            "Where the runs ran",
            "Speed-up over `dit`, equal NFE",
            "Speed-up over `sit`, converged NFE",
            "Has dit's curve flattened?",
            "Long budget: 4× the headline's steps",
            "lr sweep",
            "fasterdit-no-std",
            "within the best two?",
            "reconstructions (posterior sample)",
            # issue #29: the composed recipes in the headline's tables, and their own section
            "`fasterdit+repa`, seed-mean curves",
            "`fasterdit+repa-off`, seed-mean curves",
            "Speed-up over `sit+repa`, equal NFE",
            "Speed-up over `sit+repa`, converged NFE",
            "REPA composed with the recipes (issue #29)",
            "Chosen for `fasterdit+repa`",
            "on vs off, within each run",
            "ms per forward pass",
        ],
    )
    assert "Not run yet" not in text and "not run yet" not in text
    files = {p: sorted(f.stem for f in (res / p).glob("*.json")) for p in plan.PARTS}
    assert files["lr"] == [f"{v}-lr{x:g}-s0" for v in plan.QUICK_LR_VARIANTS for x in plan.QUICK_LRS]
    assert files["headline"] == sorted(f"{v}-s{s}" for v in plan.HEADLINE for s in (0, 1))
    assert files["long"] == sorted(f"{v}-s0" for v in plan.HEADLINE)
    assert files["ablations"] == sorted(f"{v}-s0" for v in plan.QUICK_ABLATIONS)
    assert files["std"] == sorted(
        f"{law}-x{k:g}-s0" for law in plan.QUICK_STD_LAWS for k in plan.QUICK_STD_SCALES
    )
    sizes = plan.QUICK_SIZES["headline"]
    for name in files["headline"]:
        m = json.loads((res / "headline" / f"{name}.json").read_text())
        assert m["status"] == "ok" and m["quick"] and m["machine"]["cpu"] and "--quick" in m["command"]
        assert [e["step"] for e in m["evals"]] == [2, 4]
        assert all(math.isfinite(e["fid"]) and e["num_samples"] == sizes.num_samples for e in m["evals"])
        # converged NFE: dit/sit the final checkpoint, fasterdit also the intermediate one it kept
        want = [2, 4] if m["variant"] == "fasterdit" else [4]
        assert [c["step"] for c in m["converged"]] == want
        assert {c["sampler"] for c in m["converged"]} == {"ddpm" if m["variant"] == "dit" else "dopri5"}
        # the lr comes from the sweep where it ran (dit, fasterdit), from the documented default otherwise
        swept = m["variant"] in plan.QUICK_LR_VARIANTS
        assert m["lr_source"].startswith("lr sweep" if swept else "default")
        # only the final checkpoint is left in the scratch run dir
        assert len(list((work / "runs" / "headline" / name / "checkpoints").glob("step-*"))) == 1
    floors = json.loads((res / "floors.json").read_text())[f"mnist-ae/N={sizes.num_samples}"]
    assert floors["posterior_sample"]["fid"] > 0 and floors["fid_real_at_n"] > 0
    rec = json.loads((res / "snr_recommend.json").read_text())
    assert all(rec[law][m]["k"] > 0 for law in plan.STD_LAWS for m in ("median", "mass"))
    data = json.loads((out / "latent_convergence.json").read_text())
    assert {"headline", "long", "lr", "ablations", "std", "repa"} <= set(data["analysis"])
    check_repa_quick(plan, res, data)
    # the long part: one seed, so its flatness is judged by the relative slope; fasterdit's converged-NFE
    # checkpoints at 0.4 and 1 of 6 steps snap to the kept checkpoints 2 and 6
    assert data["analysis"]["long"]["flatness"]["rule"] == "relative slope"
    m = json.loads((res / "long" / "fasterdit-s0.json").read_text())
    assert [e["step"] for e in m["evals"]] == [2, 4, 6] and [c["step"] for c in m["converged"]] == [2, 6]

    # resume: every run has its metrics file, so a second invocation trains nothing and rewrites the report
    before = {p: p.stat().st_mtime_ns for p in res.rglob("*-s*.json")}
    assert lc.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*-s*.json")} == before
    # a metrics file of other settings is refused, not silently mixed in
    with pytest.raises(SystemExit, match="other settings"):
        lc.main([*argv, "--part", "lr", "--steps", "4"])


def check_repa_quick(plan, res, data):
    """Issue #29's parts in the quick run: the tuning sweep's two stages (fasterdit+repa only; sit+repa keeps
    REPA's default), the composed runs at the chosen setting, the alignment stopped half-way, the readings."""
    tune = sorted(f.stem for f in (res / "repa-tune").glob("*.json"))
    (w_best,) = {n.split("-w")[1].split("-")[0] for n in tune if "-d1-" in n}  # stage 2: at stage 1's best λ
    assert tune == sorted(
        [f"fasterdit+repa-w{w:g}-d2-s0" for w in plan.QUICK_REPA_TUNE_WEIGHTS]
        + [f"fasterdit+repa-w{w_best}-d1-s0"]
    )
    assert sorted(f.stem for f in (res / "repa").glob("*.json")) == ["fasterdit+repa-s0", "sit+repa-s0"]
    off = json.loads((res / "repa-off" / "fasterdit+repa-off-s0.json").read_text())
    fr = json.loads((res / "repa" / "fasterdit+repa-s0.json").read_text())
    sr = json.loads((res / "repa" / "sit+repa-s0.json").read_text())
    assert sr["align_source"].startswith("REPA's default") and fr["align_source"].startswith("tuning sweep")
    sov = sr["settings"]["recipe_overrides"]
    assert (sov["align.weight"], sov["align.depth"]) == (0.5, 2)
    ov = fr["settings"]["recipe_overrides"]
    assert ov["align.encoder"] == "mnist-ssl" and f"{ov['align.weight']:g}" == w_best
    assert {k: v for k, v in off["settings"]["recipe_overrides"].items() if k != "stages"} == ov
    assert off["settings"]["recipe_overrides"]["stages"] == [{"at": 2, "set": {"align.weight": 0}}]
    assert [c["step"] for c in off["converged"]] == [2, 4] and [c["step"] for c in sr["converged"]] == [4]
    assert [r[0] for r in off["train"]["throughput"]] == [2, 4]
    for kind in ("equal", "converged"):
        rd = data["analysis"]["headline"]["readings"][kind]
        for base, rows in (("dit", ("fasterdit+repa", plan.REPA_OFF)), ("sit", plan.REPA_VARIANTS)):
            for v in rows:
                assert rd[base][v]["status"] == "ok" and rd[base][v]["fast"] == v
        assert rd["sit+repa"]["status"] == "ok" and rd["sit+repa"]["fast"] == "fasterdit+repa"
        assert rd["sit+repa"]["target"] == 1.5 and rd["dit"]["fasterdit+repa"]["target"] == 7.0
        assert rd["sit+repa"][plan.REPA_OFF]["status"] == "ok"
    cost = data["analysis"]["repa"]["step_cost"]
    assert cost["encoder"]["forward_ms_per_batch"] > 0 and cost["fasterdit+repa"]["base_ms_per_step"]
    assert len(cost[plan.REPA_OFF]["per_seed_on_off_ms"]) == 1
    assert data["analysis"]["repa"]["tuning"]["fasterdit+repa"]["state"] == "tuned"


def test_report_without_runs_says_not_run_yet(lc, tmp_path):
    argv = ["--report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "r")]
    assert lc.main(argv) == 0
    text = (tmp_path / "r" / "latent_convergence.md").read_text()
    for part in ("headline", "long", "lr", "ablations", "std", "repa-tune", "repa", "repa-off"):
        assert f"`python benchmarks/latent_convergence.py --part {part}`" in text
    assert text.count("Not run yet") == 8 and "No run has finished yet" in text


def test_repa_tuning_choice_and_pending_runs(lc, repa, plan, tmp_path):
    """The sweep's two stages from the metrics files alone: REPA's default before any tuning run, stage 2
    planned at stage 1's best λ (by mean ln FID, not the final FID), the runs needing the choice held back
    (pending) while the sweep is incomplete, and the choice once it is complete."""
    args = lc.parse_args(["--estimate", "--results", str(tmp_path), "--part", "repa-tune,repa,repa-off"])

    def write(name, variant, fids, status="ok"):
        evals = [{"step": 300 * (i + 1), "fid": f} for i, f in enumerate(fids)]
        m = {"name": name, "variant": variant, "status": status, "evals": evals, "settings": {"steps": 1200}}
        (tmp_path / "repa-tune").mkdir(exist_ok=True)
        (tmp_path / "repa-tune" / f"{name}.json").write_text(json.dumps(m))

    v = "fasterdit+repa"
    assert repa.tune_choice(args, v)["state"] == "default"
    jobs = plan.plan(args, "repa")
    assert all(not j.extra.get("pending") and j.overrides["align.weight"] == 0.5 for j in jobs)
    write(f"{v}-w0.25-d2-s0", v, [40.0, 20.0, 10.0, 5.0])
    assert repa.tune_choice(args, v)["state"] == "stage 1"
    assert all(j.extra.get("pending") for j in plan.plan(args, "repa") if j.variant == v)
    assert all(j.extra.get("pending") for j in plan.plan(args, "repa-off"))
    write(f"{v}-w0.5-d2-s0", v, [20.0, 10.0, 8.0, 6.0])  # worse at the end, ahead over the stretch: chosen
    write(f"{v}-w1-d2-s0", v, [], status="diverged")
    ch = repa.tune_choice(args, v)
    assert ch["state"] == "stage 2" and ch["weight"] == 0.5
    names = [j.name for j in plan.plan(args, "repa-tune") if j.variant == v]
    assert names[-2:] == [f"{v}-w0.5-d1-s0", f"{v}-w0.5-d3-s0"]
    write(f"{v}-w0.5-d1-s0", v, [30.0, 15.0, 9.0, 7.0])
    write(f"{v}-w0.5-d3-s0", v, [19.0, 10.0, 8.0, 6.0])
    ch = repa.tune_choice(args, v)
    assert (ch["state"], ch["weight"], ch["depth"]) == ("tuned", 0.5, 3)
    (off,) = [j for j in plan.plan(args, "repa-off") if j.seed == 0]
    assert off.overrides["align.depth"] == 3 and off.overrides["stages"] == [
        {"at": 1050, "set": {"align.weight": 0}}
    ]
    assert repa.tune_choice(args, "sit+repa")["state"] == "default"


def test_readings(plan, readings):
    # the converged-NFE checkpoints fall on kept checkpoint steps: 1/7, 3/7, 1 of 2100 with one every 300
    assert plan.SIZES["headline"].converged_steps("fasterdit") == [300, 900, 2100]
    assert plan.SIZES["headline"].converged_steps("dit") == [2100]
    assert plan.SIZES["ablations"].converged_steps("fasterdit-uniform") == [2100]
    assert readings.value_at([300, 600], [10.0, 4.0], 450) == pytest.approx(7.0)
    assert readings.value_at([300, 600], [10.0, 4.0], 2100 / 7) == pytest.approx(10.0)
    assert readings.value_at([300, 600], [10.0, 4.0], 100) is None
    assert readings.slope([0, 1000, 2000, 3000], [9.0, 5.0, 4.0, 3.0]) == pytest.approx(-1.0)

    def run(variant, seed, fids, steps=(300, 600, 900)):
        evals = [{"step": s, "fid": f} for s, f in zip(steps, fids)]
        return readings.as_run({"variant": variant, "seed": seed, "evals": evals})

    # dit's final FIDs spread 0.4 over seeds; its last two intervals drop 0.35 on average: flat
    flat = readings.flatness({"dit": [run("dit", 0, [2.3, 2.1, 2.0]), run("dit", 1, [2.8, 2.6, 2.4])]})
    assert flat["flat"] and flat["final_spread"] == pytest.approx(0.4)
    steep = readings.flatness({"dit": [run("dit", 0, [9.0, 5.0, 2.0]), run("dit", 1, [9.0, 5.0, 2.2])]})
    assert not steep["flat"]
    # the speed-up at each of dit's evaluations: fasterdit's crossing by linear interpolation
    prof = readings.speedup_profile(
        {"dit": [run("dit", 0, [10.0, 6.0, 4.0])], "fasterdit": [run("fasterdit", 0, [8.0, 4.0, 2.0])]}, "dit"
    )
    assert [d["fast_steps"] for d in prof] == pytest.approx([300, 450, 600])
    assert [d["speedup"] for d in prof] == pytest.approx([1.0, 600 / 450, 1.5])
    assert [d["lower_bound"] for d in prof] == [True, False, False]
    # one seed: flat when the last 3 evaluations fall by < FLAT_REL_SLOPE of the final FID per 1k steps
    slow = [10.0, 10.0 - 0.3 * plan.FLAT_REL_SLOPE * 10.0, 10.0 - 0.6 * plan.FLAT_REL_SLOPE * 10.0]
    one = readings.flatness({"dit": [run("dit", 0, slow, steps=(1000, 2000, 3000))]})
    assert one["rule"] == "relative slope" and one["flat"]
    fast = readings.flatness({"dit": [run("dit", 0, [10.0, 9.0, 8.0], steps=(1000, 2000, 3000))]})
    assert fast["rule"] == "relative slope" and not fast["flat"]
    # ablation verdicts: an effect only outside fasterdit's seed range
    head = {
        "dit": [run("dit", 0, [6.0, 5.0, 4.0])],
        "fasterdit": [run("fasterdit", 0, [4.0, 3.0, 2.0]), run("fasterdit", 1, [4.5, 3.5, 2.5])],
    }
    abl = {
        "fasterdit-uniform": [run("fasterdit-uniform", 0, [8.0, 6.0, 5.0])],  # never reaches dit's 4.0
        "fasterdit-no-dir": [run("fasterdit-no-dir", 0, [4.2, 3.2, 2.2])],
    }
    ar = readings.ablation_reading(head, abl, {}, {})
    assert ar["ablations"]["fasterdit-uniform"]["verdict"]["final_fid"].startswith("worse")
    assert ar["ablations"]["fasterdit-uniform"]["verdict"]["steps_to_dit"].startswith("worse")
    assert ar["ablations"]["fasterdit-no-dir"]["verdict"]["final_fid"].startswith("within")
    # std: the recommendation rounds (in log k) to a swept scale, which must be one of the best two
    ms = [
        {"status": "ok", "settings": {"law": "lognorm", "k": k}, "evals": [{"fid": f, "class_accuracy": 1.0}]}
        for k, f in ((0.5, 3.0), (1.0, 2.0), (2.0, 1.0), (4.0, 1.5))
    ]
    recs = {"lognorm": {m: {"k": 1.1, "median_before_nats": 0.0} for m in ("median", "mass")}}
    sr = readings.std_reading(ms, recs)["lognorm"]
    assert sr["best_two"] == [2.0, 4.0] and not sr["recommend"]["median"]["within_best_two"]
    assert 2.0 < sr["best_refined"] < 4.0  # the parabola's vertex in log2 k lies between ×2 and ×4
    assert sr["recommend"]["median"]["median_for_best_nats"] == pytest.approx(
        2 * math.log(sr["best_refined"])
    )
