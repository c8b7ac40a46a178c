"""The timestep shift as a recipe knob, against closed forms.

On the linear flow path (α = 1 − t, σ = t), λ(t) = 2·ln((1 − t)/t). SD3's shift t' = s·t/(1 + (s − 1)·t)
gives (1 − t')/t' = (1 − t)/(s·t), so λ(t') = λ(t) − 2·ln s for every t: the law of λ under a shift s is
the law under the data scaled by 1/s. These tests check that identity in float64 from the formulas (not
from the code's own λ), then that fasterdit's PDFs, quantiles and recommendation obey it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fasterdit.diffusion.recipe import Recipe, get_preset
from fasterdit.diffusion.snr import recommend_scale, snr_distribution
from fasterdit.diffusion.timesteps import shift_time


def _lam_flow(t: np.ndarray) -> np.ndarray:
    return 2.0 * np.log((1.0 - t) / t)  # closed form of the linear flow path's log-SNR


@pytest.mark.parametrize("s", [0.3, 1.7, 4.0])
def test_sd3_shift_translates_the_flow_log_snr_by_minus_two_ln_s(s):
    t = np.linspace(1e-4, 1 - 1e-4, 2001)
    shifted = shift_time(torch.tensor(t, dtype=torch.float64), s).numpy()
    np.testing.assert_allclose(_lam_flow(shifted) - _lam_flow(t), -2.0 * math.log(s), rtol=0, atol=1e-9)


def _sit(shift: float = 1.0) -> Recipe:
    return get_preset("sit").updated({"time_shift": shift})


@pytest.mark.parametrize(("s", "std"), [(3.0, 1.0), (0.5, 1.65), (2.0, 0.62)])
@pytest.mark.parametrize("law", ["uniform", "lognorm"])
def test_a_shift_is_the_same_pdf_as_scaling_the_data_by_one_over_s(s, std, law):
    shifted = snr_distribution(_sit(s).updated({"timesteps": law}), std)
    scaled = snr_distribution(_sit().updated({"timesteps": law}), std / s)
    lam = np.linspace(-12, 12, 97)
    np.testing.assert_allclose(shifted.pdf(lam), scaled.pdf(lam), rtol=1e-8, atol=1e-12)
    a, b = shifted.summary(), scaled.summary()
    assert a.median == pytest.approx(b.median, abs=1e-7)
    assert a.mean == pytest.approx(b.mean, abs=1e-6)


def test_recommendation_answers_as_a_scale_and_as_a_shift():
    std = 1.65  # mnist-ae latents without scaling_factor
    rec = recommend_scale(_sit(), std)
    assert rec.time_shift == pytest.approx(1.0 / rec.k, rel=1e-12)
    # following either answer puts the median at the same place (the window's centre)
    by_scale = snr_distribution(_sit(), std * rec.k).summary()
    by_shift = snr_distribution(_sit(rec.time_shift), std).summary()
    assert by_shift.median == pytest.approx(by_scale.median, abs=1e-7)
    # a recipe that already shifts by s0 needs s0 / k
    again = recommend_scale(_sit(2.0), std)
    assert again.time_shift == pytest.approx(2.0 / again.k, rel=1e-12)
    assert again.k == pytest.approx(2.0 * rec.k, rel=1e-9)  # the shift was worth a data scale of 1/2


def test_no_shift_answer_where_a_shift_is_not_a_translation_of_lambda():
    assert recommend_scale(get_preset("dit"), 1.65).time_shift is None  # DDPM-linear


def test_the_shift_is_saved_with_the_recipe():
    r = _sit(2.5)
    assert Recipe.from_dict(r.to_dict()).time_shift == 2.5
    assert Recipe.from_yaml(r.to_yaml()).time_shift == 2.5


def test_snr_shows_the_shift(capsys):
    from fasterdit.cli import main

    assert main(["snr", "--recipe", "sit", "--data-std", "1.65", "--recommend", "--mc", "0"]) == 0
    out = capsys.readouterr().out
    assert "recipe.time_shift=1.65" in out  # k = 1/1.65 at the median rule: shift 1.65
