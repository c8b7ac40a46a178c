"""Load a trained model for sampling or evaluation: from a run dir, one of our checkpoints, or an
official DiT ``.pt``.

Why one entry point: ``fasterdit sample``, ``fasterdit eval``, the benchmarks and users' notebooks all
need "the model, the recipe that trained it, and what its data looked like", whatever produced the file.
Our checkpoints carry all three (``meta.json``); official DiT checkpoints are the ``dit`` recipe on
SD-VAE latents by construction (DDPM-linear, ε, learned variance; latents already × 0.18215).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fasterdit.errors import DataError
from fasterdit.train import checkpoint as ckpt_mod
from fasterdit.train.config import RunConfig, config_from_dict

__all__ = ["LoadedModel", "load_model", "load_trained"]

#: the VAE the official DiT sample.py decodes with by default
OFFICIAL_DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    recipe: Any
    cfg: RunConfig
    data: dict[str, Any] = field(default_factory=dict)  # channels, resolution, num_classes, is_latent, vae...
    step: int | None = None
    source: str = "fasterdit"  # "fasterdit" or "official"
    path: Path | None = None


def _is_ours(path: Path) -> bool:
    if path.is_dir():
        return True  # run dir / checkpoints dir / checkpoint dir (find_checkpoint decides)
    return path.is_file() and (path.parent / "meta.json").is_file()


def load_trained(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """Everything needed to sample a checkpoint; see :func:`load_model`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such run directory, checkpoint or file")
    if _is_ours(path):
        return _load_ours(path, ema, device)
    return _load_official(path, ema, device)


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"):
    """``(model, recipe, cfg)`` from a run dir, a checkpoint dir/file of ours, or an official DiT ``.pt``.

    ``ema=True`` loads the EMA weights (what the papers sample from); the model is float32 in eval mode.
    """
    lm = load_trained(path, ema=ema, device=device)
    return lm.model, lm.recipe, lm.cfg


def _load_ours(path: Path, ema: bool, device) -> LoadedModel:
    from fasterdit.diffusion.recipe import Recipe
    from fasterdit.models import create_model

    ckpt = ckpt_mod.find_checkpoint(path)
    meta = ckpt_mod.read_meta(ckpt)
    cfg = config_from_dict(meta["config"])
    recipe = Recipe.from_dict(meta["recipe"])
    m = dict(meta["model"])
    name = m.pop("name")
    m["grad_checkpointing"] = False
    with torch.device("meta"):
        model = create_model(name, **m)
    which = "ema" if ema and (ckpt / "ema.safetensors").is_file() else "model"
    state = ckpt_mod.load_tensors(ckpt, which, device="cpu")
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float().to(device).eval()
    return LoadedModel(model, recipe, cfg, dict(meta.get("data", {})), int(meta["step"]), "fasterdit", ckpt)


def _load_official(path: Path, ema: bool, device) -> LoadedModel:
    from fasterdit.diffusion.recipe import get_preset
    from fasterdit.models import load_official_checkpoint

    model = load_official_checkpoint(path, device=device, prefer_ema=ema)
    recipe = get_preset("dit")
    name = getattr(model, "config_name", None) or "DiT-XL/2"
    latent = model.in_channels == 4
    cfg = config_from_dict(
        {
            "recipe": "dit",
            "model": {
                "name": name,
                "learn_sigma": model.learn_sigma,
                "class_dropout_prob": float(getattr(model.y_embedder, "dropout_prob", 0.0) or 0.0)
                if model.y_embedder is not None
                else 0.0,
            },
            "data": {"source": str(path)},
        }
    )
    h, _w = model.input_size
    data = dict(
        source=str(path),
        channels=model.in_channels,
        resolution=h,
        num_classes=model.num_classes,
        is_latent=latent,
        vae=OFFICIAL_DEFAULT_VAE if latent else None,
    )
    return LoadedModel(model, recipe, cfg, data, None, "official", path)
