"""Turning a RunConfig into objects -- recipe, data source, model -- with every check done up front.

Why a separate step: ``fasterdit train`` must reject a bad config (unknown preset, bad model name,
missing data, a batch that does not split over the ranks) before it allocates a model or touches the
run directory, and ``--dry-run``, ``load_model`` and the trainer all need the same construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fasterdit.data.source import open_source
from fasterdit.data.stats import DataStats
from fasterdit.diffusion.recipe import Recipe, load_recipe
from fasterdit.errors import ConfigError, UserError
from fasterdit.models import create_model
from fasterdit.run.config import RunConfig, check_world
from fasterdit.train import preflight
from fasterdit.train.align import check_alignment
from fasterdit.train.wandb_log import wandb_missing

__all__ = [
    "ShapeOnly",
    "build_model",
    "check_config",
    "check_expected_shape",
    "model_kwargs",
    "resolve_recipe_on_data",
]


def resolve_recipe_on_data(recipe: Recipe, source) -> Recipe:
    """The recipe with its data scaling resolved against the data's measured statistics, and its
    direction-loss mode made concrete for the data's channel count.

    ``std`` mode takes the pooled std of all values (``DataStats.pooled_std``), ``channel`` mode
    per-channel mean and std. A recipe
    that is already resolved (e.g. loaded from a checkpoint or a YAML with numbers) is kept as it is.
    """
    recipe = recipe.for_channels(int(source.channels))
    sc = recipe.scaling
    if not sc.needs_stats or sc.is_resolved:
        return recipe
    if sc.mode == "std":
        return recipe.resolve(std=source.stats.pooled_std)
    return recipe.resolve(mean=list(source.stats.mean), std=list(source.stats.std))


def model_kwargs(cfg: RunConfig, source, recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of ``create_model`` for this config and data."""
    learn_sigma = cfg.model.learn_sigma
    needs = recipe.learn_sigma  # the recipe's loss trains the iDDPM variance (DiT's VB term)
    if learn_sigma is None:
        learn_sigma = needs
    elif needs and not learn_sigma:
        raise ConfigError(
            "model.learn_sigma", "the recipe's loss trains the learned variance: set it to true"
        )
    return dict(
        input_size=source.resolution,
        in_channels=source.channels,
        num_classes=source.num_classes,
        learn_sigma=bool(learn_sigma),
        class_dropout_prob=cfg.model.class_dropout_prob,
        grad_checkpointing=cfg.model.grad_checkpointing,
    )


def build_model(cfg: RunConfig, source, recipe: Recipe, device: torch.device | str = "meta"):
    """The DiT of ``cfg.model`` for ``source``'s shape (on the meta device by default: no allocation)."""
    kwargs = model_kwargs(cfg, source, recipe)
    try:
        with torch.device(device):
            model = create_model(cfg.model.name, **kwargs)
    except ConfigError as err:
        field = "model.name" if err.field == "model" else f"model.{err.field}"
        raise ConfigError(field, str(err).split(": ", 1)[-1]) from None
    return model


def check_expected_shape(cfg: RunConfig, source) -> None:
    """The data must have the shape the config says it expects (when it says)."""
    d = cfg.data
    expected = (
        ("resolution", d.resolution, source.resolution),
        ("channels", d.channels, source.channels),
        ("num_classes", d.num_classes, source.num_classes),
    )
    for key, want, got in expected:
        if want is not None and want != int(got):
            raise ConfigError(f"data.{key}", f"the config expects {want} but {cfg.data.source} has {got}")


class ShapeOnly:
    """A stand-in data source for ``--dry-run`` before the data exists: just the expected shape."""

    is_latent = False
    vae = None
    origin = None

    def __init__(self, cfg: RunConfig):
        missing = [k for k in ("resolution", "channels", "num_classes") if getattr(cfg.data, k) is None]
        if missing:
            raise ConfigError(
                "data.source",
                f"{cfg.data.source!r} does not exist; for a dry run without the data set "
                + ", ".join(f"data.{k}" for k in missing),
            )
        self.resolution, self.channels = int(cfg.data.resolution), int(cfg.data.channels)
        self.num_classes = int(cfg.data.num_classes)
        self.stats = DataStats.of([0.0] * self.channels, [1.0] * self.channels)

    def __len__(self) -> int:
        return 0


def check_config(cfg: RunConfig, world_size: int = 1, *, shape_if_missing: bool = False):
    """Every check that needs no training: ranges, recipe, data, model. Returns (recipe, source).

    Raises ConfigError/DataError naming the field. Loads the data source (cheap: embedded sets are
    small; prepared sets are memory-mapped), and builds the model on the meta device.
    ``shape_if_missing``: data that does not exist yet is checked as :class:`ShapeOnly` (the config's
    ``data.resolution``/``channels``/``num_classes``), so that ``--dry-run`` checks all the rest before
    the data is prepared; the source returned is then that ShapeOnly.
    """
    cfg.validate()
    check_world(cfg, world_size)
    if cfg.train.init is not None and not Path(cfg.train.init).expanduser().exists():
        raise ConfigError("train.init", f"no such run, checkpoint or folder: {cfg.train.init}")
    missing = wandb_missing() if cfg.log.wandb else None
    if missing is not None:
        raise UserError(missing)
    recipe = load_recipe(cfg.recipe, cfg.recipe_overrides)
    try:
        source = open_source(cfg.data.source, cfg.data.split, "cpu")
    except ConfigError as err:
        if not (shape_if_missing and err.field == "data.source"):
            raise
        source = ShapeOnly(cfg)
    check_expected_shape(cfg, source)
    classes = cfg.sample.classes
    if classes and max(classes) >= max(source.num_classes, 1):
        raise ConfigError("sample.classes", f"the data has {source.num_classes} classes, got {classes}")
    recipe = resolve_recipe_on_data(recipe, source)
    check_alignment(recipe, source, build_model(cfg, source, recipe, "meta"))

    preflight.check_samplers(cfg)
    preflight.check_guidance(cfg, int(source.num_classes))
    preflight.check_compile_backend(cfg)
    if cfg.eval.every and source.origin is None:
        raise ConfigError(
            "eval.every",
            "in-training evaluation needs images of an embedded dataset (mnist, digits), as pixels or "
            "as latents prepared from it (fasterdit prepare --images mnist ...)",
        )
    if source.is_latent and cfg.log.sample_every and not source.vae:
        raise UserError(f"{cfg.data.source}: latent data without a VAE in its manifest cannot be sampled")
    return recipe, source
