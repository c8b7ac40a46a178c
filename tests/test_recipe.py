"""Recipe: presets, YAML round trips, errors that name the field; model time; data scaling."""


import numpy as np
import pytest
import torch

from fasterdit.data.stats import DataStats
from fasterdit.diffusion.recipe import PRESETS, Recipe, get_preset, load_recipe
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.errors import ConfigError, DataError


def _mnist_like(n=64, c=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.rand(n, c, 8, 8, generator=g) > 0.7).float() * 1.8
        - 0.9
        + 0.05 * torch.randn(n, c, 8, 8, generator=g)
    )


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_yaml(name, tmp_path):
    r = get_preset(name).resolve(_mnist_like())
    again = Recipe.from_yaml(r.to_yaml())
    assert again.to_dict() == r.to_dict()
    path = tmp_path / f"{name}.yaml"
    r.to_yaml(path)
    assert Recipe.from_yaml(path).to_dict() == r.to_dict()
    assert load_recipe(path).to_dict() == r.to_dict()
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()
    # a preset's YAML file (what a user edits into their own recipe) loads back to the preset
    get_preset(name).to_yaml(path)
    assert load_recipe(path).to_dict() == get_preset(name).to_dict()


def test_preset_contents():
    dit = get_preset("dit")
    assert (dit.schedule, dit.target, dit.timesteps, dit.time_input, dit.learn_sigma) == (
        "ddpm-linear",
        "eps",
        "uniform-discrete",
        "index",
        True,
    )
    assert (dit.sampler.name, dit.sampler.steps) == ("ddpm", 250)
    sit = get_preset("sit")
    assert (sit.schedule, sit.target, sit.timesteps) == ("flow-linear", "velocity", "uniform")
    f = get_preset("fasterdit")
    assert (f.schedule, f.target, f.timesteps, f.timestep_params) == (
        "flow-linear",
        "velocity",
        "lognorm",
        {"m": 0.0, "s": 1.0},
    )
    assert f.loss.direction_weight == 1.0 and f.loss.direction_mode == "auto"
    assert f.scaling.mode == "channel" and f.scaling.target_std == 1.0


def test_model_time():
    t = torch.tensor([0.001, 0.042, 0.5, 1.0])
    assert torch.equal(get_preset("dit").model_time(t), torch.tensor([0.0, 41.0, 499.0, 999.0]))
    assert torch.allclose(get_preset("sit").model_time(t), t * 1000)
    r = Recipe(time_input="reversed")
    assert torch.allclose(r.model_time(t), 1 - t)
    assert get_preset("sit").model_time(t).dtype == torch.float32


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        ({"target": "noise"}, "target", "velocity"),
        ({"schedule": "linear"}, "schedule", "flow-linear"),
        ({"timesteps": "logit"}, "timesteps", "lognorm"),
        ({"time_input": "raw"}, "time_input", "scaled"),
        ({"time_input": "index"}, "time_input", "discrete"),
        ({"learn_sigma": True}, "learn_sigma", "ddpm"),
        ({"time_shift": 0}, "time_shift", "> 0"),
        ({"timesteps": "lognorm", "timestep_params": {"s": -1}}, "timestep_params.s", "> 0"),
        ({"timesteps": "uniform-discrete", "time_shift": 2.0}, "time_shift", "cannot be shifted"),
        (
            {"schedule": "ddpm-linear", "schedule_params": {"beta_end": 2}},
            "schedule_params.beta_end",
            "beta_start",
        ),
        ({"schedule_params": {"rho": 7}}, "schedule", "rho"),
        ({"loss": {"direction_mode": "pixel"}}, "loss.direction_mode", "token"),
        ({"loss": {"weighting": "snr"}}, "loss.weighting", "min-snr"),
        ({"loss": {"direction_weight": -1}}, "loss.direction_weight", ">= 0"),
        ({"loss": {"typo": 1}}, "loss.typo", "direction_weight"),
        ({"sampler": {"name": "rk4"}}, "sampler.name", "heun"),
        ({"sampler": {"name": "ddpm"}}, "sampler.name", "discrete"),
        ({"sampler": {"guidance_interval": [0.5, 0.2]}}, "sampler.guidance_interval", "t_lo"),
        ({"scaling": {"mode": "minmax"}}, "scaling.mode", "channel"),
        ({"bogus": 1}, "bogus", "allowed keys"),
    ],
)
def test_invalid_values_name_the_field(change, field, hint):
    d = get_preset("sit").to_dict()
    for key, value in change.items():
        if (
            isinstance(value, dict)
            and isinstance(d.get(key), dict)
            and key not in ("schedule_params", "timestep_params")
        ):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(d)
    assert e.value.field == field, str(e.value)
    assert hint in str(e.value)


def test_uniform_discrete_steps_must_match_the_chain():
    d = get_preset("dit").to_dict()
    d["timestep_params"] = {"num_steps": 500}
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(d)
    assert e.value.field == "timestep_params.num_steps"


def test_updated_and_loading_errors(tmp_path):
    r = get_preset("fasterdit").updated({"loss.direction_weight": 0.5, "timestep_params.m": -0.5})
    assert r.loss.direction_weight == 0.5 and r.timestep_params["m"] == -0.5
    with pytest.raises(ConfigError):
        get_preset("sit").updated({"target.x": 1})
    with pytest.raises(ConfigError) as e:
        get_preset("nope")
    assert "fasterdit" in str(e.value)
    with pytest.raises(DataError):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^recipe: .*bad\.yaml is not valid YAML"):  # the one YAML reader
        Recipe.from_yaml(bad)


def test_load_recipe_names_every_error_under_recipe(tmp_path):
    """One loader for the trainer and the SNR analyser: a preset or a file, then dotted overrides, with
    every error naming its field under ``recipe`` (as the run config's ``recipe_overrides`` do)."""
    path = tmp_path / "mine.yaml"
    get_preset("sit").to_yaml(path)
    r = load_recipe(f" {path} ", {"loss.direction_weight": "0.5", "time_shift": 2})
    assert (r.loss.direction_weight, r.time_shift) == (0.5, 2.0)  # coerced as a run config's values
    for spec, overrides, field, words in [
        ("fastdit", None, "recipe", "unknown preset 'fastdit'"),
        (tmp_path / "missing.yaml", None, "recipe", "not found"),
        ("sit", {"loss.direction_weight": -1}, "recipe.loss.direction_weight", ">= 0"),
        ("sit", {"loss.no_such": 1}, "recipe.loss.no_such", "no field"),
        ({"loss": {"weigting": "none"}}, None, "recipe.loss.weigting", "did you mean 'weighting'"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_recipe(spec, overrides)
        assert e.value.field == field and words in str(e.value)


def test_built_objects_follow_field_changes():
    r = get_preset("sit")
    assert r.schedule_obj.name == "flow-linear"
    r.schedule = "flow-cosine"
    assert r.schedule_obj.name == "flow-cosine"
    r.timesteps, r.timestep_params = "lognorm", {"m": 0.5, "s": 1.0}
    assert r.timestep_sampler_obj.params == {"m": 0.5, "s": 1.0}


# --- data scaling -----------------------------------------------------------------------------------
def test_channel_standardisation_and_inverse():
    x = (
        _mnist_like(256, c=3) * torch.tensor([1.0, 2.0, 0.5])[None, :, None, None]
        + torch.tensor([0.3, -1.0, 0.0])[None, :, None, None]
    )
    s = DataScaling(mode="channel", target_std=0.8).resolve(x)
    y = s.forward(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.full((3,), 0.8), atol=1e-5)
    assert torch.allclose(s.inverse(y), x, atol=1e-5)
    assert s.effective_std() == pytest.approx(0.8)


def test_std_modulation_scalar_and_none():
    x = _mnist_like(256)
    s = DataScaling(mode="std", target_std=0.5).resolve(x)
    y = s.forward(x)
    assert float(y.std()) == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(
        y / x, torch.full_like(x, 0.5 / float(x.double().std())), rtol=1e-5
    )  # a pure scalar
    assert torch.allclose(s.inverse(y), x, atol=1e-6)
    assert s.effective_std() == pytest.approx(0.5)
    assert s.effective_std(2 * float(x.double().std())) == pytest.approx(1.0)
    sc = DataScaling(mode="scalar", multiplier=0.18215)
    assert torch.allclose(sc.forward(x), 0.18215 * x) and sc.effective_std(2.0) == pytest.approx(0.3643)
    assert torch.equal(DataScaling().forward(x), x)


@pytest.mark.parametrize("mode", ["none", "std", "channel"])
def test_effective_std_is_the_std_of_the_scaled_data(mode):
    """DataScaling.effective_stds (what the SNR analyser and ``fasterdit snr`` report) against the std of
    the scaled data computed here by hand in float64 (numpy, population std as DataStats): pooled and
    per channel. The scaling is resolved on the same data, as the trainer resolves it."""
    g = torch.Generator().manual_seed(3)
    spread, shift = torch.tensor([0.5, 1.0, 2.5]), torch.tensor([0.3, -1.0, 0.0])
    x = (
        torch.randn(40, 3, 6, 6, generator=g, dtype=torch.float64) * spread[None, :, None, None]
        + shift[None, :, None, None]
    )
    a = x.numpy()
    per_channel = np.moveaxis(a, 1, -1).reshape(-1, 3)
    if mode == "none":
        y = per_channel
    elif mode == "std":  # x · target / std(x), std the sample std over all values (as resolve measures it)
        y = per_channel * 0.8 / a.std(ddof=1)
    else:  # (x − μ_c) / s_c · target per channel
        y = (per_channel - per_channel.mean(0)) / per_channel.std(0, ddof=1) * 0.8
    scaling = DataScaling(mode=mode, target_std=0.8).resolve(x)
    stats = DataStats.of(per_channel.mean(0).tolist(), per_channel.std(0).tolist())

    pooled, chans = scaling.effective_stds(stats)
    assert pooled == pytest.approx(float(y.std()), rel=1e-12)
    assert chans == pytest.approx(y.std(0).tolist(), rel=1e-12)
    assert scaling.effective_std(stats) == pooled
    if mode != "channel":  # from the pooled std alone (channel mode then knows only target_std)
        assert scaling.effective_stds(stats.pooled_std) == (pytest.approx(float(y.std()), rel=1e-12), None)
    if mode != "none":  # before resolving: as if resolved on this data, whatever its std
        assert DataScaling(mode=mode, target_std=0.8).effective_std(stats.pooled_std) == pytest.approx(0.8)


def test_scaling_needs_resolving_and_round_trips():
    s = DataScaling(mode="channel")
    with pytest.raises(ConfigError) as e:
        s.forward(torch.zeros(2, 1, 2, 2))
    assert e.value.field == "scaling.std"
    r = DataScaling(mode="channel").resolve(mean=[0.1, 0.2], std=[1.0, 2.0])
    assert DataScaling.from_dict(r.to_dict()).to_dict() == r.to_dict()
    with pytest.raises(ConfigError) as e:
        r.forward(torch.zeros(2, 3, 2, 2))
    assert e.value.field == "scaling.std"
    with pytest.raises(ConfigError) as e:
        DataScaling(mode="std", target_std=-1).validate()
    assert e.value.field == "scaling.target_std"
