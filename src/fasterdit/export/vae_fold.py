"""The run's VAE with the recipe's data scaling folded in, so that a diffusers pipeline decodes the
model's samples with nothing but ``latents / scaling_factor``.

Why folding: the model generates in *diffusion space*, ``x = A·raw + B`` per latent channel, where
``raw`` is the VAE's own latent, ``A = scaling_factor·scale_c`` and ``B = shift_c − shift_factor·A``
(the VAE's ``(raw − shift_factor)·scaling_factor`` followed by the recipe's
:class:`~fasterdit.diffusion.scaling.DataScaling` affine ``x·scale_c + shift_c``). A scalar ``A`` with no
offset is what a ``scaling_factor`` means (DiT's 0.18215), and the VAE is exported untouched with
``scaling_factor = A``. The ``fasterdit`` recipe's per-channel standardisation is not a scalar: there
the affine map goes into the VAE's 1x1 convolutions, exactly (it is linear), and ``scaling_factor``
becomes 1:

* decoder: ``post_quant_conv`` reads ``raw = (x − B)/A``: ``W' = W·diag(1/A)``, ``b' = b − W·(B/A)``;
* encoder: ``quant_conv``'s mean rows give ``A·mean + B`` and its log-variance rows ``logvar + 2·ln A``
  (a Gaussian ``N(μ, σ²)`` mapped by ``A·z + B`` is ``N(A·μ + B, A²·σ²)``), so
  ``vae.encode(img).latent_dist.sample()`` draws diffusion-space latents, the model's training input.
  diffusers clamps the log-variance to [−30, 20] after ``quant_conv``; the shift by ``2·ln A`` moves that
  window by as much (``|2·ln A| < 1`` for the shipped autoencoder), which no posterior near it uses.

A VAE without those convolutions (``use_quant_conv=False``) cannot be folded: ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fasterdit.diffusion.scaling import DataScaling
from fasterdit.errors import ConfigError

__all__ = ["LatentAffine", "fold_into_vae", "latent_affine"]


@dataclass(frozen=True)
class LatentAffine:
    """``diffusion-space latent = A·raw + B``, per channel (float64)."""

    a: Tensor
    b: Tensor

    @property
    def is_scale(self) -> bool:
        """A single factor and no offset: what a diffusers ``scaling_factor`` can say alone."""
        return bool((self.b == 0).all()) and bool((self.a == self.a[0]).all())

    def to_dict(self) -> dict[str, list[float]]:
        return {"a": [float(v) for v in self.a], "b": [float(v) for v in self.b]}


def latent_affine(
    scaling: DataScaling, scaling_factor: float, shift_factor: float, channels: int
) -> LatentAffine:
    """The map from the VAE's raw latent to the model's diffusion space (see the module docstring)."""
    probe = torch.zeros(1, channels, 1, 1, dtype=torch.float64)
    shift = scaling.forward(probe).reshape(-1)
    scale = scaling.forward(probe + 1.0).reshape(-1) - shift
    a = scaling_factor * scale
    b = shift - shift_factor * a
    return LatentAffine(a.expand(channels).clone(), b.expand(channels).clone())


@torch.no_grad()
def fold_into_vae(vae: torch.nn.Module, affine: LatentAffine) -> None:
    """Rewrite ``vae``'s ``quant_conv``/``post_quant_conv`` in place so that its raw latent is the
    diffusion space (see the module docstring); the caller sets ``scaling_factor = 1``."""
    quant, post = vae.quant_conv, vae.post_quant_conv
    if quant is None or post is None:
        raise ConfigError(
            "vae", "this VAE has no quant_conv/post_quant_conv to fold the recipe's per-channel scaling into"
        )
    c = affine.a.numel()
    a, b = affine.a, affine.b
    w = post.weight.double()  # (C_out, C, 1, 1)
    post.bias.copy_((post.bias.double() - w[:, :, 0, 0] @ (b / a)).to(post.bias.dtype))
    post.weight.copy_((w / a.view(1, c, 1, 1)).to(post.weight.dtype))
    wq, bq = quant.weight.double(), quant.bias.double()  # (2C, C, 1, 1): [mean | logvar]
    scale_rows = torch.cat([a, torch.ones_like(a)])
    bias = torch.cat([a * bq[:c] + b, bq[c:] + 2.0 * torch.log(a)])
    quant.weight.copy_((wq * scale_rows.view(2 * c, 1, 1, 1)).to(quant.weight.dtype))
    quant.bias.copy_(bias.to(quant.bias.dtype))
