"""The training side of REPA's alignment term: where a step's encoder features come from, and the projector.

Two feature sources (docs/repa.md, "Where the features come from"):

* **stored**: a set prepared with ``fasterdit prepare --align-encoder NAME`` holds float16 features beside
  each item (on the DiT's token grid), read with the batch; the only choice for latents, whose clean image
  is not at hand (decoding every batch with the VAE would cost more than the DiT step), and the choice
  for ImageNet, where DINOv2 would cost ~10% of a DiT-XL/2 step;
* **encoder** (on the fly): pixel data (the embedded digits, prepared pixel sets) runs the frozen encoder
  on the batch's clean images, under no_grad, once per step.

The projector is built right after the DiT under the same seeded RNG (so the DiT's initialisation does not
change when alignment is on), trained by the same AdamW, checkpointed in ``state.pt`` (never with the model
or EMA weights) and, under DDP, wrapped in its own DDP so its gradients are all-reduced with the DiT's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fasterdit.data.encoders import FeatureEncoder, grid_tokens, load_encoder
from fasterdit.data.prepared import PreparedDataset
from fasterdit.data.source import BatchSource
from fasterdit.diffusion.align import Projector, TokenCapture, check_depth
from fasterdit.diffusion.losses import AlignTerm
from fasterdit.diffusion.recipe import Recipe
from fasterdit.errors import ConfigError
from fasterdit.models.dit import DiT

__all__ = ["AlignParts", "build_alignment", "check_alignment", "stored_features"]


def stored_features(source: BatchSource) -> dict[str, Any] | None:
    """The manifest's ``align_features`` ({"encoder", "grid", "dim"}) of a prepared set, else None."""
    return source.align_features if isinstance(source, PreparedDataset) else None


def check_alignment(recipe: Recipe, source: BatchSource, model: DiT) -> None:
    """Before any work: the depth names a block, and the features can be had (stored for this encoder and
    grid, or pixel data for the encoder to run on)."""
    if not recipe.uses_align:
        return
    a = recipe.align
    check_depth(model, a.depth)
    stored = stored_features(source)
    if stored is not None:
        if stored["encoder"] != a.encoder:
            raise ConfigError(
                "recipe.align.encoder",
                f"the prepared set stores features of {stored['encoder']!r}, the recipe asks for "
                f"{a.encoder!r}",
            )
        grid = (int(stored["grid"]),) * 2
        if grid != tuple(model.grid_size):
            raise ConfigError(
                "recipe.align.encoder",
                f"the stored features are on a {grid[0]}x{grid[1]} grid, the DiT has {model.grid_size[0]}x"
                f"{model.grid_size[1]} tokens; prepare again with --align-grid {model.grid_size[0]}",
            )
    elif source.is_latent:
        raise ConfigError(
            "recipe.align.encoder",
            "latent data needs the features stored at prepare time (its clean images are not at hand): "
            f"fasterdit prepare ... --align-encoder {a.encoder}",
        )


@dataclass(frozen=True)
class AlignParts:
    """The alignment term's pieces in a run."""

    projector: Projector  # the raw projector (what is checkpointed)
    term: AlignTerm  # the hook on block k and the projector the loss calls (its DDP wrapper under DDP)
    encoder: FeatureEncoder | None  # on-the-fly mode; None when the data stores the features
    grid: tuple[int, int]  # the DiT's token grid
    ddp: DDP | None

    def features(self, x: torch.Tensor, stored: torch.Tensor | None) -> torch.Tensor:
        """The batch's target features as tokens (N, T, D): the stored grid, or the encoder on ``x``."""
        if stored is not None:
            return grid_tokens(stored)
        if self.encoder is None:
            raise ConfigError("recipe.align.encoder", "the batch has no stored features and no encoder runs")
        return grid_tokens(self.encoder(x, self.grid))


def build_alignment(
    recipe: Recipe, source: BatchSource, model: DiT, device: torch.device, distributed: bool
) -> AlignParts | None:
    """The projector (initialised from the global RNG, seeded by the caller), the hook and, for pixel data
    without stored features, the encoder; None when no stage of the recipe aligns."""
    if not recipe.uses_align:
        return None
    check_alignment(recipe, source, model)
    a = recipe.align
    stored = stored_features(source)
    encoder = None
    if stored is None:
        encoder = load_encoder(a.encoder, device)
        dim = encoder.dim
    else:
        dim = int(stored["dim"])
    projector = Projector(model.hidden_size, dim, a.projector_dim).to(device)
    ddp = None
    if distributed:
        ddp = DDP(
            projector, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    term = AlignTerm(TokenCapture(model, a.depth), ddp if ddp is not None else projector)
    return AlignParts(projector, term, encoder, tuple(model.grid_size), ddp)
