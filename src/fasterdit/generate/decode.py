"""Latent samples -> pixels: the one decoder every command and the trainer's grids and evaluation use.

Why one: the decoder's batch size is part of its arithmetic (a VAE decodes a batch of 16 and a batch of 32
to slightly different floats), so two decoders made two ways gave the same latents different images.
"""

from __future__ import annotations

import torch

from fasterdit.data.vae import latent_decoder
from fasterdit.errors import UserError
from fasterdit.generate.job import Decode
from fasterdit.run.description import DataDescription

__all__ = ["decoder_for", "vae_for"]


def vae_for(data: DataDescription, vae: str | None = None) -> str | None:
    """The VAE that decodes a latent model's samples (``vae`` overrides the run's); None for pixels."""
    if not data.is_latent:
        return None
    chosen = vae or data.vae
    if not chosen:
        raise UserError("this is a latent model and its run records no VAE: pass --vae ID_OR_PATH")
    return chosen


def decoder_for(data: DataDescription, device: torch.device, vae: str | None = None) -> Decode | None:
    """``z -> images`` for a latent model (cropped back to the embedded images' size when the
    autoencoder saw them padded, as ``mnist-ae`` does), None for a pixel model."""
    chosen = vae_for(data, vae)
    if chosen is None:
        return None
    return latent_decoder(chosen, device, crop=data.origin.resolution if data.origin is not None else None)
