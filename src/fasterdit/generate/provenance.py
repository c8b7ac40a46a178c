"""What identifies the weights behind a samples file: checkpoint path, SHA-256, EMA, recipe, VAE.

Why a hash and not the path: a run directory's ``latest`` moves as training goes on, and official
checkpoints are renamed and copied; a FID is only reproducible from the exact weights. Our
checkpoints record each file's SHA-256 in ``meta.json`` (verified when loaded, and kept in the
:class:`LoadedModel`: a running training may have pruned the checkpoint by the time the sidecar is
written), so it costs nothing; an official ``.pt`` is hashed once (about 1 s per GB).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fasterdit.generate.loading import LoadedModel
from fasterdit.run import checkpoint as ckpt_mod


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_file(lm: LoadedModel, ema: bool) -> Path:
    """The file the weights were read from (our EMA or raw safetensors, or the official file)."""
    assert lm.path is not None
    if lm.weights_file is not None:  # what load_trained read (ours, or a diffusers folder's transformer)
        return lm.path / lm.weights_file
    if lm.official:
        return lm.path
    ema_file = lm.path / "ema.safetensors"
    return ema_file if ema and ema_file.is_file() else lm.path / "model.safetensors"


def weights_sha256(lm: LoadedModel, ema: bool) -> str:
    """The weights' SHA-256: recorded when they were loaded, else from meta.json, else hashed."""
    path = weights_file(lm, ema)
    if lm.weights_sha256 is not None:
        return lm.weights_sha256
    if not lm.official:
        recorded = ckpt_mod.read_meta(lm.path).get("sha256", {}).get(path.name)
        if recorded:
            return str(recorded)
    return file_sha256(path)


def checkpoint_record(lm: LoadedModel, ema: bool, vae: str | None) -> dict[str, Any]:
    """The sidecar fields that say which weights, recipe and decoder produced the samples."""
    path = weights_file(lm, ema)
    return {
        "checkpoint": str(lm.path),
        "weights_file": path.name,
        "checkpoint_sha256": weights_sha256(lm, ema),
        "checkpoint_source": lm.source,
        "step": lm.step,
        "ema": bool(ema) and (lm.official or path.name == "ema.safetensors"),
        "model": lm.cfg.model.name,
        "recipe": lm.recipe.to_dict(),
        "vae": vae,
    }
