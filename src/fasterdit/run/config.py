"""The training configuration: typed dataclasses read from YAML, with ``--set key=value`` overrides.

Why dataclasses and not a free-form dict: every value is checked (type and range) *before* any work
starts, and an error names the dotted field (``optim.lr: must be > 0, got -0.001``), so a typo in a
config never surfaces as a crash two hours into a run.

Counts are in **optimizer steps** (``train.steps``, ``log.*_every``, ``optim.warmup_steps``); one step
consumes ``train.batch_size`` images summed over all ranks and accumulation micro-steps, so the number of
training images seen is ``steps × batch_size`` (the progress bar and the metrics log report both).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasterdit.codec import brief, field_type, from_mapping, load_yaml, load_yaml_file, to_mapping
from fasterdit.diffusion.sampling_base import MAX_STEPS
from fasterdit.dotted import apply_dotted
from fasterdit.errors import ConfigError

__all__ = [
    "MAX_EVAL_SAMPLES",
    "MAX_GRID_SAMPLES",
    "MAX_THREADS",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SampleConfig",
    "TrainConfig",
    "check_world",
    "config_from_dict",
    "config_search_dirs",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
]


#: Bounds of the values that size memory or threads: a value past them is a typo (``1e9`` for ``1e3``)
#: that would otherwise train, checkpoint and then be killed for memory. Sampling steps: MAX_STEPS of
#: the samplers (100,000).
MAX_THREADS = 1024  #: train.threads (torch's CPU threads; one per core is the most that helps)
MAX_GRID_SAMPLES = 10_000  #: images of one sample grid (rows x sample.per_class), drawn in memory
MAX_EVAL_SAMPLES = 1_000_000  #: eval.num_samples (eval.every gathers them in memory; FID-50K needs 50,000)
MAX_PREFETCH = 4  #: data.prefetch (each step read ahead holds one rank's batch in host memory)


@dataclass
class ModelConfig:
    name: str = "DiT-Ti/4"  #: a named config of fasterdit.models (``fasterdit info --list``)
    #: output the learned variance (2C channels); None = what the recipe's loss needs (DiT's VB term)
    learn_sigma: bool | None = None
    class_dropout_prob: float = 0.1  #: label dropout for classifier-free guidance (adds the null class)
    grad_checkpointing: bool = False  #: recompute block activations in backward (saves memory)


@dataclass
class DataConfig:
    #: an embedded dataset name ("mnist", "digits") or a directory written by ``fasterdit prepare``
    source: str = "mnist"
    split: str = "train"  #: embedded datasets only: "train", "heldout" or "all"
    #: the shape the config expects (checked against the data; lets ``--dry-run`` work before the data exists)
    resolution: int | None = None  #: side of the images/latents the model sees (ImageNet-256 latents: 32)
    channels: int | None = None  #: channels the model sees (SD-VAE latents: 4)
    num_classes: int | None = None  #: 0 = unconditional
    #: prepared sets: steps whose batches a background thread reads ahead (0 = read in the training step)
    prefetch: int = 1


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0  #: linear warm-up from 0 to ``lr``, then constant
    grad_clip: float = 0.0  #: max global gradient norm; 0 = no clipping
    fused: bool | None = None  #: fused AdamW kernel; None = wherever this torch build offers it


@dataclass
class TrainConfig:
    steps: int = 1000  #: optimizer steps; images seen = steps × batch_size
    batch_size: int = 64  #: global batch (all ranks × accumulation micro-steps)
    grad_accum: int = 1  #: micro-steps per optimizer step on each rank
    device: str = "auto"  #: "auto" (CUDA if available), "cpu", "cuda"
    precision: str = "auto"  #: "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16"
    #: torch.compile the training step: on one process the loss and the model as one graph, under DDP
    #: the model (first step pays the compile: ~20-45 s for the CPU-sized DiTs)
    compile: bool = False
    compile_backend: str = "inductor"  #: torch.compile backend ("aot_eager" traces without codegen)
    #: CPU threads for torch ops; None = torch's default (all cores). 1 is faster on a machine shared with
    #: other busy processes (OpenMP threads then spin against each other)
    threads: int | None = None
    tf32: bool = True  #: allow TF32 matmuls on Ampere+ GPUs
    ema_decay: float = 0.9999  #: EMA of the weights, updated every optimizer step, kept in fp32
    #: ramp the EMA decay as min(decay, (1 + step) / (10 + step)) so short runs get a useful EMA early
    ema_warmup: bool = False
    max_nonfinite: int = 20  #: abort after this many consecutive steps with a non-finite loss/gradient
    #: what ``max_nonfinite`` non-finite steps in a row do: "stop" (TrainingAborted) or "rollback" (reload
    #: the last intact checkpoint, move past the data up to the failing step's batch, scale the lr)
    on_nonfinite: str = "stop"
    rollback_lr_scale: float = 1.0  #: multiplies the lr at each rollback (cumulative; saved in checkpoints)
    max_rollbacks: int = 3  #: rollbacks a run may take (counted across resumes); the next streak stops it
    #: warn when the recipe's log-SNR law sits far from where it sits on unit-std data (unscaled latents)
    snr_warning: bool = True
    #: start a fresh run from another model's weights: a run dir, a checkpoint, an official DiT ``.pt`` or
    #: a diffusers DiT folder (what ``fasterdit sample --ckpt`` reads; its EMA weights), copied into the
    #: model and its EMA at step 0 (same architecture, else an error). A resumed run ignores it: its own
    #: checkpoint wins. The source's SHA-256 is recorded in every checkpoint's meta.json (``init``)
    init: str | None = None


@dataclass
class LogConfig:
    log_every: int = 50  #: metrics to JSONL/TensorBoard and the progress bar (also the host-sync interval)
    ckpt_every: int = 1000  #: checkpoint interval in steps (a final checkpoint is always written)
    keep_last: int = 3  #: checkpoints kept in <run_dir>/checkpoints
    sample_every: int = 1000  #: sample-grid interval in steps (0 = only at the end)
    tensorboard: bool = True  #: also write TensorBoard events (if tensorboard is installed)
    #: also log the scalars and the config to Weights & Biases (rank 0; the ``fasterdit[wandb]`` extra;
    #: WANDB_MODE=offline, WANDB_PROJECT, WANDB_DIR apply)
    wandb: bool = False
    progress: bool = True  #: show the tqdm progress bar


@dataclass
class SampleConfig:
    """How the run is sampled: the grids written during training (EMA weights, one row per class), and the
    defaults of ``fasterdit sample`` (and of ``fasterdit eval`` where the ``eval`` section is silent)."""

    sampler: str | None = None  #: None = the recipe's default sampler
    steps: int = 50
    cfg_scale: float = 1.0
    classes: list[int] | None = None  #: one grid row per class; None = every class (at most 10)
    per_class: int = 8  #: samples per row
    seed: int = 0  #: sample i's noise and label come from (seed, i) only (fasterdit.generate.seeds)


@dataclass
class EvalConfig:
    """Optional FID / class accuracy every ``every`` steps (embedded data only; see fasterdit.eval), and the
    defaults of ``fasterdit eval`` on this run: the FID logged at step k is ``fasterdit eval``'s on step k."""

    every: int = 0  #: 0 = off
    num_samples: int = 1000
    sampler: str | None = None  #: None = sample.sampler
    steps: int | None = None  #: None = sample.steps
    cfg_scale: float | None = None  #: None = sample.cfg_scale
    seed: int | None = None  #: None = sample.seed


@dataclass
class RunConfig:
    seed: int = 0
    #: a preset name ("dit", "sit", "fasterdit") or a recipe YAML file
    recipe: str = "fasterdit"
    #: dotted recipe fields to change, e.g. {"loss.direction_weight": 0.0}; ``--set recipe.X=V`` lands here
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def validate(self) -> RunConfig:
        """Range checks that need no other module (the trainer checks model/recipe/data names)."""
        _validate(self)
        return self


# ----------------------------------------------------------------------------------------------------
# dict <-> dataclass: fasterdit.codec (type coercion, unknown fields with a did-you-mean)
# ----------------------------------------------------------------------------------------------------


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build (and range-check) a RunConfig from a plain dict such as a parsed YAML file."""
    return from_mapping(RunConfig, data).validate()


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config dataclass (round-trips through config_from_dict)."""
    return to_mapping(cfg)


def parse_overrides(items: list[str] | None) -> list[tuple[str, str]]:
    """``["optim.lr=2e-4", ...]`` -> ``[("optim.lr", "2e-4"), ...]``; the value stays a string."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected key=value (e.g. optim.lr=2e-4), got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def _apply_override(data: dict[str, Any], key: str, raw: str) -> None:
    """Set a dotted key in the raw config dict, checking the path against the dataclasses.

    ``recipe.<path>`` keys are recipe fields: they go to ``recipe_overrides`` unchanged (the Recipe
    checks them), except ``recipe`` itself, which selects the preset or file.
    """
    parts = key.split(".")
    if parts[0] == "recipe" and len(parts) > 1:
        if data.get("recipe_overrides") is None:
            data["recipe_overrides"] = {}
        data["recipe_overrides"][".".join(parts[1:])] = (
            load_yaml(raw, "--set", f"the value of {key}") if raw else raw
        )
        return
    tp = field_type(RunConfig, key)
    # keep the string; the codec parses it by the declared type (lists from "1,2,3" or YAML)
    value: Any = raw
    if typing.get_origin(tp) is list or tp is dict or typing.get_origin(tp) is dict:
        loaded = load_yaml(raw, "--set", f"the value of {key}") if raw else None
        value = loaded if isinstance(loaded, (list, dict)) else raw
    # a config file may leave sections out: the path is checked above, so missing ones are created
    apply_dotted(data, key, value, what="config", create_sections=True)


def config_search_dirs() -> list[Path]:
    """Where bare config names (``demo``) are looked up: ./configs of the current directory (a user's
    own), then the configs shipped inside the package as package data (``fasterdit/configs/*.yaml``,
    present after any install, editable or not)."""
    shipped = Path(__file__).resolve().parents[1] / "configs"
    return list(dict.fromkeys([Path.cwd() / "configs", shipped]))


def resolve_config_path(spec: str | Path) -> Path:
    """A config file path, or a bare name such as ``demo`` / ``mnist``: ./configs/<name>.yaml if the
    current directory has it, else the shipped ``fasterdit/configs/<name>.yaml``."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix == "" and len(path.parts) == 1:
        for d in config_search_dirs():
            cand = d / f"{spec}.yaml"
            if cand.is_file():
                return cand
    known = sorted({p.stem for d in config_search_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    hint = f" (config names, given bare as --config demo: {', '.join(known)})" if known else ""
    raise ConfigError("--config", f"no such config file: {spec}{hint}")


def load_config(spec: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from the defaults when ``spec`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if spec is not None:
        path = resolve_config_path(spec)
        loaded = load_yaml_file(path, "--config")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                "--config", f"{path} must hold a mapping of sections, not {type(loaded).__name__}"
            )
        data = loaded or {}
    for key, raw in parse_overrides(overrides):
        _apply_override(data, key, raw)
    return config_from_dict(data)


# ----------------------------------------------------------------------------------------------------
# range checks
# ----------------------------------------------------------------------------------------------------


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(name, msg)


def _nonfinite_paths(value: Any, name: str) -> list[str]:
    """Dotted names of the non-finite floats in a nested value (recipe overrides are untyped here)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [name]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nonfinite_paths(v, f"{name}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _nonfinite_paths(v, f"{name}[{i}]")]
    return []


def _validate(cfg: RunConfig) -> None:
    o, t, lg, s, e = cfg.optim, cfg.train, cfg.log, cfg.sample, cfg.eval
    bad = _nonfinite_paths(cfg.recipe_overrides, "recipe")
    _check(not bad, bad[0] if bad else "recipe", "must be a finite number, got a NaN or an infinity")
    _check(bool(cfg.recipe.strip()), "recipe", "must name a preset (dit, sit, fasterdit) or a recipe YAML")
    _check(bool(cfg.model.name.strip()), "model.name", "must name a model config (fasterdit info --list)")
    _check(
        0.0 <= cfg.model.class_dropout_prob < 1.0,
        "model.class_dropout_prob",
        f"must be in [0, 1), got {cfg.model.class_dropout_prob}",
    )
    _check(bool(cfg.data.source.strip()), "data.source", "must be an embedded name (mnist, digits) or a path")
    _check(
        cfg.data.split in ("train", "heldout", "all"),
        "data.split",
        f"must be train, heldout or all, got {brief(cfg.data.split)}",
    )
    for key in ("resolution", "channels"):
        v = getattr(cfg.data, key)
        _check(v is None or v >= 1, f"data.{key}", f"must be >= 1, got {v}")
    _check(
        cfg.data.num_classes is None or cfg.data.num_classes >= 0,
        "data.num_classes",
        f"must be >= 0, got {cfg.data.num_classes}",
    )
    _check(
        0 <= cfg.data.prefetch <= MAX_PREFETCH,
        "data.prefetch",
        f"must be in 0..{MAX_PREFETCH} (0 = off), got {cfg.data.prefetch}",
    )
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(0 <= o.beta1 < 1, "optim.beta1", f"must be in [0, 1), got {o.beta1}")
    _check(0 <= o.beta2 < 1, "optim.beta2", f"must be in [0, 1), got {o.beta2}")
    _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {o.grad_clip}")
    _check(t.steps > 0, "train.steps", f"must be > 0, got {t.steps}")
    _check(t.batch_size > 0, "train.batch_size", f"must be > 0, got {t.batch_size}")
    _check(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _check(
        t.batch_size % t.grad_accum == 0,
        "train.batch_size",
        f"{t.batch_size} is not divisible by train.grad_accum={t.grad_accum}",
    )
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        f"must be auto, cpu or cuda, got {brief(t.device)}",
    )
    _check(
        t.precision in ("auto", "fp32", "bf16"),
        "train.precision",
        f"must be auto, fp32 or bf16, got {brief(t.precision)}",
    )
    _check(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _check(
        isinstance(t.compile_backend, str) and bool(t.compile_backend),
        "train.compile_backend",
        f"must be a torch.compile backend name such as inductor, got {brief(t.compile_backend)}",
    )
    _check(
        t.threads is None or 1 <= t.threads <= MAX_THREADS,
        "train.threads",
        f"must be >= 1 and at most {MAX_THREADS}, or null, got {brief(t.threads)}",
    )
    _check(t.max_nonfinite >= 1, "train.max_nonfinite", f"must be >= 1, got {t.max_nonfinite}")
    _check(
        t.on_nonfinite in ("stop", "rollback"),
        "train.on_nonfinite",
        f"must be stop or rollback, got {brief(t.on_nonfinite)}",
    )
    _check(
        0 < t.rollback_lr_scale <= 1,
        "train.rollback_lr_scale",
        f"must be in (0, 1] (1 = keep the lr), got {t.rollback_lr_scale}",
    )
    _check(t.max_rollbacks >= 0, "train.max_rollbacks", f"must be >= 0, got {t.max_rollbacks}")
    _check(
        t.init is None or bool(t.init.strip()),
        "train.init",
        "must name a run, checkpoint or diffusers folder, or be null",
    )
    for key in ("log_every", "ckpt_every", "sample_every"):
        _check(getattr(lg, key) >= 0, f"log.{key}", f"must be >= 0 (0 = off), got {getattr(lg, key)}")
    _check(lg.log_every >= 1, "log.log_every", f"must be >= 1, got {lg.log_every}")
    _check(lg.keep_last >= 1, "log.keep_last", f"must be >= 1, got {lg.keep_last}")
    _check(
        1 <= s.steps <= MAX_STEPS,
        "sample.steps",
        f"must be >= 1 and at most {MAX_STEPS}, got {brief(s.steps)}",
    )
    _check(s.cfg_scale >= 0, "sample.cfg_scale", f"must be >= 0, got {s.cfg_scale}")
    _check(s.per_class >= 1, "sample.per_class", f"must be >= 1, got {s.per_class}")
    rows = len(s.classes) if s.classes else 10  # None: every class, at most 10
    _check(
        rows * s.per_class <= MAX_GRID_SAMPLES,
        "sample.per_class",
        f"a grid of {rows} rows x {brief(s.per_class)} is over {MAX_GRID_SAMPLES} images (sample.classes "
        "x sample.per_class; rows count as 10 when classes is null)",
    )
    _check(s.seed >= 0, "sample.seed", f"must be >= 0, got {s.seed}")
    _check(e.seed is None or e.seed >= 0, "eval.seed", f"must be >= 0, got {e.seed}")
    _check(
        s.classes is None or all(c >= 0 for c in s.classes),
        "sample.classes",
        f"must be class indices >= 0, got {brief(s.classes)}",
    )
    _check(e.every >= 0, "eval.every", f"must be >= 0 (0 = off), got {e.every}")
    _check(
        2 <= e.num_samples <= MAX_EVAL_SAMPLES,
        "eval.num_samples",
        f"must be >= 2 (FID needs a covariance) and at most {MAX_EVAL_SAMPLES}, got {brief(e.num_samples)}",
    )
    _check(
        e.steps is None or 1 <= e.steps <= MAX_STEPS,
        "eval.steps",
        f"must be >= 1 and at most {MAX_STEPS}, got {brief(e.steps)}",
    )


def check_world(cfg: RunConfig, world_size: int) -> None:
    """The global batch must split evenly into world_size × grad_accum micro-batches."""
    div = world_size * cfg.train.grad_accum
    if cfg.train.batch_size % div:
        raise ConfigError(
            "train.batch_size",
            f"{cfg.train.batch_size} is not divisible by world size {world_size} × train.grad_accum "
            f"{cfg.train.grad_accum} = {div}",
        )
