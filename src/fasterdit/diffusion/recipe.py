"""The Recipe: every training-strategy choice in one validated, YAML-serialisable dataclass.

FasterDiT's claim is that the *strategy* (path, target, timestep law, data std, loss) rather than the
architecture decides how fast a DiT trains. Keeping all of those choices in one object makes runs
comparable and reproducible: the trainer, the loss, the samplers and the SNR analyser all read the
same Recipe, and the Recipe is saved next to every checkpoint.

Presets (docs/diffusion.md gives their sources):

* ``dit``: DDPM-linear chain, ε-target, uniform discrete steps, learned variance with the hybrid
  loss (ε-MSE + VB), DDPM ancestral sampling with 250 steps: the official DiT.
* ``sit``: rectified flow (flow-linear), velocity target, uniform t: SiT's best "Linear" setting.
* ``fasterdit``: flow-linear, velocity, lognorm(0, 1) timesteps, per-channel std modulation to
  std 1, plus the velocity-direction loss with weight 1: over channels at each position (LightningDiT)
  on multi-channel data such as VAE latents, over p×p tokens on 1-channel data.

The network's timestep input is part of the recipe (``time_input``): ``index`` feeds the DDPM
step ``t·N − 1`` (0…999, as the official DiT), ``scaled`` feeds ``t·time_scale`` (1000 by default,
so the sinusoidal embedding with max_period 10000 resolves t as finely as DiT's indices),
``reversed`` feeds ``1 − t`` (official SiT checkpoints, whose time runs from noise 0 to data 1; their
velocity, dx/ds, is then the negative of ours, see :meth:`Recipe.network_output`).

Two further sections act on any preset (docs/repa.md): ``align`` adds REPA's representation-alignment term
(Yu et al. 2025; weight 0, the default, leaves the recipe as it was), and ``stages`` changes loss weights or
the timestep law from a given step on (:meth:`Recipe.at`), e.g. the alignment weight to 0 after step N or
lognorm -> uniform after step N. Both are saved with the run like every other field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from fasterdit.codec import from_mapping, load_yaml, load_yaml_file, to_mapping
from fasterdit.diffusion.sampler_options import SAMPLER_NAMES
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.diffusion.schedules import SCHEDULES, Schedule, get_schedule
from fasterdit.diffusion.targets import TARGETS
from fasterdit.diffusion.timesteps import TIMESTEP_SAMPLERS, TimestepSampler, get_timestep_sampler
from fasterdit.dotted import apply_dotted
from fasterdit.errors import ConfigError, DataError

PRESETS = ("dit", "sit", "fasterdit")
TIME_INPUTS = ("index", "scaled", "reversed")
WEIGHTINGS = ("none", "min-snr")
DIRECTION_MODES = ("auto", "channel", "token", "sample")
#: the free-form parameter mappings of the recipe (their objects check the keys)
PARAMS_SECTIONS = ("schedule_params", "timestep_params")


def _check_choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field_name, f"got {value!r}; choose one of {', '.join(allowed)}")


def _check_number(field_name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field_name, f"must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(field_name, f"must be > 0, got {value!r}")
    if nonneg and not value >= 0:
        raise ConfigError(field_name, f"must be >= 0, got {value!r}")


@contextmanager
def _params_field(prefix: str, params_key: str) -> Iterator[None]:
    """Re-raise "schedule.beta_end"-style errors under the recipe key that holds the value."""
    try:
        yield
    except ConfigError as err:
        if err.field.startswith(prefix + ".") and err.field != "timesteps.shift":
            raise ConfigError(params_key + err.field[len(prefix) :], str(err).split(": ", 1)[1]) from err
        if err.field == "timesteps.shift":
            raise ConfigError("time_shift", str(err).split(": ", 1)[1]) from err
        raise


@dataclass
class LossConfig:
    """Loss terms.

    Attributes:
        weighting: ``none`` or ``min-snr`` (min-SNR-γ of Hang et al. 2023, expressed for any target).
        min_snr_gamma: γ of min-SNR.
        direction_weight: λ_dir of FasterDiT's velocity-direction loss (0 disables it).
        direction_mode: where the cosine is taken: ``channel`` (over channels at each position, as
            LightningDiT), ``token`` (over each p×p patch × channels), ``sample`` (whole sample) or
            ``auto``: ``channel`` for data with more than one channel (the reference), ``token`` for
            1-channel data, where a cosine over one channel is ±1 and has no gradient.
        direction_patch: token size p for ``token`` mode; None uses the model's patch size.
        vb_weight: weight of the variational-bound term for learned variances (DiT: 1).
    """

    weighting: str = "none"
    min_snr_gamma: float = 5.0
    direction_weight: float = 0.0
    direction_mode: str = "token"
    direction_patch: int | None = None
    vb_weight: float = 1.0

    def direction_mode_for(self, channels: int) -> str:
        """The concrete direction mode on ``channels``-channel data (resolves ``auto``)."""
        if self.direction_mode != "auto":
            return self.direction_mode
        return "channel" if channels > 1 else "token"

    def describe(self, channels: int) -> str:
        """One line for the run summary: the loss terms as they act on ``channels``-channel data."""
        terms = ["MSE" if self.weighting == "none" else f"min-SNR-{self.min_snr_gamma:g} MSE"]
        if self.direction_weight > 0:
            mode = self.direction_mode_for(channels)
            where = {
                "channel": "over channels at each position, as LightningDiT",
                "token": "over each p×p patch × channels",
                "sample": "over the whole sample",
            }[mode]
            if mode == "token" and self.direction_mode == "auto":
                where += " (1-channel data: a cosine over one channel is ±1 and has no gradient)"
            terms.append(f"{self.direction_weight:g}·direction [{mode}: {where}]")
        return " + ".join(terms)

    def validate(self) -> None:
        _check_choice("loss.weighting", self.weighting, WEIGHTINGS)
        _check_number("loss.min_snr_gamma", self.min_snr_gamma, positive=True)
        _check_number("loss.direction_weight", self.direction_weight, nonneg=True)
        _check_choice("loss.direction_mode", self.direction_mode, DIRECTION_MODES)
        if self.direction_patch is not None and (
            isinstance(self.direction_patch, bool)
            or not isinstance(self.direction_patch, int)
            or self.direction_patch < 1
        ):
            raise ConfigError(
                "loss.direction_patch", f"must be a positive integer or null, got {self.direction_patch!r}"
            )
        _check_number("loss.vb_weight", self.vb_weight, nonneg=True)


@dataclass
class SamplerConfig:
    """The default sampler a trained model is sampled with (the samplers module interprets it)."""

    name: str = "euler"
    steps: int = 250
    shift: float = 1.0
    cfg_scale: float = 1.0
    guidance_interval: list[float] | None = None

    def validate(self, sched: Schedule) -> None:
        _check_choice("sampler.name", self.name, SAMPLER_NAMES)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError("sampler.steps", f"must be a positive integer, got {self.steps!r}")
        _check_number("sampler.shift", self.shift, positive=True)
        _check_number("sampler.cfg_scale", self.cfg_scale)
        if self.guidance_interval is not None:
            gi = self.guidance_interval
            if (
                not isinstance(gi, (list, tuple))
                or len(gi) != 2
                or not all(isinstance(v, (int, float)) for v in gi)
                or not 0.0 <= gi[0] < gi[1] <= 1.0
            ):
                raise ConfigError(
                    "sampler.guidance_interval",
                    f"must be [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1, got {gi!r}",
                )
            self.guidance_interval = [float(gi[0]), float(gi[1])]
        if self.name == "ddpm" and not sched.is_discrete:
            raise ConfigError(
                "sampler.name",
                f"'ddpm' needs a discrete chain (ddpm-linear or ddpm-cosine), not {sched.name!r}",
            )


#: the recipe fields a stage may change: loss weights and the timestep law, never what the network is or
#: predicts (path, target, time input, data scaling, the projector's shape), so one model trains throughout
STAGE_FIELDS = (
    "align.weight",
    "loss.direction_weight",
    "loss.weighting",
    "loss.min_snr_gamma",
    "loss.vb_weight",
    "timesteps",
    "timestep_params",
    "time_shift",
)


@dataclass
class AlignConfig:
    """REPA's representation alignment (Yu et al. 2025, "Representation Alignment for Generation").

    The DiT's tokens after block ``depth`` go through an MLP projector (hidden -> ``projector_dim`` ->
    ``projector_dim`` -> encoder dim, SiLU) and are pulled towards the patch features of a frozen
    self-supervised ``encoder`` on the clean image: ``weight`` times the mean over tokens of
    ``-cos(projected token, feature)``. The projector trains with the DiT and is saved in the training
    state only; the sampling model never has it.

    Attributes:
        weight: λ (REPA's ``proj_coeff``, 0.5 there); 0 disables the term (no projector, no encoder).
        depth: k, 1-based: the tokens after the k-th block (REPA: 8 for XL/2 and L/2, 4 for B/2).
        encoder: the feature encoder: ``dinov2-vitb14`` style names or a hub id / local folder of a
            transformers ``Dinov2Model``, or the shipped ``mnist-ssl`` (docs/repa.md).
        projector_dim: the projector's hidden width (REPA: 2048).
    """

    weight: float = 0.0
    depth: int = 8
    encoder: str = "dinov2-vitb14"
    projector_dim: int = 2048

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def validate(self) -> None:
        _check_number("align.weight", self.weight, nonneg=True)
        for name, value in (("align.depth", self.depth), ("align.projector_dim", self.projector_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise ConfigError("align.encoder", f"must name an encoder, got {self.encoder!r}")


@dataclass
class Stage:
    """After ``at`` optimizer steps (from the step of 0-based index ``at`` on), the recipe with the dotted
    ``set`` overrides (only :data:`STAGE_FIELDS`), e.g. ``{at: 40000, set: {align.weight: 0}}``. A stage that
    sets ``timesteps`` without ``timestep_params`` gives the new law its default parameters."""

    at: int = 0
    set: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        changes = ", ".join(f"{k}={v}" for k, v in self.set.items())
        return f"after step {self.at}: {changes}"


@dataclass
class Recipe:
    """Every training-strategy choice. Build from a preset (:func:`get_preset`), a dict or YAML.

    ``schedule_obj`` and ``timestep_sampler_obj`` are the built objects; ``scaling`` maps data space to
    diffusion space (``std``/``channel`` modes need :meth:`resolve` with the data first).
    """

    name: str = "custom"
    schedule: str = "flow-linear"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    target: str = "velocity"
    timesteps: str = "uniform"
    timestep_params: dict[str, Any] = field(default_factory=dict)
    time_shift: float = 1.0
    time_input: str = "scaled"
    time_scale: float = 1000.0
    learn_sigma: bool = False
    scaling: DataScaling = field(default_factory=DataScaling)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    stages: list[Stage] = field(default_factory=list)

    # --- built objects (rebuilt when the fields they depend on change) --------------------------------
    @property
    def schedule_obj(self) -> Schedule:
        key = (self.schedule, repr(sorted(self.schedule_params.items())))
        cache = self.__dict__.setdefault("_built", {})
        if cache.get("schedule_key") != key:
            cache["schedule"] = get_schedule(self.schedule, **self.schedule_params)
            cache["schedule_key"] = key
        return cache["schedule"]

    @property
    def timestep_sampler_obj(self) -> TimestepSampler:
        key = (
            self.timesteps,
            repr(sorted(self.timestep_params.items())),
            self.time_shift,
            self.schedule,
            repr(sorted(self.schedule_params.items())),
        )
        cache = self.__dict__.setdefault("_built", {})
        if cache.get("timesteps_key") != key:
            kw = dict(self.timestep_params)
            if self.timesteps == "edm-lognormal":
                kw["schedule"] = self.schedule_obj
            if (
                self.timesteps == "uniform-discrete"
                and "num_steps" not in kw
                and self.schedule_obj.is_discrete
            ):
                kw["num_steps"] = self.schedule_obj.num_steps
            cache["timesteps"] = get_timestep_sampler(self.timesteps, shift=self.time_shift, **kw)
            cache["timesteps_key"] = key
        return cache["timesteps"]

    # --- what the network sees -----------------------------------------------------------------------
    def model_time(self, t: Tensor) -> Tensor:
        """The network's timestep input for times t ∈ [0, 1] (float32, same shape and device)."""
        t = t.to(torch.float64) if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        if self.time_input == "index":
            n = self.schedule_obj.num_steps
            idx = t * n - 1.0
            # grid times map to exact integers, as the official DiT's integer steps
            idx = torch.where((idx - idx.round()).abs() < 1e-3, idx.round(), idx)
            return idx.to(torch.float32)
        if self.time_input == "scaled":
            return (t * self.time_scale).to(torch.float32)
        return (1.0 - t).to(torch.float32)

    def network_output(self, out: Tensor) -> Tensor:
        """The network's output in this library's conventions.

        A network whose time runs from noise to data (``time_input: reversed``, the official SiT
        checkpoints: s = 1 − t) predicts its velocity dx/ds = −dx/dt, so a velocity output is negated
        here; the loss and every sampler then see dx/dt. ε, x₀ and v do not depend on the direction.
        """
        if self.time_input == "reversed" and self.target == "velocity":
            return -out
        return out

    # --- validation --------------------------------------------------------------------------------
    def validate(self) -> Recipe:
        """Check every field; raises ConfigError naming the field and the allowed values."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", f"must be a non-empty string, got {self.name!r}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        if not isinstance(self.schedule_params, dict):
            raise ConfigError("schedule_params", "must be a mapping")
        with _params_field("schedule", "schedule_params"):
            sched = self.schedule_obj
        _check_choice("target", self.target, TARGETS)
        _check_choice("timesteps", self.timesteps, TIMESTEP_SAMPLERS)
        if not isinstance(self.timestep_params, dict):
            raise ConfigError("timestep_params", "must be a mapping")
        _check_number("time_shift", self.time_shift, positive=True)
        with _params_field("timesteps", "timestep_params"):
            ts = self.timestep_sampler_obj  # builds and validates the sampler and its parameters
        if (
            self.timesteps == "uniform-discrete"
            and sched.is_discrete
            and ts.params["num_steps"] != sched.num_steps
        ):
            raise ConfigError(
                "timestep_params.num_steps",
                f"{ts.params['num_steps']} does not match the chain's {sched.num_steps} steps",
            )
        _check_choice("time_input", self.time_input, TIME_INPUTS)
        if self.time_input == "index" and not sched.is_discrete:
            raise ConfigError(
                "time_input",
                f"'index' needs a discrete chain (ddpm-linear/ddpm-cosine), not {self.schedule!r}",
            )
        _check_number("time_scale", self.time_scale, positive=True)
        if not isinstance(self.learn_sigma, bool):
            raise ConfigError("learn_sigma", f"must be true or false, got {self.learn_sigma!r}")
        if self.learn_sigma and not sched.is_discrete:
            raise ConfigError(
                "learn_sigma",
                f"a learned variance is trained with the DDPM chain's VB term; needs ddpm-linear or "
                f"ddpm-cosine, not {self.schedule!r}",
            )
        if not isinstance(self.scaling, DataScaling):
            raise ConfigError("scaling", "must be a DataScaling")
        self.scaling.validate()
        self.loss.validate()
        self.sampler.validate(sched)
        self.align.validate()
        self._validate_stages()
        return self

    def _validate_stages(self) -> None:
        """Stages in increasing order of ``at``, each changing only :data:`STAGE_FIELDS`, each giving a valid
        recipe (checked by building it)."""
        last = -1
        for i, st in enumerate(self.stages):
            name = f"stages[{i}]"
            if isinstance(st.at, bool) or not isinstance(st.at, int) or st.at <= last:
                raise ConfigError(
                    f"{name}.at",
                    f"must be an integer step > {last} (stages in increasing order), got {st.at!r}",
                )
            last = st.at
            if not st.set:
                raise ConfigError(f"{name}.set", "changes nothing; give e.g. {align.weight: 0}")
            for key in st.set:
                if key not in STAGE_FIELDS:
                    raise ConfigError(
                        f"{name}.set",
                        f"{key!r} cannot change during a run; allowed: {', '.join(STAGE_FIELDS)}",
                    )
        for i in range(len(self.stages)):
            try:
                self._stage_recipe(i + 1)
            except ConfigError as err:
                raise ConfigError(f"stages[{i}].set", f"gives an invalid recipe ({err})") from None

    # --- step schedules ---------------------------------------------------------------------------------
    def stage_index(self, step: int) -> int:
        """How many stages have begun by 0-based ``step`` (0: the base recipe)."""
        return sum(1 for st in self.stages if st.at <= step)

    def at(self, step: int) -> Recipe:
        """The recipe in force at 0-based optimizer ``step``: the base with every begun stage applied.

        Built once per stage and cached; the returned recipe has no stages of its own (without stages
        it is this recipe itself)."""
        if not self.stages:
            return self
        return self._stage_recipe(self.stage_index(step))

    def _stage_recipe(self, k: int) -> Recipe:
        cache = self.__dict__.setdefault("_stages_built", {})
        key = (k, repr(self.to_dict()))
        if key not in cache:
            d = self.to_dict()
            d["stages"] = []
            for st in self.stages[:k]:
                if "timesteps" in st.set and "timestep_params" not in st.set:
                    d["timestep_params"] = {}  # a new law starts from its own defaults, not the old law's
                for dotted, value in st.set.items():
                    apply_dotted(
                        d, dotted, copy.deepcopy(value), what="recipe", open_sections=PARAMS_SECTIONS
                    )
            built = from_mapping(Recipe, d)
            built.validate()
            cache[key] = built
        return cache[key]

    def stage_recipes(self) -> list[Recipe]:
        """The recipe of each stage, ``[base, after stage 1, ...]``: index :meth:`stage_index` (step)."""
        if not self.stages:
            return [self]
        return [self._stage_recipe(k) for k in range(len(self.stages) + 1)]

    @property
    def uses_align(self) -> bool:
        """Whether any stage trains the alignment term (then the projector exists from step 0)."""
        return self.align.enabled or any(self.at(st.at).align.enabled for st in self.stages)

    def describe_stages(self) -> list[str]:
        """One line per stage, for the run summary and ``fasterdit snr``."""
        return [st.describe() for st in self.stages]

    # --- data statistics ------------------------------------------------------------------------------
    def resolve(self, data: Tensor | None = None, **stats: Any) -> Recipe:
        """A copy with the data scaling's measured statistics filled in (see DataScaling.resolve)."""
        return replace(self, scaling=self.scaling.resolve(data, **stats))

    def for_channels(self, channels: int) -> Recipe:
        """A copy with ``loss.direction_mode: auto`` made concrete for ``channels``-channel data, so
        that the recipe saved with a run says which cosine it trained."""
        mode = self.loss.direction_mode_for(channels)
        return replace(self, loss=replace(self.loss, direction_mode=mode)).validate()

    def updated(self, overrides: Mapping[str, Any]) -> Recipe:
        """A validated copy with dotted-key overrides, e.g. ``{"loss.direction_weight": 0.5}``.

        The parameter mappings (``schedule_params``, ``timestep_params``) take new keys; every other
        key must be a recipe field (ConfigError naming it otherwise).
        """
        d = self.to_dict()
        for key, value in overrides.items():
            apply_dotted(d, key, copy.deepcopy(value), what="recipe", open_sections=PARAMS_SECTIONS)
        return Recipe.from_dict(d)

    # --- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = to_mapping(self)
        d["stages"] = [to_mapping(st) for st in self.stages]  # the codec writes sections, not lists of them
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        """A validated Recipe from a mapping (a recipe YAML, a checkpoint's record): values coerced to the
        declared types as in a run config, then :meth:`validate`."""
        if not isinstance(d, Mapping):
            raise ConfigError("recipe", f"must be a mapping, got {type(d).__name__}")
        return from_mapping(cls, d).validate()

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The recipe as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> Recipe:
        """Read a recipe from a YAML file path or from YAML text."""
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
        ):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"recipe file not found: {path}")
            return cls.from_dict(load_yaml_file(path, "recipe"))
        return cls.from_dict(load_yaml(source, "recipe", "the recipe YAML"))


def get_preset(name: str) -> Recipe:
    """A fresh, validated copy of a named preset (one of :data:`PRESETS`)."""
    if name == "dit":
        r = Recipe(
            name="dit",
            schedule="ddpm-linear",
            target="eps",
            timesteps="uniform-discrete",
            timestep_params={"num_steps": 1000},
            time_input="index",
            learn_sigma=True,
            loss=LossConfig(vb_weight=1.0),
            sampler=SamplerConfig(name="ddpm", steps=250, cfg_scale=1.5),
        )
    elif name == "sit":
        r = Recipe(
            name="sit",
            schedule="flow-linear",
            target="velocity",
            timesteps="uniform",
            time_input="scaled",
            sampler=SamplerConfig(name="euler", steps=250, cfg_scale=1.5),
        )
    elif name == "fasterdit":
        r = Recipe(
            name="fasterdit",
            schedule="flow-linear",
            target="velocity",
            timesteps="lognorm",
            timestep_params={"m": 0.0, "s": 1.0},
            time_input="scaled",
            scaling=DataScaling(mode="channel", target_std=1.0),
            loss=LossConfig(direction_weight=1.0, direction_mode="auto"),
            sampler=SamplerConfig(name="euler", steps=250, cfg_scale=1.5),
        )
    else:
        raise ConfigError("recipe", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return r.validate()


#: what :func:`load_recipe` reads: a preset name, a recipe YAML file, a mapping or a Recipe
RecipeSpec = str | Path | Mapping[str, Any] | Recipe


def _read_recipe(spec: RecipeSpec) -> Recipe:
    if isinstance(spec, Recipe):
        return spec.validate()
    if isinstance(spec, Mapping):
        return Recipe.from_dict(spec)
    name = spec.strip() if isinstance(spec, str) else spec
    if isinstance(name, str) and name in PRESETS:
        return get_preset(name)
    path = Path(name).expanduser()
    if isinstance(name, Path) or path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError("recipe", f"recipe file not found: {name}")
        return Recipe.from_yaml(path)
    raise ConfigError("recipe", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or a YAML file")


def load_recipe(spec: RecipeSpec, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """A validated Recipe from a preset name, a recipe YAML file, a mapping or a Recipe (returned as is,
    validated), with dotted-key ``overrides`` applied (a run config's ``recipe_overrides``).

    Every ConfigError names its field under ``recipe`` (``recipe.loss.direction_weight``), as the run
    config does, so that the message says where the value came from whoever reads the recipe.
    """
    try:
        recipe = _read_recipe(spec)
        return recipe.updated(overrides) if overrides else recipe
    except ConfigError as err:
        if err.field == "recipe" or err.field.startswith("recipe."):
            raise
        raise ConfigError(f"recipe.{err.field}", str(err).split(": ", 1)[-1]) from None
