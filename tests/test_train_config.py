"""Training configs: YAML + --set overrides with type coercion; every bad value fails before any work,
naming the field; the shipped configs load and the preset configs differ only in their recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fasterdit.cli import main
from fasterdit.errors import ConfigError, DataError
from fasterdit.run.config import RunConfig, config_from_dict, load_config
from fasterdit.train.build import check_config

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "fasterdit" / "configs"  # package data
SHIPPED = ["demo", "mnist", "mnist-latent", "imagenet256"]
#: the documented one-line variants of the shipped configs (mnist, imagenet256)
MNIST_RECIPE = {r: [f"recipe={r}"] for r in ("dit", "sit", "fasterdit")}
IMAGENET_B2 = ["model.name=DiT-B/2", "train.steps=400000"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_round_trip(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert load_config(name) == cfg  # bare names resolve to the shipped fasterdit/configs/


def test_preset_configs_differ_only_in_recipe():
    dicts = {r: load_config("mnist", sets).to_dict() for r, sets in MNIST_RECIPE.items()}
    for r, d in dicts.items():
        assert d.pop("recipe") == r
    assert dicts["dit"] == dicts["sit"] == dicts["fasterdit"]


def test_imagenet_configs_follow_the_paper():
    for sets, model, steps in ((IMAGENET_B2, "DiT-B/2", 400_000), ([], "DiT-XL/2", 1_000_000)):
        c = load_config("imagenet256", sets)
        assert c.train.steps == steps
        assert (c.model.name, c.train.batch_size, c.optim.lr, c.optim.weight_decay) == (model, 256, 1e-4, 0.0)
        assert (c.train.ema_decay, c.train.precision, c.data.resolution, c.data.channels) == (
            0.9999,
            "auto",
            32,
            4,
        )


def test_overrides_are_coerced_by_field_type():
    c = load_config(
        "demo",
        [
            "optim.lr=2e-4",
            "train.steps=1e3",
            "train.compile=yes",
            "optim.fused=null",
            "sample.classes=1,3,5",
            "train.threads=2",
            "recipe=sit",
            "recipe.loss.direction_weight=0.5",
        ],
    )
    assert c.optim.lr == 2e-4 and isinstance(c.optim.lr, float)
    assert c.train.steps == 1000 and isinstance(c.train.steps, int)
    assert c.train.compile is True and c.optim.fused is None and c.sample.classes == [1, 3, 5]
    assert c.recipe == "sit" and c.recipe_overrides == {"loss.direction_weight": 0.5}
    assert load_config(None) == RunConfig()


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (["optim.lr=-1e-3"], "optim.lr", "must be > 0"),
        (["optim.lr=fast"], "optim.lr", "expected a number"),
        (["train.steps=1.5"], "train.steps", "expected an integer"),
        (["train.batch_size=0"], "train.batch_size", "must be > 0"),
        (["train.batch_size=10", "train.grad_accum=4"], "train.batch_size", "not divisible"),
        (["train.precision=fp8"], "train.precision", "auto, fp32 or bf16"),
        (["train.ema_decay=1"], "train.ema_decay", "[0, 1)"),
        (["optim.lrr=1"], "optim.lrr", "did you mean 'lr'"),
        (["model.nmae=x"], "model.nmae", "did you mean 'name'"),
        (["train.steps"], "--set", "key=value"),
        (["log.steps.x=1"], "log.steps", "unknown field"),
    ],
)
def test_bad_values_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as info:
        load_config("demo", overrides)
    assert info.value.field == field and words in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "world", "field", "words"),
    [
        (["recipe=fastdit"], 1, "recipe", "unknown preset 'fastdit'"),
        (["recipe.loss.direction_weight=-1"], 1, "recipe.loss.direction_weight", ">= 0"),
        (["recipe.loss.no_such=1"], 1, "recipe.loss.no_such", "no field"),
        (["model.name=DiT-Q/2"], 1, "model.name", "unknown model 'DiT-Q/2'"),
        (["data.source=/no/such/dir"], 1, "data.source", "neither an embedded dataset"),
        (
            ["train.batch_size=64", "train.grad_accum=4"],
            3,
            "train.batch_size",
            "world size 3 × train.grad_accum 4",
        ),
        (["data.resolution=32"], 1, "data.resolution", "expects 32 but digits has 8"),
        (["sample.classes=3,12"], 1, "sample.classes", "10 classes"),
    ],
)
def test_config_errors_before_any_work(overrides, world, field, words):
    cfg = load_config("demo", ["data.source=digits", *overrides])
    with pytest.raises(ConfigError) as info:
        check_config(cfg, world)
    assert info.value.field == field and words in str(info.value)


def test_cli_reports_config_errors_without_traceback_or_run_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--config", "demo", "--run-dir", str(run_dir), "--set", "optim.lr=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.lr: must be > 0" in err and "Traceback" not in err
    assert not run_dir.exists()
    assert main(["train", "--config", "no-such-config", "--run-dir", str(run_dir)]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_prepared_data_path_errors_are_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = load_config("demo", [f"data.source={tmp_path / 'empty'}"])
    with pytest.raises(DataError, match="manifest"):
        check_config(cfg, 1)


def test_dry_run_prints_the_cost_without_data(capsys):
    b2 = [a for s in IMAGENET_B2 for a in ("--set", s)]
    assert main(["train", "--config", "imagenet256", *b2, "--dry-run", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "DiT-B/2" in out and "FLOPs" in out and "A100" in out and "not present" in out
    assert main(["train", "--config", "demo", "--dry-run"]) == 0
    assert "DiT-Ti/4" in capsys.readouterr().out
