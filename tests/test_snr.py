"""The SNR-PDF analyser against closed forms (scipy), Monte Carlo, numpy statistics and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import integrate
from scipy import stats as sps

from fasterdit.cli import main
from fasterdit.data.embedded import load_embedded
from fasterdit.data.measure import measure_data_std
from fasterdit.data.stats import RunningStats
from fasterdit.diffusion.recipe import Recipe, get_preset
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.diffusion.schedules import Schedule, get_schedule
from fasterdit.diffusion.snr import (
    NATS_TO_DB,
    LogSNRDistribution,
    default_window,
    recommend_scale,
    snr_distribution,
    snr_distributions,
)
from fasterdit.diffusion.timesteps import get_timestep_sampler
from fasterdit.errors import ConfigError, DataError
from fasterdit.viz.snr import save_snr_plot

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def _flow(sampler: str, **kw) -> tuple:
    return get_schedule("flow-linear"), get_timestep_sampler(sampler, **kw)


# ------------------------------------------------------------------------------ exactness vs MC


@pytest.mark.parametrize("preset", ["dit", "sit", "fasterdit"])
def test_pdf_integrates_to_one_and_matches_1e6_draws(preset):
    d = snr_distribution(preset, 0.7)
    lo, hi = d.quantile([1e-12, 1 - 1e-12])
    edge = d.schedule.lambda_min + d.shift  # DDPM's λ(1) is finite: the density jumps there
    inner = [edge] if math.isfinite(edge) and lo < edge < hi else None
    total, err = integrate.quad(lambda v: float(d.pdf([v])[0]), lo - 1.0, hi + 1.0, points=inner, limit=400)
    assert total == pytest.approx(1.0, abs=1e-7), err
    assert d.summary().mass_on_grid == pytest.approx(1.0, abs=1e-7)

    x = d.sample(1_000_000, torch.Generator().manual_seed(1234))
    assert len(x) == 1_000_000
    edges = np.linspace(*np.quantile(x, [0.002, 0.998]), 81)
    counts, _ = np.histogram(x, edges)
    fine = np.linspace(edges[0], edges[-1], 80 * 200 + 1)  # exact pdf integrated over each bin
    p = d.pdf(fine)
    cell = 0.5 * (p[1:] + p[:-1]) * np.diff(fine)
    prob = cell.reshape(80, 200).sum(1)
    z = (counts - len(x) * prob) / np.sqrt(len(x) * prob * (1 - prob))
    assert np.max(np.abs(z)) < 5.0, np.max(np.abs(z))
    mc = d.monte_carlo_check(100_000, seed=3)
    assert mc["ks_distance"] < mc["ks_critical_1pct"] and mc["hist_max_abs_z"] < 5


# ---------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(("m", "s", "std"), [(0.0, 1.0, 1.0), (-0.5, 0.7, 0.5), (0.3, 1.4, 2.0)])
def test_rectified_flow_lognorm_is_gaussian(m, s, std):
    """t = sigmoid(n), n ~ N(m, s²): λ = 2 ln((1−t)/t) + 2 ln std = −2n + 2 ln std,
    so λ ~ N(−2m + 2 ln std, (2s)²)."""
    d = snr_distribution(_flow("lognorm", m=m, s=s), std)
    ref = sps.norm(loc=-2 * m + 2 * math.log(std), scale=2 * s)
    lam = np.linspace(ref.ppf(1e-6), ref.ppf(1 - 1e-6), 501)
    np.testing.assert_allclose(d.pdf(lam), ref.pdf(lam), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(d.cdf(lam), ref.cdf(lam), rtol=1e-9, atol=1e-12)
    sm = d.summary(window=(-1.0, 2.0))
    assert sm.mean == pytest.approx(ref.mean(), abs=1e-6)
    assert sm.std == pytest.approx(ref.std(), abs=1e-6)
    assert sm.mode == pytest.approx(ref.mean(), abs=1e-5)
    for q in LEVELS:
        assert sm.quantiles[q] == pytest.approx(ref.ppf(q), abs=1e-8)
    assert sm.mass_in_window == pytest.approx(ref.cdf(2.0) - ref.cdf(-1.0), abs=1e-12)


@pytest.mark.parametrize("std", [0.25, 1.0, 3.0])
def test_rectified_flow_uniform_is_logistic(std):
    d = snr_distribution(_flow("uniform"), std)
    ref = sps.logistic(loc=2 * math.log(std), scale=2.0)
    lam = np.linspace(ref.ppf(1e-6), ref.ppf(1 - 1e-6), 501)
    np.testing.assert_allclose(d.pdf(lam), ref.pdf(lam), rtol=1e-9, atol=1e-14)
    sm = d.summary()
    assert sm.mean == pytest.approx(ref.mean(), abs=1e-6)
    assert sm.std == pytest.approx(ref.std(), abs=1e-5)  # 2π/√3
    for q in LEVELS:
        assert sm.quantiles[q] == pytest.approx(ref.ppf(q), abs=1e-8)


def test_edm_lognormal_on_edm_is_truncated_gaussian():
    """EDM: λ = −2 ln σ_e with ln σ_e ~ N(P_mean, P_std²) truncated to the schedule's σ range."""
    sched = get_schedule("edm")
    d = snr_distribution((sched, get_timestep_sampler("edm-lognormal", schedule=sched)), 1.0)
    a, b = sched.lambda_min, sched.lambda_max
    ref = sps.truncnorm((a - 2.4) / 2.4, (b - 2.4) / 2.4, loc=2.4, scale=2.4)
    lam = np.linspace(a + 0.01, b - 0.01, 301)
    np.testing.assert_allclose(d.pdf(lam), ref.pdf(lam), rtol=1e-7)
    assert d.summary().median == pytest.approx(ref.median(), abs=1e-7)


def test_recipe_scaling_is_applied():
    """The PDF is that of the data the model sees: a scalar multiplier m shifts λ by 2 ln m; per-channel
    standardisation to target_std makes it independent of the raw std."""
    r = Recipe(name="scaled-sit", scaling=DataScaling(mode="scalar", multiplier=0.25)).validate()
    assert snr_distribution(r, 2.0).effective_std == pytest.approx(0.5)
    med = snr_distribution(r, 2.0).summary().median
    assert med == pytest.approx(2 * math.log(0.5), abs=1e-8)  # logistic median = 2 ln(m·std)
    fd = get_preset("fasterdit")
    assert fd.scaling.mode == "channel"
    for s in (0.3, 1.0, 5.0):
        assert snr_distribution(fd, s).effective_std == pytest.approx(fd.scaling.target_std)


def test_autograd_fallback_for_schedules_without_derivative():
    class NoDerivative(Schedule):  # a third-party schedule: α, σ and the inverse, no α', σ'
        def _alpha(self, t):
            return torch.sin((1.0 - t) * (math.pi / 2))  # cos(πt/2), exactly 0 at t = 1

        def _sigma(self, t):
            return torch.sin(math.pi / 2 * t)

        def _t_from_log_snr(self, lam):
            return get_schedule("flow-cosine")._t_from_log_snr(lam)

    ts = get_timestep_sampler("uniform")
    lam = np.linspace(-8, 8, 41)
    a = LogSNRDistribution(NoDerivative(), ts).pdf(lam)
    b = LogSNRDistribution(get_schedule("flow-cosine"), ts).pdf(lam)
    # closed form: t = (2/π)·atan(e^{−λ/2}), |dt/dλ| = (1/2π)·sech(λ/2)
    np.testing.assert_allclose(b, 1.0 / (2 * math.pi * np.cosh(lam / 2)), rtol=1e-10)
    np.testing.assert_allclose(a, b, rtol=1e-8)


# --------------------------------------------------------------------------- scale and recommend


@pytest.mark.parametrize("preset", ["dit", "sit"])
def test_scaling_data_by_k_shifts_every_quantile_by_2lnk(preset):
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.6 + 0.1
    k = 2.7
    s1 = RunningStats().update(x).pooled_std
    s2 = RunningStats().update(k * x).pooled_std
    q1 = np.array(list(snr_distribution(preset, s1).summary().quantiles.values()))
    q2 = np.array(list(snr_distribution(preset, s2).summary().quantiles.values()))
    np.testing.assert_allclose(q2 - q1, 2 * math.log(k), atol=1e-8)
    # the same through Monte Carlo with the same seed: the draws themselves shift
    g = torch.Generator()
    a = snr_distribution(preset, s1).sample(10_000, g.manual_seed(5))
    b = snr_distribution(preset, s2).sample(10_000, g.manual_seed(5))
    np.testing.assert_allclose(np.quantile(b, LEVELS) - np.quantile(a, LEVELS), 2 * math.log(k), atol=1e-8)


def test_recommend_scale_moves_the_pdf_where_it_says():
    window = (-1.0, 3.0)
    # median to the window centre; logistic closed form: k = exp((c - 2 ln s)/2)
    rec = recommend_scale(_flow("uniform"), 0.4, window=window)
    assert rec.k == pytest.approx(math.exp((1.0 - 2 * math.log(0.4)) / 2), rel=1e-9)
    after = snr_distribution(_flow("uniform"), 0.4 * rec.k).summary(window)
    assert after.median == pytest.approx(1.0, abs=1e-8)
    assert rec.mass_in_window_after == pytest.approx(after.mass_in_window, abs=1e-12)

    # maximum mass for a symmetric unimodal law is the centred one
    rec = recommend_scale(_flow("uniform"), 0.4, window=window, method="mass")
    assert rec.k == pytest.approx(math.exp((1.0 - 2 * math.log(0.4)) / 2), rel=1e-7)

    # maximum mass for a skewed law (DDPM): no nearby scale does better, and the number is real
    rec = recommend_scale("dit", 0.5, window=window, method="mass")
    best = snr_distribution("dit", 0.5 * rec.k).summary(window).mass_in_window
    assert best == pytest.approx(rec.mass_in_window_after, abs=1e-9)
    assert best > rec.mass_in_window_before
    for f in (0.97, 1.03):
        assert snr_distribution("dit", 0.5 * rec.k * f).summary(window).mass_in_window < best

    # match a reference recipe's median: k = exp((λ_ref_med − λ_med)/2)
    rec = recommend_scale("dit", 0.5, reference="fasterdit")
    ref_med = sps.norm(0.0, 2.0).median()  # fasterdit preset: standardised to 1 -> N(0, 2²)
    assert snr_distribution("dit", 0.5 * rec.k).summary().median == pytest.approx(ref_med, abs=1e-7)
    assert rec.median_after == pytest.approx(ref_med, abs=1e-7)


def test_default_window_is_the_central_80_percent_of_fasterdit():
    lo, hi = default_window()
    target = get_preset("fasterdit").scaling.target_std
    ref = sps.norm(2 * math.log(target), 2.0)  # lognorm(0, 1) on rectified flow
    assert lo == pytest.approx(ref.ppf(0.1), abs=1e-8)
    assert hi == pytest.approx(ref.ppf(0.9), abs=1e-8)


def test_per_channel_curves():
    x = (
        torch.randn(20, 3, 4, 4, dtype=torch.float64)
        * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1).double()
    )
    st = RunningStats().update(x)
    curves = snr_distributions("sit", st, per_channel=True)
    assert [c.channel for c in curves] == [0, 1, 2]
    for c, s in zip(curves, st.std.tolist()):
        assert c.summary().median == pytest.approx(2 * math.log(s), abs=1e-8)
    pooled = snr_distributions("sit", st)
    assert len(pooled) == 1 and pooled[0].effective_std == pytest.approx(float(x.std(unbiased=False)))
    with pytest.raises(ConfigError, match="data_std"):
        snr_distribution("sit", -1.0)


# ------------------------------------------------------------------------------ measuring the std


def _ref(x: np.ndarray, axis: int) -> tuple[np.ndarray, float]:
    per = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    return per.std(0), float(x.std())


def test_measure_embedded_npy_npz(tmp_path):
    st = measure_data_std("digits")
    x, _ = load_embedded("digits", "train")
    assert st.pooled_std == pytest.approx(float(x.double().std(unbiased=False)), rel=1e-10)

    rng = np.random.default_rng(0)
    nchw = rng.normal(0.3, 1.7, size=(300, 4, 6, 6)).astype(np.float32)
    np.save(tmp_path / "lat.npy", nchw)
    st = measure_data_std(tmp_path / "lat.npy", chunk=7)
    std, pooled = _ref(nchw.astype(np.float64), 1)
    np.testing.assert_allclose(st.std.numpy(), std, rtol=1e-9)
    assert st.pooled_std == pytest.approx(pooled, rel=1e-9)

    imgs = rng.integers(0, 256, size=(50, 9, 9, 3), dtype=np.uint8)  # 8-bit, channels-last
    np.savez(tmp_path / "imgs.npz", images=imgs)
    st = measure_data_std(tmp_path / "imgs.npz")
    std, _ = _ref(imgs / 127.5 - 1.0, 3)
    np.testing.assert_allclose(st.std.numpy(), std, rtol=1e-9)


def test_measure_image_folder_and_prepared_manifest(tmp_path):
    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 256, size=(5 + i, 7, 3), dtype=np.uint8) for i in range(4)]
    (tmp_path / "imgs").mkdir()
    for i, a in enumerate(arrs):
        Image.fromarray(a).save(tmp_path / "imgs" / f"{i}.png")
    Image.fromarray(arrs[0][..., 0]).convert("L").save(tmp_path / "imgs" / "gray.png")  # → RGB
    st = measure_data_std(tmp_path / "imgs")
    gray = np.repeat(arrs[0][..., :1], 3, axis=-1)
    allpix = np.concatenate([a.reshape(-1, 3) for a in [*arrs, gray]]) / 127.5 - 1.0
    np.testing.assert_allclose(st.std.numpy(), allpix.std(0), rtol=1e-9)
    assert st.count == allpix.shape[0]

    prep = tmp_path / "prep"
    prep.mkdir()
    manifest = {"channel_mean": [0.1, -0.2], "channel_std": [0.9, 1.1], "stats": {"count_per_channel": 1000}}
    (prep / "manifest.json").write_text(json.dumps(manifest))
    st = measure_data_std(prep)
    np.testing.assert_allclose(st.std.numpy(), [0.9, 1.1], rtol=1e-12)
    # pooled over both channels: mean of variances + variance of the channel means
    assert st.pooled_std == pytest.approx(math.sqrt((0.81 + 1.21) / 2 + 0.15**2), rel=1e-12)

    with pytest.raises(DataError, match="not found"):
        measure_data_std(tmp_path / "nope")


# ----------------------------------------------------------------------------------------- plot


def test_save_snr_plot(tmp_path):
    out = save_snr_plot(["dit", "sit", "fasterdit"], [0.5, 1.0], tmp_path / "a" / "snr.png", title="t")
    with Image.open(out) as img:
        assert img.size[0] > 800 and img.size[1] > 400
    curves = snr_distributions("sit", RunningStats().update(torch.randn(8, 3, 4, 4)), per_channel=True)
    out = save_snr_plot(curves, None, tmp_path / "c.png", window=False, units="dB")
    assert out.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ CLI


def test_cli_json_agrees_with_closed_forms(tmp_path, capsys):
    png = tmp_path / "snr.png"
    argv = ["snr", "--recipe", "fasterdit", "--compare", "sit", "--data-std", "0.5,1,2"]
    code = main([*argv, "--out", str(png), "--json", "--mc", "20000", "--recommend"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    with Image.open(png) as img:
        img.verify()
    assert res["units"] == "nats" and res["plot"] == str(png)
    target = get_preset("fasterdit").scaling.target_std
    curves = {(c["recipe"], c["data_std"]): c for c in res["curves"]}
    assert len(curves) == 6
    for s in (0.5, 1.0, 2.0):
        fd, sit = curves[("fasterdit", s)], curves[("sit", s)]
        for c, ref in ((fd, sps.norm(2 * math.log(target), 2.0)), (sit, sps.logistic(2 * math.log(s), 2.0))):
            st = c["stats"]
            assert st["mean_nats"] == pytest.approx(ref.mean(), abs=1e-6)
            assert st["std_nats"] == pytest.approx(ref.std(), abs=1e-5)
            assert st["median_nats"] == pytest.approx(ref.median(), abs=1e-8)
            for q in LEVELS:
                assert st["quantiles_nats"][f"{round(q * 100)}%"] == pytest.approx(ref.ppf(q), abs=1e-8)
            lo, hi = st["window_nats"]
            assert st["mass_in_window"] == pytest.approx(ref.cdf(hi) - ref.cdf(lo), abs=1e-10)
            assert c["monte_carlo"]["ks_distance"] < c["monte_carlo"]["ks_critical_1pct"]
        # sit's recommendation centres the logistic at the window centre
        lo, hi = res["window"]["lo_nats"], res["window"]["hi_nats"]
        assert sit["recommendation"]["k"] == pytest.approx(math.exp(((lo + hi) / 2 - 2 * math.log(s)) / 2))

    assert main([*argv[:3], "--data-std", "1", "--json", "--units", "dB", "--mc", "0"]) == 0
    db = json.loads(capsys.readouterr().out)
    st = db["curves"][0]["stats"]
    assert st["std_dB"] == pytest.approx(2.0 * NATS_TO_DB, abs=1e-5)


def test_cli_table_measures_data_and_reads_yaml(tmp_path, capsys):
    yaml_path = tmp_path / "my_recipe.yaml"
    get_preset("sit").updated(
        {"name": "custom", "scaling.mode": "scalar", "scaling.multiplier": 2.0}
    ).to_yaml(yaml_path)
    argv = ["snr", "--recipe", str(yaml_path), "--data", "digits", "--recommend", "--mc", "2000", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    (curve,) = res["curves"]
    x, _ = load_embedded("digits", "train")
    std = float(x.double().std(unbiased=False))
    assert res["data"]["pooled_std"] == pytest.approx(std, rel=1e-10)
    assert curve["recipe"] == "my_recipe" and curve["effective_std"] == pytest.approx(2.0 * std)
    assert curve["stats"]["median_nats"] == pytest.approx(2 * math.log(2.0 * std), abs=1e-8)  # logistic
    assert main(["snr", "--recipe", "sit", "--data", "digits", "--recommend", "--mc", "2000"]) == 0
    out = capsys.readouterr().out
    assert "pooled std" in out and "recommended scale k" in out and "nats" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--compare", "dit,nope"], "--compare"),
        (["--recipe", "nope"], "--recipe"),
        (["--data-std", "-1"], "--data-std"),
        (["--data-std", "abc"], "--data-std"),
        (["--window", "3,1"], "--window"),
        (["--data", "/nonexistent/x.npy"], "not found"),
    ],
)
def test_cli_errors_name_the_option(argv, needle, capsys):
    assert main(["snr", "--mc", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_cli_reference_recipe_matches_its_median(capsys):
    argv = ["snr", "--recipe", "dit", "--data-std", "0.5", "--recommend", "--mc", "0", "--json"]
    assert main([*argv, "--reference-recipe", "fasterdit"]) == 0
    (curve,) = json.loads(capsys.readouterr().out)["curves"]
    assert curve["recommendation"]["k"] == pytest.approx(recommend_scale("dit", 0.5, reference="fasterdit").k)
    assert main([*argv, "--reference-recipe", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--reference-recipe" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ the tail rule


@pytest.mark.parametrize(("lam_lo", "q", "std"), [(-0.8, 0.2, 1.65), (0.5, 0.1, 5.49), (0.0, 0.35, 0.62)])
def test_tail_rule_matches_the_closed_form_quantiles_of_both_flow_laws(lam_lo, q, std):
    """On the linear flow path λ_data = −2·ln(t/(1 − t)) + 2·ln std: lognorm(0, 1) timesteps make it
    N(2 ln std, 2²) (q-quantile 2 ln std + 2·Φ⁻¹(q)), uniform ones logistic with scale 2 (q-quantile
    2 ln std + 2·ln(q/(1 − q))). The rule puts that quantile at λ_lo, so 2·ln k = λ_lo − quantile."""
    closed = {
        "lognorm": 2 * math.log(std) + 2 * sps.norm.ppf(q),
        "uniform": 2 * math.log(std) + 2 * math.log(q / (1 - q)),
    }
    for law, quantile in closed.items():
        rec = recommend_scale(_flow(law), std, method="tail", tail=(lam_lo, q))
        assert 2 * math.log(rec.k) == pytest.approx(lam_lo - quantile, abs=1e-6)
        moved = snr_distribution(_flow(law), std * rec.k)
        assert float(moved.cdf(np.array([lam_lo]))[0]) == pytest.approx(q, abs=1e-7)


def test_tail_rule_at_the_median_is_the_median_rule_and_gives_wider_laws_larger_data():
    for law in ("lognorm", "uniform"):
        a = recommend_scale(_flow(law), 1.65, method="tail", tail=(0.0, 0.5)).k
        assert a == pytest.approx(recommend_scale(_flow(law), 1.65).k, rel=1e-6)
    lognorm = recommend_scale(_flow("lognorm"), 1.65, method="tail", tail=(-1.0, 0.2)).k
    uniform = recommend_scale(_flow("uniform"), 1.65, method="tail", tail=(-1.0, 0.2)).k
    assert uniform > lognorm  # the logistic law's tail is heavier: it needs the data larger


def test_tail_rule_through_the_cli_and_its_errors(capsys):
    assert main(["snr", "--recipe", "sit", "--data-std", "1.65", "--recommend", "--method", "tail",
                 "--tail=-0.8,0.2", "--mc", "0", "--json"]) == 0  # fmt: skip
    rec = json.loads(capsys.readouterr().out)["curves"][0]["recommendation"]
    direct = recommend_scale(get_preset("sit"), 1.65, method="tail", tail=(-0.8, 0.2))
    assert rec["k"] == pytest.approx(direct.k, rel=1e-12) and rec["method"] == "tail"
    for argv in (["--method", "tail"], ["--tail", "0,0.5"], ["--method", "tail", "--tail", "0,1.5"]):
        assert main(["snr", "--recipe", "sit", "--recommend", "--mc", "0", *argv]) != 0
        err = capsys.readouterr().err
        assert err.startswith("fasterdit snr: error: --tail:") and err.count("\n") == 1
    with pytest.raises(ConfigError, match="tail"):
        recommend_scale(get_preset("sit"), 1.0, method="tail")
