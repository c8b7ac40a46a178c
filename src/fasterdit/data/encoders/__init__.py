"""Feature encoders of REPA's alignment term (docs/repa.md): :func:`load_encoder` by name.

* ``mnist-ssl``: the small self-supervised ConvNet shipped for the embedded digits (:mod:`.mnist_ssl`);
* ``dinov2-vits14`` / ``dinov2-vitb14`` / ``dinov2-vitl14`` / ``dinov2-vitg14``, a hub id or a local folder
  of a transformers ``Dinov2Model`` (:mod:`.dinov2`, needs transformers).
"""

from __future__ import annotations

import torch

from fasterdit.data.encoders.base import FeatureEncoder, grid_tokens
from fasterdit.data.encoders.dinov2 import load_dinov2
from fasterdit.data.encoders.mnist_ssl import MNIST_SSL, load_mnist_ssl

__all__ = ["FeatureEncoder", "grid_tokens", "load_encoder"]


def load_encoder(spec: str, device: torch.device | str = "cpu") -> FeatureEncoder:
    """The frozen encoder named ``spec`` on ``device`` (eval mode, no gradients)."""
    if spec == MNIST_SSL:
        return load_mnist_ssl(device)
    return load_dinov2(spec, device)
