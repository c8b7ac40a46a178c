"""The small KL autoencoder fasterdit ships, so the latent-diffusion path runs for real on a laptop.

It is a diffusers ``AutoencoderKL`` (the class of SD-VAE) trained on the embedded MNIST training split by
``scripts/train_autoencoder.py``: 28x28 digits are padded to 32x32 with the black background and encoded
to 8x8x4 latents (4x downsampling). Everything downstream treats it exactly like
``stabilityai/sd-vae-ft-ema``: it is named by a short built-in name (``mnist-ae``) or by its folder, and
its latents keep the raw std the KL weight gave them, with ``scaling_factor`` = 1 / that std in its
config (as LDM set SD's 0.18215).

This module holds what the loader, ``fasterdit prepare`` and the evaluation need to know about it: its
architecture, its input size, its built-in name and the latent statistics.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fasterdit.data.stats import RunningStats

#: diffusers ``AutoencoderKL`` arguments of the shipped MNIST autoencoder (~240k parameters).
MNIST_AE_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}


#: the second shipped autoencoder (``mnist-ae16``): the same f4 geometry with 16 latent channels (as the
#: VAEs of SD3 and FLUX have), trained with a much weaker KL weight, so that its raw latent std sits far
#: from 1 (the SNR validation's data set (b)); ~250k parameters.
MNIST_AE16_CONFIG: dict[str, Any] = {**MNIST_AE_CONFIG, "latent_channels": 16}

#: the shipped autoencoders' input side: 28x28 digits centred on a 32x32 background (32 = 4 x 8 latents)
MNIST_PADDED = 32

#: short built-in names -> folders inside the installed package
BUILTIN = {"mnist-ae": "autoencoder_mnist", "mnist-ae16": "autoencoder_mnist16"}

#: the diffusers ``AutoencoderKL`` arguments of each built-in autoencoder
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {"mnist-ae": MNIST_AE_CONFIG, "mnist-ae16": MNIST_AE16_CONFIG}


def builtin_path(name: str) -> Path | None:
    """The folder of a built-in autoencoder, or None when ``name`` is not one."""
    if name not in BUILTIN:
        return None
    return Path(str(resources.files("fasterdit").joinpath("assets", BUILTIN[name])))


@torch.no_grad()
def latent_statistics(vae, images: torch.Tensor, batch_size: int = 500) -> dict[str, Any]:
    """Raw (unscaled) latent statistics of ``images`` under ``vae``, as ``fasterdit prepare`` measures them:
    the latent a model trains on is a posterior draw ``z = mu + sigma * eps``, so per channel
    ``Var[z] = Var[mu] + E[sigma^2]`` (law of total variance), pooled over all channels the same way.
    ``scaling_factor`` is 1 / the pooled std."""
    mu_stats, var_stats = RunningStats(), RunningStats()
    for i in range(0, len(images), batch_size):
        dist = vae.encode(images[i : i + batch_size]).latent_dist
        mu_stats.update(dist.mean.double())
        var_stats.update(dist.var.double())
    channel_var = mu_stats.var + var_stats.mean
    pooled_var = mu_stats.pooled_var + float(var_stats.mean.mean())
    std = pooled_var**0.5
    return {
        "std": std,
        "channel_std": channel_var.sqrt().tolist(),
        "channel_mean": mu_stats.mean.tolist(),
        "posterior_std": float(var_stats.mean.mean().sqrt()),
        "scaling_factor": 1.0 / std,
        "count": len(images),
    }


@torch.no_grad()
def set_latent_gauge(model, c: float) -> None:
    """Multiply the latents of ``model`` by ``c`` without changing the autoencoder: the posterior mean is
    scaled by c and its log-variance moved by 2·ln c (``quant_conv``'s mean and log-variance rows), and
    the decoder divides by c first (``post_quant_conv``'s input columns). The scale of a KL autoencoder's
    latents is such a free gauge; only the small KL term pins it, and SD-VAE's std 5.5 is where its long
    training left it. A 15-minute CPU training leaves it near 1.6, so ``mnist-ae16`` is put at SD-VAE's std
    exactly this way (``scripts/train_autoencoder.py``): the same reconstructions (tested), the statistics
    a user of SD-VAE faces. Exact up to float rounding, for any c > 0."""
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"the latent gauge needs a finite c > 0, got {c}")
    ch = model.config.latent_channels
    model.quant_conv.weight[:ch] *= c
    model.quant_conv.bias[:ch] *= c
    model.quant_conv.bias[ch:] += 2.0 * math.log(c)
    model.post_quant_conv.weight /= c
