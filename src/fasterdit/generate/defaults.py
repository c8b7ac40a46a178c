"""The one precedence of sampling defaults, for every command that samples a trained model.

A value comes from the first of these that gives it:

1. the command-line flag;
2. the run's ``eval`` section (evaluation only: ``eval.every`` and ``fasterdit eval``);
3. the run's ``sample`` section (the training grids, ``fasterdit sample``, and evaluation where ``eval``
   is silent);
4. the recipe (sampler name, time shift, guidance interval), or for an official DiT/SiT ``.pt`` the
   family's own ``sample.py`` settings (its papers' FID setting, cfg 1.5, for evaluation).

Why one function: the FID that training logs at step k must be the FID that ``fasterdit eval`` reports
on the checkpoint of step k with default flags. When the trainer, ``sample`` and ``eval`` each resolved
their own defaults they disagreed (``eval.every`` fell back to ``sample.cfg_scale``, ``fasterdit eval``
to 1.0), and the same checkpoint got three FIDs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from fasterdit.diffusion.recipe import Recipe
from fasterdit.diffusion.sampler_options import SAMPLER_NAMES, SAMPLER_OPTIONS
from fasterdit.errors import ConfigError
from fasterdit.generate.checks import check_bounds
from fasterdit.generate.loading import LoadedModel
from fasterdit.run.config import RunConfig

__all__ = [
    "BATCH_SIZE",
    "PAPER_FID_CFG",
    "Purpose",
    "ResolvedSampling",
    "SamplingFlags",
    "grid_classes",
    "parse_sampler_opts",
    "resolve_sampling",
    "sampler_opt_keys",
]

Purpose = Literal["sample", "eval"]

#: samples per batch and process, for every command and the trainer's evaluation (a batch's shape is
#: part of its arithmetic, so equal defaults are what make equal samples)
BATCH_SIZE = 250
#: the guidance of the DiT and SiT papers' FID-50K tables: what ``fasterdit eval`` uses on their checkpoints
PAPER_FID_CFG = 1.5
#: samples of ``fasterdit eval`` on an official checkpoint when ``--num-samples`` is not given
OFFICIAL_EVAL_SAMPLES = 1000


@dataclass(frozen=True)
class SamplingFlags:
    """What the user asked for on the command line; None (or empty) = not given."""

    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    num_samples: int | None = None
    guide_channels: int | None = None
    guidance_interval: tuple[float, float] | None = None
    sampler_opts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedSampling:
    """Every sampling choice, and where each came from (``--dry-run`` and ``--help`` print both)."""

    sampler: str
    steps: int
    cfg_scale: float
    seed: int
    num_samples: int
    guide_channels: int | None
    guidance_interval: tuple[float, float] | None
    sampler_kwargs: dict[str, Any]
    sources: dict[str, str]

    def describe(self) -> str:
        """One line per choice: ``cfg_scale 4.0 (eval.cfg_scale)``."""
        rows = [
            ("sampler", self.sampler),
            ("steps", self.steps),
            ("cfg_scale", self.cfg_scale),
            ("seed", self.seed),
            ("num_samples", self.num_samples),
            ("guide_channels", self.guide_channels if self.guide_channels is not None else "all"),
            ("guidance_interval", self.guidance_interval or "always"),
            ("sampler_opts", self.sampler_kwargs or "none"),
        ]
        return "\n".join(f"  {k:<17} {v}  ({self.sources[k]})" for k, v in rows)


def _first(*layers: tuple[str, Any]) -> tuple[Any, str]:
    for source, value in layers:
        if value is not None:
            return value, source
    raise AssertionError("the last layer always answers")  # pragma: no cover - programming error


def grid_classes(cfg: RunConfig, num_classes: int) -> list[int]:
    """The rows of the run's grids: ``sample.classes``, else every class up to 10 (one row when
    the model is unconditional)."""
    if num_classes <= 0:
        return [0]
    return list(cfg.sample.classes) if cfg.sample.classes else list(range(min(num_classes, 10)))


def sampler_opt_keys(sampler: str) -> tuple[str, ...]:
    """What ``--sampler-opt`` may set for ``sampler``: its options, and the time ``shift`` of the grid."""
    return ("shift", *(o for o in SAMPLER_OPTIONS[sampler] if o != "generator"))


def parse_sampler_opts(items: list[str] | None) -> dict[str, Any]:
    """``["atol=1e-6", "eta=0.5"]`` -> ``{"atol": 1e-06, "eta": 0.5}`` (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError("--sampler-opt", f"expected KEY=VALUE (e.g. atol=1e-6), got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # PyYAML reads 1e-6 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError("--sampler-opt", f"{key}: expected a number, true/false or a word, got {raw!r}")
        out[key.strip()] = value
    return out


def _check_opts(sampler: str, opts: Mapping[str, Any]) -> None:
    allowed = sampler_opt_keys(sampler)
    for key in opts:
        if key not in allowed:
            raise ConfigError(
                "--sampler-opt", f"{sampler!r} does not take {key!r}; it takes {', '.join(allowed)}"
            )


def _family_label(lm: LoadedModel) -> str:
    return f"{lm.source} sample.py"


def resolve_sampling(purpose: Purpose, lm: LoadedModel, flags: SamplingFlags) -> ResolvedSampling:
    """The sampling of ``lm`` for ``purpose`` by the precedence of the module docstring."""
    flag = "flag"
    recipe: Recipe = lm.recipe
    if lm.family is None:  # one of our runs
        cfg = lm.cfg
        ev = cfg.eval if purpose == "eval" else None
        sampler, s_src = _first(
            (flag, flags.sampler),
            ("eval.sampler", ev.sampler if ev else None),
            ("sample.sampler", cfg.sample.sampler),
            ("recipe sampler.name", recipe.sampler.name),
        )
        steps, st_src = _first(
            (flag, flags.steps), ("eval.steps", ev.steps if ev else None), ("sample.steps", cfg.sample.steps)
        )
        cfg_scale, c_src = _first(
            (flag, flags.cfg_scale),
            ("eval.cfg_scale", ev.cfg_scale if ev else None),
            ("sample.cfg_scale", cfg.sample.cfg_scale),
        )
        seed, se_src = _first(
            (flag, flags.seed), ("eval.seed", ev.seed if ev else None), ("sample.seed", cfg.sample.seed)
        )
        grid = len(grid_classes(cfg, lm.data.num_classes)) * cfg.sample.per_class
        num, n_src = _first(
            (flag, flags.num_samples),
            ("eval.num_samples", ev.num_samples if ev else None),
            ("sample.classes x sample.per_class", grid),
        )
        guide, g_src = flags.guide_channels, flag if flags.guide_channels is not None else "every channel"
        base_opts: dict[str, Any] = {}
        opts_src = "recipe"
    else:  # an official checkpoint: its code's sample.py, the papers' guidance for FID
        fam, label = lm.family, _family_label(lm)
        sampler, s_src = _first((flag, flags.sampler), (label, fam.sampler))
        steps, st_src = _first((flag, flags.steps), (label, fam.steps))
        paper = (
            ("DiT/SiT papers' FID setting", PAPER_FID_CFG) if purpose == "eval" else (label, fam.cfg_scale)
        )
        cfg_scale, c_src = _first((flag, flags.cfg_scale), paper)
        seed, se_src = _first((flag, flags.seed), ("default", 0))
        num, n_src = _first(
            (flag, flags.num_samples), ("default", OFFICIAL_EVAL_SAMPLES if purpose == "eval" else 64)
        )
        guide, g_src = _first((flag, flags.guide_channels), (label, fam.guide_channels or 0))
        guide = guide or None
        base_opts = dict(fam.sampler_kwargs) if sampler == fam.sampler else {}
        opts_src = label
    if sampler not in SAMPLER_NAMES:
        raise ConfigError(
            "--sampler", f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}"
        )
    _check_opts(sampler, flags.sampler_opts)
    check_bounds(int(steps), int(num), png=False)  # flags (the run's own values are checked with its config)
    interval, i_src = _first(
        (flag, flags.guidance_interval),
        ("recipe sampler.guidance_interval", _interval(recipe.sampler.guidance_interval)),
        ("always", ()),
    )
    kwargs = {**base_opts, **flags.sampler_opts}
    sources = {
        "sampler": s_src,
        "steps": st_src,
        "cfg_scale": c_src,
        "seed": se_src,
        "num_samples": n_src,
        "guide_channels": g_src,
        "guidance_interval": i_src,
        "sampler_opts": flag if flags.sampler_opts else opts_src,
    }
    return ResolvedSampling(
        sampler=str(sampler),
        steps=int(steps),
        cfg_scale=float(cfg_scale),
        seed=int(seed),
        num_samples=int(num),
        guide_channels=guide,
        guidance_interval=interval or None,
        sampler_kwargs=kwargs,
        sources=sources,
    )


def _interval(value: list[float] | None) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value else None
