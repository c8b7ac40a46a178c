"""The one interface of REPA's feature encoders: clean images in, a patch-feature grid on the DiT's grid out.

Why one interface: the trainer (on-the-fly mode, small data) and ``fasterdit prepare`` (features stored in
the shards, ImageNet) must compute the same features, and DINOv2 and the shipped MNIST encoder differ only
in how an image is made ready for them. Every encoder takes images as the trainer and ``prepare`` hold
them, ``(N, C, H, W)`` in [-1, 1] with 1 or 3 channels, and returns ``(N, D, gh, gw)`` float32.

REPA's rule for the token grid: the encoder's *input* is resized (bicubic, after the encoder's own
normalisation) so that its patch grid is the DiT's token grid: 224 px for DINOv2-B/14 and a 256 px image
(16 x 16 tokens of DiT-XL/2 on 32 x 32 latents); in general ``grid x patch`` pixels per side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterdit.errors import ConfigError

__all__ = ["FeatureEncoder", "grid_tokens"]


class FeatureEncoder(nn.Module):
    """A frozen encoder of patch features. Subclasses set ``name``, ``dim``, ``patch``, ``channels``,
    ``mean``/``std`` (of their input after [-1, 1] -> [0, 1]) and implement :meth:`grid_features`."""

    name: str
    dim: int  # feature channels D
    patch: int  # input pixels per feature cell and side
    channels: int  # 1 (gray) or 3 (RGB) input channels

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def grid_features(self, x: Tensor) -> Tensor:
        """(N, channels, g_h·patch, g_w·patch) normalised input -> (N, D, g_h, g_w)."""
        raise NotImplementedError

    def preprocess(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """Images in [-1, 1] -> the encoder's input: channels matched (gray repeated to RGB, RGB to
        luminance), scaled to [0, 1], normalised by ``mean``/``std``, resized bicubic to grid x patch."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError("align.encoder", f"takes (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] != self.channels:
            if self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:  # ITU-R 601 luminance, as Pillow's convert("L")
                w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(1, keepdim=True)
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        size = (grid[0] * self.patch, grid[1] * self.patch)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch features ``(N, D, g_h, g_w)`` float32 of images in [-1, 1] (no gradient: a frozen target)."""
        out = self.grid_features(self.preprocess(images, grid)).float()
        if tuple(out.shape[-2:]) != tuple(grid):
            raise ConfigError(
                "align.encoder", f"{self.name} gave a {tuple(out.shape[-2:])} grid, expected {tuple(grid)}"
            )
        return out


def grid_tokens(features: Tensor) -> Tensor:
    """(N, D, g_h, g_w) -> (N, g_h·g_w, D), row-major: the order of the DiT's tokens."""
    return features.flatten(2).transpose(1, 2)
