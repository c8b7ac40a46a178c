"""Load a trained model for sampling or evaluation: from a run dir, one of our checkpoints, an
official DiT or SiT ``.pt``, or a diffusers DiT pipeline folder.

Why one entry point: ``fasterdit sample``, ``fasterdit eval``, the benchmarks and users' notebooks all
need "the model, the recipe that trained it, and what its data looked like", whatever produced the file.
Our checkpoints carry all three (``meta.json``); official DiT checkpoints are the ``dit`` recipe on
SD-VAE latents by construction (DDPM-linear, ε, learned variance; latents already × 0.18215), official
SiT checkpoints the ``sit`` recipe in SiT's reversed time. Each comes with its code's sampling defaults.
A diffusers folder (``facebook/DiT-XL-2-256``'s layout: ``model_index.json``, ``transformer/``, ``vae/``)
is the official DiT too, decoded by its own ``vae/``; one written by ``fasterdit export`` says in
``fasterdit.json`` which recipe and data it was trained with.

Why in ``generate/``, below ``train/`` and ``eval/``: it reads only the run format (:mod:`fasterdit.run`),
so sampling and evaluating never import the trainer.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fasterdit.diffusion.recipe import Recipe, get_preset
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.errors import DataError, UserError
from fasterdit.models import create_model
from fasterdit.models.diffusers_dit import from_diffusers
from fasterdit.models.dit import CONFIGS, DiT
from fasterdit.models.official import load_official
from fasterdit.run import checkpoint as ckpt_mod
from fasterdit.run.config import RunConfig, config_from_dict
from fasterdit.run.description import DataDescription
from fasterdit.runtime.distributed import DistInfo, broadcast_object

__all__ = ["DataDescription", "FamilyDefaults", "LoadedModel", "load_model", "load_trained"]

#: the VAE the official DiT sample.py decodes with by default
OFFICIAL_DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
#: what ``fasterdit export --format diffusers`` records in the folder it writes (read back here)
EXPORT_META = "fasterdit.json"
#: a diffusers transformer's weights, in the order diffusers itself prefers them
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: what reading a damaged weights file raises (safetensors' header check, a truncated or foreign pickle)
_READ_ERRORS = (SafetensorError, pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError)


@dataclass(frozen=True)
class FamilyDefaults:
    """How the official code that wrote a checkpoint samples it: the last layer of the defaults
    (:mod:`fasterdit.generate.defaults`) for an official DiT or SiT ``.pt``.

    Their repository's ``sample.py`` settings, guidance of the first 3 channels included (their
    ``forward_with_cfg`` guides ``[:, :3]``). fasterdit's own runs are sampled by the run's ``sample`` and
    ``eval`` sections instead, and guide every channel: that is classifier-free guidance as defined
    (the official code's own comment calls all channels "the standard approach" and keeps 3 only to
    reproduce its earlier numbers), and for 4-channel latents guiding 3 leaves one latent channel
    unguided for no reason; ``--guide-channels 3`` is there for comparisons with the references.
    """

    sampler: str
    steps: int
    cfg_scale: float
    guide_channels: int | None = None  # None: every prediction channel
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)


#: DiT's sample.py: 250 DDPM steps (learned variance), CFG 4, guidance on 3 channels
DIT_SAMPLE = FamilyDefaults("ddpm", 250, 4.0, 3)
#: SiT's sample.py (ODE mode): dopri5 with atol 1e-6, rtol 1e-3, CFG 4, guidance on 3 channels
SIT_SAMPLE = FamilyDefaults("dopri5", 250, 4.0, 3, {"atol": 1e-6, "rtol": 1e-3})


@dataclass
class LoadedModel:
    """A trained model ready to sample: the network, the recipe that trained it, its run config, what its
    data looked like, and how the code that wrote it samples it."""

    model: DiT
    recipe: Recipe
    cfg: RunConfig
    family: FamilyDefaults | None  # how an official checkpoint's own code samples it; None for our runs
    data: DataDescription
    step: int | None  # None for official checkpoints
    source: str  # "fasterdit", "official-dit", "official-sit" or "diffusers"
    path: Path
    #: the weights file read from one of our checkpoints ("ema.safetensors" or "model.safetensors") and
    #: the SHA-256 its meta.json records, kept because a running training may prune the checkpoint
    #: before a sidecar is written; None for official checkpoints and the trainer's own models
    weights_file: str | None = None
    weights_sha256: str | None = None

    @property
    def official(self) -> bool:
        return self.source != "fasterdit"


def _is_ours(path: Path) -> bool:
    if path.is_dir():
        return True  # run dir / checkpoints dir / checkpoint dir (find_checkpoint decides)
    return path.is_file() and (path.parent / "meta.json").is_file()


def load_trained(
    path: str | Path, ema: bool = True, device: str | torch.device = "cpu", family: str | None = None
) -> LoadedModel:
    """Everything needed to sample a checkpoint; see :func:`load_model`. ``family`` (``dit`` or
    ``sit``) says which official code wrote a ``.pt`` when neither its name nor its ``args`` say."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such run directory, checkpoint or file")
    if _is_diffusers(path):
        lm = _load_diffusers(path)
        lm.model = lm.model.float().to(device).eval()
        return lm
    if _is_ours(path):
        return _load_ours(path, ema, device)
    return _load_official(path, ema, device, family)


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"):
    """``(model, recipe, cfg)`` from a run dir, a checkpoint dir/file of ours, or an official DiT ``.pt``.

    ``ema=True`` loads the EMA weights (what the papers sample from); the model is float32 in eval mode.
    """
    lm = load_trained(path, ema=ema, device=device)
    return lm.model, lm.recipe, lm.cfg


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: what a meta.json that does not describe its weights raises when read (a model name of another size,
#: a config or recipe value out of range, an unknown model argument): damage, not the user's mistake
_META_ERRORS = (UserError, KeyError, TypeError, ValueError, RuntimeError)


def _model_from(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> DiT:
    """The network meta.json describes, holding ``state`` (strict: every weight, every shape)."""
    m = dict(meta["model"])
    name = m.pop("name")
    m["grad_checkpointing"] = False
    with torch.device("meta"):
        model = create_model(name, **m)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _read_ours(ckpt: Path, ema: bool) -> LoadedModel:
    """One of our (verified) checkpoints as a model on the CPU; CheckpointError when its files cannot be
    read or its meta.json does not describe its weights, so that a run falls back to the previous one."""
    meta = ckpt_mod.read_meta(ckpt)
    which = "ema" if ema and "ema.safetensors" in meta["files"] else "model"
    state = ckpt_mod.load_tensors(ckpt, which, device="cpu")
    try:
        cfg = config_from_dict(meta["config"])
        recipe = Recipe.from_dict(meta["recipe"])
        model = _model_from(meta, state)
        data = DataDescription.from_dict(meta.get("data"), str(ckpt))
    except _META_ERRORS as err:
        why = " ".join(str(err).split())[:300] or type(err).__name__  # load_state_dict's is many lines
        raise ckpt_mod.CheckpointError(
            f"{ckpt / 'meta.json'}: does not describe the weights in {which}.safetensors ({why})"
        ) from err
    file = f"{which}.safetensors"
    digest = meta.get("sha256", {}).get(file)
    return LoadedModel(model, recipe, cfg, None, data, meta["step"], "fasterdit", ckpt, file, digest)


def _load_ours(path: Path, ema: bool, device) -> LoadedModel:
    # checksums verified; a damaged newest checkpoint of a run dir falls back to the previous one, and one
    # pruned while read (a running training) is looked up again
    _ckpt, lm = ckpt_mod.open_checkpoint(path, lambda c: _read_ours(c, ema), _warn)
    lm.model = lm.model.float().to(device).eval()
    return lm


def _load_official(path: Path, ema: bool, device, family: str | None) -> LoadedModel:
    """An official DiT or SiT checkpoint as the recipe its code trained and samples it with.

    DiT: the ``dit`` preset (DDPM-linear, ε, learned variance, step index 0..999). SiT: the ``sit``
    preset (Linear path, velocity) with SiT's time ``s = 1 − t`` fed unscaled (``time_input:
    reversed``), whose velocity output the recipe negates. Both are trained on SD-VAE latents
    already multiplied by 0.18215, so no data scaling applies.
    """
    loaded = load_official(path, device=device, prefer_ema=ema, family=family)
    model = loaded.model
    if loaded.family == "sit":
        recipe = replace(get_preset("sit"), name="sit-official", time_input="reversed").validate()
        family = SIT_SAMPLE
    else:
        recipe, family = get_preset("dit"), DIT_SAMPLE
    latent = model.in_channels == 4
    if model.in_channels < 3:
        family = replace(family, guide_channels=None)
    dropout = float(model.y_embedder.dropout_prob) if model.y_embedder is not None else 0.0
    cfg = config_from_dict(
        {
            "recipe": "dit" if loaded.family == "dit" else "sit",
            "model": {
                "name": loaded.config_name or "DiT-XL/2",
                "learn_sigma": model.learn_sigma,
                "class_dropout_prob": dropout,
            },
            "data": {"source": str(path)},
        }
    )
    h, _w = model.input_size
    data = DataDescription(
        source=str(path),
        channels=int(model.in_channels),
        resolution=int(h),
        num_classes=int(model.num_classes),
        is_latent=latent,
        vae=OFFICIAL_DEFAULT_VAE if latent else None,
        origin=None,
    )
    return LoadedModel(model, recipe, cfg, family, data, None, f"official-{loaded.family}", path)


def _is_diffusers(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and (path / "transformer").is_dir()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _diffusers_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The transformer's state dict and the file it came from (safetensors, else a ``.bin`` read with
    ``weights_only=True``)."""
    for name in _DIFFUSERS_WEIGHTS:
        file = folder / name
        if not file.is_file():
            continue
        try:
            if file.suffix == ".safetensors":
                return load_file(str(file), device="cpu"), file
            state = torch.load(file, map_location="cpu", weights_only=True)
        except _READ_ERRORS as err:
            raise DataError(f"{file}: not readable weights ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict):
            raise DataError(f"{file}: holds a {type(state).__name__}, not a state dict")
        return state, file
    raise DataError(f"{folder}: no {' or '.join(_DIFFUSERS_WEIGHTS)} (sharded weights are not read)")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_diffusers(path: Path) -> LoadedModel:
    """A diffusers DiT pipeline folder as a model on the CPU.

    The transformer's per-block copies of the timestep and label embedders must be equal (DataError
    naming the first that is not) and become the DiT's one embedder. Without ``fasterdit.json`` the
    folder is the official DiT (``facebook/DiT-XL-2-256``): the ``dit`` recipe, sampled as DiT's
    ``sample.py`` does. With it, the recipe, run config and data of the run it was exported from, with
    the data scaling left out: the export folded it into ``vae/`` (or its ``scaling_factor``), so the
    folder's own VAE decodes the model's diffusion space directly. Either way ``vae/`` decodes.
    """
    config = _read_json(path / "transformer" / "config.json")
    state, file = _diffusers_weights(path / "transformer")
    meta_file = path / EXPORT_META
    meta = _read_json(meta_file) if meta_file.is_file() else None
    null = None if meta is None else bool(meta.get("has_null_class", True))
    model = from_diffusers(config, state, str(path / "transformer"), has_null_class=null).model
    digest = _sha256(file)
    weights = str(file.relative_to(path))
    if meta is not None:
        try:
            recipe = replace(Recipe.from_dict(meta["recipe"]), scaling=DataScaling()).validate()
            cfg = config_from_dict(meta["config"])
            data = replace(DataDescription.from_dict(meta["data"], str(meta_file)), vae=str(path))
            step = meta.get("step")
        except (KeyError, UserError) as err:
            raise DataError(f"{meta_file}: not what fasterdit export writes ({err})") from None
        return LoadedModel(model, recipe, cfg, None, data, step, "diffusers", path, weights, digest)
    arch = (len(model.blocks), model.hidden_size, model.patch_size)
    name = next((n for n, c in CONFIGS.items() if (c.depth, c.hidden_size, c.patch_size) == arch), None)
    model.config_name = name
    family = DIT_SAMPLE if model.in_channels >= 3 else replace(DIT_SAMPLE, guide_channels=None)
    dropout = float(model.y_embedder.dropout_prob) if model.y_embedder is not None else 0.0
    cfg = config_from_dict(
        {
            "recipe": "dit",
            "model": {
                "name": name or "DiT-XL/2",
                "learn_sigma": model.learn_sigma,
                "class_dropout_prob": dropout,
            },
            "data": {"source": str(path)},
        }
    )
    h, _w = model.input_size
    data = DataDescription(
        source=str(path), channels=int(model.in_channels), resolution=int(h),
        num_classes=int(model.num_classes), is_latent=True, vae=str(path), origin=None,
    )  # fmt: skip
    return LoadedModel(model, get_preset("dit"), cfg, family, data, None, "diffusers", path, weights, digest)


def load_on_every_rank(
    path: str | Path, dist: DistInfo, ema: bool = True, family: str | None = None
) -> LoadedModel:
    """:func:`load_trained` for a job of several processes: rank 0 picks the checkpoint (the newest intact
    one of a run dir) and every rank loads that same one, on its own device.

    Why: a run that is still training writes and prunes checkpoints; ranks that each looked the run up on
    their own could load different steps and sample a mix of two models. A checkpoint pruned between
    rank 0's pick and another rank's read is an error naming it (rerun), never a silent mix.
    """
    if not dist.distributed:
        return load_trained(path, ema=ema, device=dist.device, family=family)
    picked: LoadedModel | None = None
    failure: UserError | DataError | None = None
    message: tuple[str, str, str | None] | None = None  # rank 0's (outcome, checkpoint or error, SHA-256)
    if dist.is_main:
        try:
            picked = load_trained(path, ema=ema, device=dist.device, family=family)
            message = ("ok", str(picked.path), picked.weights_sha256)
        except (UserError, DataError) as err:  # every rank must leave the broadcast, with the same error
            failure, message = err, ("error", str(err), None)
    outcome, where, sha = broadcast_object(message)
    if failure is not None:
        raise failure
    if outcome == "error":
        raise UserError(where)
    if picked is not None:
        return picked
    lm = load_trained(where, ema=ema, device=dist.device, family=family)
    if lm.weights_sha256 != sha:
        raise UserError(f"{where} changed while the ranks loaded it (training pruned it?); rerun")
    return lm
