"""benchmarks/snr_validation_within.py: the held-out data set's stds against a closed form, its recipe, and
the protocol's verdict.

The latent shard built here has two channels of two elements: in channel 0 the elements sit at +1 and -1
(a spatial mean image that per-channel normalisation keeps), in channel 1 both at 5 (a channel offset that it
removes), so the within-element std after normalisation has an exact value.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fasterdit.data.stats import DataStats
from fasterdit.diffusion.recipe import get_preset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def within():
    sys.path.insert(0, str(BENCH))
    try:
        import snr_validation_within

        yield snr_validation_within
    finally:
        sys.path.remove(str(BENCH))


def test_channel_normalised_stds_match_the_closed_form(within, tmp_path):
    s = np.array([1.0, -1.0] * 2, dtype=np.float32)  # 4 items
    ch0 = np.stack([1.0 + s, -1.0 + s], axis=1)  # element means +1, -1; spread 1 around each
    ch1 = np.stack([5.0 + 2.0 * s, 5.0 - 2.0 * s], axis=1)  # element means 5, 5; spread 2 around each
    mean = np.stack([ch0, ch1], axis=1).reshape(4, 2, 2, 1)
    folder = tmp_path / "mnist-latent16"
    folder.mkdir()
    save_file({"mean": mean, "logvar": np.zeros_like(mean)}, str(folder / "shard.safetensors"))
    manifest = {"channels": 2, "scaling_factor": 0.5, "shards": [{"file": "shard.safetensors"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    m = within.channel_moments(folder)
    # channel 0: Var = E[x^2] + posterior 1 = 2 + 1 = 3, within = 1 + 1 = 2 -> 2/3 after normalisation;
    # channel 1: Var = 4 + 1 = 5, within = 4 + 1 = 5 (its mean image is the channel mean) -> 1
    assert m["pooled"] == pytest.approx(1.0, rel=1e-12)
    assert m["within"] == pytest.approx(math.sqrt((2.0 / 3.0 + 1.0) / 2.0), rel=1e-12)
    # what the trainer reads: the latents x scaling_factor 0.5: means (0, 5) x 0.5, variances (3, 5) x 0.25
    mean, std = within.channel_stats(folder)
    assert mean == pytest.approx([0.0, 2.5], abs=1e-12)
    assert std == pytest.approx([math.sqrt(0.75), math.sqrt(1.25)], rel=1e-12)


def test_the_recipe_normalises_each_channel_to_the_target_std(within):
    recipe = get_preset("sit").updated(within.overrides("lognorm", 0.5))
    assert recipe.scaling.mode == "channel"
    stats = DataStats.of([0.3, -2.0, 7.0], [0.2, 1.5, 4.0])
    pooled, per_channel = recipe.scaling.resolve(mean=stats.mean, std=stats.std).effective_stds(stats)
    assert pooled == pytest.approx(0.5, rel=1e-12)
    assert per_channel == pytest.approx([0.5] * 3, rel=1e-12)


def _row(fids: dict[int, float]) -> dict:
    done = list(fids.values())
    return {"fids": fids, "mean": sum(done) / len(done), "spread": max(done) - min(done), "seeds_planned": 3}


@pytest.mark.parametrize(
    ("rule_fids", "shipped_fids", "status"),
    [
        ({0: 10.0, 1: 11.0, 2: 12.0}, {0: 15.0, 1: 16.0, 2: 14.0}, "better"),  # gain 4 > noise 2
        ({0: 15.0, 1: 16.0, 2: 14.0}, {0: 10.0, 1: 11.0, 2: 12.0}, "worse"),
        ({0: 10.0, 1: 14.0, 2: 12.0}, {0: 13.0, 1: 15.0, 2: 14.0}, "no difference beyond the seed noise"),
    ],
)
def test_verdict_compares_the_mean_gain_with_the_larger_seed_spread(within, rule_fids, shipped_fids, status):
    assert within.verdict(_row(rule_fids), _row(shipped_fids))["status"] == status


def test_no_verdict_before_every_seed_has_run(within):
    partial = _row({0: 10.0, 1: 11.0})
    assert within.verdict(partial, _row({0: 15.0, 1: 16.0, 2: 14.0})) == {"status": "not finished"}


def test_quick_mode_trains_each_prediction_in_channel_mode_and_writes_the_report(within, capsys):
    pytest.importorskip("diffusers")
    assert within.main(["--quick"]) == 0  # its own temp work, results and docs dirs
    docs = Path(capsys.readouterr().out.split("wrote ")[-1].strip()).parent
    report = json.loads((docs / "snr_validation_within.json").read_text())
    assert set(report["laws"]) == set(within.LAWS)
    run_dir = docs.parent / "work" / "runs" / "within"
    for law, res in report["laws"].items():
        rows = {r["rule"]: r for r in res["rows"]}
        assert set(rows) == {rule for rule, _ in within.TRAINED[law]}
        assert all(list(r["fids"]) == ["0"] and math.isfinite(r["fids"]["0"]) for r in rows.values())
        assert res["verdict"] == {"status": "not finished"}  # quick trains seed 0 only
        for rule, r in rows.items():
            recipe = (run_dir / f"latents16-chan-{law}-t{r['t']:.4g}-s0" / "recipe.yaml").read_text()
            assert "mode: channel" in recipe and f"target_std: {r['t']}" in recipe, (law, rule)
            assert f"flow-{law}-chan" in recipe, (law, rule)
    recheck = json.loads((docs / "snr_validation_within_recheck.json").read_text())["rows"]
    assert len(recheck) == sum(len(within.TRAINED[law]) for law in within.LAWS)
    assert all(r["status"] == "checked" and r["fid_agree"] for r in recheck)
    assert all(r["channel_stats_agree"] and r["std_agree"] for r in recheck)
