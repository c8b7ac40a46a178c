"""REPA's representation-alignment term: the projector, the captured tokens and the loss.

REPA (Yu et al. 2025) pulls the DiT's hidden tokens after block k towards the patch features of a frozen
self-supervised encoder on the clean image. Three pieces, kept apart from the DiT so that the DiT keeps
exactly the official modules and parameter names (a checkpoint's model and EMA weights load into the
official code unchanged):

* :class:`Projector`: REPA's ``build_mlp``, Linear(hidden, w) - SiLU - Linear(w, w) - SiLU -
  Linear(w, encoder dim), applied to every token. It lives in the training state (optimizer, checkpoint's
  ``state.pt``), never in the sampling model.
* :class:`TokenCapture`: a forward hook on ``model.blocks[k - 1]`` that keeps the block's output, so the
  DiT's forward is the official one.
* :func:`align_loss`: per sample, the mean over tokens of ``-cos(projected token, feature)`` with both
  sides L2-normalised as ``F.normalize`` does (REPA's ``loss.py``); REPA's scalar ``proj_loss`` is its mean
  over the batch (one encoder; with several REPA also averages over encoders).

The features must be on the DiT's token grid (T tokens, row-major, as the DiT's patch embedding orders
them): REPA resizes the encoder's input so that its patch grid is the DiT's (224 px for DINOv2-B/14 on a
256 px image, 16 x 16 tokens); :mod:`fasterdit.data.encoders` does the same for any grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterdit.errors import ConfigError
from fasterdit.models.dit import DiT

__all__ = ["Projector", "TokenCapture", "align_loss", "check_depth"]


class Projector(nn.Module):
    """REPA's token projector: hidden -> width -> width -> encoder dim, SiLU between (``mlp.0/2/4``)."""

    def __init__(self, hidden_size: int, encoder_dim: int, width: int = 2048):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, encoder_dim),
        )
        for layer in self.mlp:  # REPA's SiT.initialize_weights reaches its projectors: Xavier, zero bias
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, T, hidden) -> (N, T, encoder dim)."""
        return self.mlp(tokens)


def align_loss(projected: Tensor, features: Tensor) -> Tensor:
    """Per-sample REPA loss (N,): the mean over tokens of ``-cos(projected, feature)``, in [-1, 1].

    ``projected`` and ``features`` are (N, T, D); the features are a target (no gradient reaches them).
    Computed in float32 at least (the cosine of bf16 tokens loses the small differences that train).
    """
    if projected.shape != features.shape:
        raise ConfigError(
            "align.encoder",
            f"the encoder's features have shape {tuple(features.shape[1:])} per image, the projected tokens "
            f"{tuple(projected.shape[1:])}: the encoder must give one feature per DiT token",
        )
    dtype = torch.promote_types(projected.dtype, torch.float32)
    p = F.normalize(projected.to(dtype), dim=-1)
    z = F.normalize(features.detach().to(dtype), dim=-1)
    return -(p * z).sum(dim=-1).mean(dim=1)


def check_depth(model: DiT, depth: int) -> None:
    """``align.depth`` must name one of the DiT's blocks (1-based)."""
    n = len(model.blocks)
    if not 1 <= depth <= n:
        raise ConfigError("recipe.align.depth", f"must be in 1..{n} (the DiT's blocks), got {depth}")


class TokenCapture:
    """Keeps the output of block ``depth`` (1-based) of a DiT while :meth:`armed`; otherwise a no-op.

    Why a persistent hook, armed per call, rather than one registered per forward: registering hooks
    inside a compiled function would break its graph; a hook that writes one attribute traces cleanly.
    """

    def __init__(self, model: DiT, depth: int):
        check_depth(model, depth)
        self.depth = depth
        self.tokens: Tensor | None = None
        self._armed = False
        self._handle = model.blocks[depth - 1].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self._armed:
            self.tokens = output

    @contextmanager
    def armed(self) -> Iterator[TokenCapture]:
        """Capture the block's output of the forward passes inside the ``with``."""
        self._armed, self.tokens = True, None
        try:
            yield self
        finally:
            self._armed = False

    def take(self) -> Tensor:
        """The captured tokens (N, T, hidden), released from this object."""
        tokens, self.tokens = self.tokens, None
        if tokens is None:
            raise RuntimeError(f"block {self.depth} did not run inside TokenCapture.armed()")
        return tokens

    def remove(self) -> None:
        self._handle.remove()
