"""How images are resized before a feature network, as one object that both does it and records it.

Why one object: a FID depends on the resize filter (bilinear vs. antialiased vs. PIL's bicubic moves
Inception FIDs by whole points; clean-fid's paper), so every evaluation JSON says how its images reached
the network's input size. When the code that resizes and the record are the same :class:`Resize`, the
record cannot drift from what was done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

__all__ = ["INCEPTION_RESIZE", "Resize", "classifier_resize"]

Filter = Literal["none", "bilinear"]


@dataclass(frozen=True)
class Resize:
    """Resize to ``to`` x ``to`` with ``torch.nn.functional.interpolate(mode=filter, antialias=...,
    align_corners=...)``; ``filter="none"``: the network takes ``to`` x ``to`` only (other sizes are
    refused, never resized)."""

    to: int
    filter: Filter
    antialias: bool = False
    align_corners: bool = False

    def needed(self, height: int, width: int) -> bool:
        return self.filter != "none" and (height, width) != (self.to, self.to)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) float at the network's size (unchanged when it is already there)."""
        if not self.needed(x.shape[-2], x.shape[-1]):
            return x
        return F.interpolate(
            x, size=(self.to, self.to), mode=self.filter, antialias=self.antialias,
            align_corners=self.align_corners,
        )  # fmt: skip

    def record(self, height: int, width: int) -> dict[str, int | str | bool | list[int]]:
        """What an evaluation JSON says about images of ``height`` x ``width`` (``from``): ``filter``
        "none" when they were fed as they are."""
        if not self.needed(height, width):
            return {"from": [height, width], "to": self.to, "filter": "none"}
        return {
            "from": [height, width],
            "to": self.to,
            "filter": self.filter,
            "antialias": self.antialias,
            "align_corners": self.align_corners,
        }


#: the Inception-v3 port (eval/standard.py): PyTorch's bilinear filter on the uint8 values as float32,
#: before the (x - 128) / 128 normalisation; what the StyleGAN2-ADA TorchScript's own forward does
INCEPTION_RESIZE = Resize(299, "bilinear", antialias=False, align_corners=False)


def classifier_resize(resolution: int) -> Resize:
    """The shipped digit classifiers (eval/classifier.py) take their dataset's size only: no resize."""
    return Resize(resolution, "none")
