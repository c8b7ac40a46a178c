"""Classifier-free guidance's mix, written once for the two places that guide.

``DiT.forward_with_cfg`` (the official calling convention, kept for users of the official code) and the
samplers' :func:`fasterdit.diffusion.sampling.guided_model_fn` both evaluate the model on a doubled batch
(conditional half, then the null label) and mix the two halves here. Why a top-level module: ``models/``
and ``diffusion/`` do not import each other, and both need exactly the same formula.
"""

from __future__ import annotations

from torch import Tensor

from fasterdit.errors import ConfigError

__all__ = ["cfg_mix", "guided_channels"]


def guided_channels(guide_channels: int | None, prediction_channels: int, out_channels: int) -> int:
    """How many leading channels guidance mixes: every prediction channel by default (not the learned
    variance), or ``guide_channels`` (3 reproduces the official samplers); checked against the output."""
    g = prediction_channels if guide_channels is None else int(guide_channels)
    if not 0 < g <= out_channels:
        msg = f"must be in 1..{out_channels} (the model's output channels), got {guide_channels}"
        raise ConfigError("guide_channels", msg)
    return g


def cfg_mix(cond: Tensor, uncond: Tensor, scale: float | Tensor, channels: int) -> Tensor:
    """``uncond + scale·(cond − uncond)`` on the first ``channels`` channels (the caller decides what the
    other channels are)."""
    return uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
