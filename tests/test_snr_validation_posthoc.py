"""benchmarks/snr_validation_posthoc.py: the data moments it reads the sweeps by, against closed forms.

A latent shard built here has a known mean image (per-element offsets shared by every item), a known spread
around it and a known posterior variance, so the pooled std (what ``fasterdit snr`` measures), the
within-element std and the mean image's share of the variance have exact values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def posthoc():
    sys.path.insert(0, str(BENCH))
    try:
        import snr_validation_posthoc

        yield snr_validation_posthoc
    finally:
        sys.path.remove(str(BENCH))


def test_moments_of_a_latent_shard_match_the_closed_form(posthoc, tmp_path):
    # 2 elements: element 0 is 3 ± 1, element 1 is -3 ± 2 (signs alternating over 6 items);
    # posterior var 1 (logvar 0: exact in float32)
    sign = np.array([1.0, -1.0] * 3, dtype=np.float32)
    mean = np.stack([3.0 + sign, -3.0 + 2.0 * sign], axis=1).reshape(6, 2, 1, 1)
    logvar = np.zeros_like(mean)
    folder = tmp_path / "mnist-latent"
    folder.mkdir()
    save_file({"mean": mean, "logvar": logvar}, str(folder / "shard.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({"shards": [{"file": "shard.safetensors"}]}))
    m = posthoc.moments("latents-raw", tmp_path)
    within_var = (1.0 + 4.0) / 2 + 1.0  # the spread around each element's mean, plus the posterior's
    pooled_var = (10.0 + 13.0) / 2 + 1.0 - 0.0**2  # E[z^2] - E[z]^2; the offsets cancel in E[z]
    assert m["within"] == pytest.approx(math.sqrt(within_var), rel=1e-12)
    assert m["pooled"] == pytest.approx(math.sqrt(pooled_var), rel=1e-12)
    assert m["mean_image_share"] == pytest.approx(1.0 - within_var / pooled_var, rel=1e-12)
    assert m["elements"] == 2


def test_leave_one_out_predicts_each_data_set_by_the_mean_of_the_others(posthoc):
    rows = [
        {"data": d, "law": "lognorm", "status": "measured", "median_pooled": p, "median_within": w}
        for d, p, w in (("a", 1.0, -1.0), ("b", 0.0, -1.5), ("c", -2.0, -1.25))
    ]
    cons = {c["std"]: c for c in posthoc.consistency(rows) if c["law"] == "lognorm"}
    assert cons["pooled"]["spread"] == pytest.approx(3.0)
    assert cons["pooled"]["loo_errors"] == pytest.approx({"a": 2.0, "b": 0.5, "c": -2.5})
    assert cons["within"]["loo_errors"] == pytest.approx({"a": 0.375, "b": -0.375, "c": 0.0})
    assert cons["within"]["loo_rms"] == pytest.approx(math.sqrt((2 * 0.375**2) / 3))
