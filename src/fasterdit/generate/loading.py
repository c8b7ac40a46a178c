"""Load a trained model for sampling or evaluation: from a run dir, one of our checkpoints, or an
official DiT or SiT ``.pt``.

Why one entry point: ``fasterdit sample``, ``fasterdit eval``, the benchmarks and users' notebooks all
need "the model, the recipe that trained it, and what its data looked like", whatever produced the file.
Our checkpoints carry all three (``meta.json``); official DiT checkpoints are the ``dit`` recipe on
SD-VAE latents by construction (DDPM-linear, ε, learned variance; latents already × 0.18215), official
SiT checkpoints the ``sit`` recipe in SiT's reversed time. Each comes with its code's sampling defaults.

Why in ``generate/``, below ``train/`` and ``eval/``: it reads only the run format (:mod:`fasterdit.run`),
so sampling and evaluating never import the trainer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fasterdit.diffusion.recipe import Recipe, get_preset
from fasterdit.errors import DataError, UserError
from fasterdit.models import create_model
from fasterdit.models.dit import DiT
from fasterdit.models.official import load_official
from fasterdit.run import checkpoint as ckpt_mod
from fasterdit.run.config import RunConfig, config_from_dict
from fasterdit.run.description import DataDescription
from fasterdit.runtime.distributed import DistInfo, broadcast_object

__all__ = ["DataDescription", "FamilyDefaults", "LoadedModel", "load_model", "load_trained"]

#: the VAE the official DiT sample.py decodes with by default
OFFICIAL_DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"


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
    source: str  # "fasterdit", "official-dit" or "official-sit"
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
