"""A PNG grid of samples, one row per label: what the trainer writes every ``log.sample_every`` steps and
``fasterdit sample --out grid.png`` writes, from the same per-index noise as every sampling job.

Why the job's noise: a grid of the checkpoint of step k drawn by ``fasterdit sample`` with default flags
is then the grid the run wrote at step k, image for image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fasterdit.diffusion.recipe import Recipe
from fasterdit.generate.job import Decode, SampleSettings, pending_ranges, sample_range
from fasterdit.models.dit import DiT
from fasterdit.viz import save_image_grid

__all__ = ["write_grid"]


def write_grid(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    out: Path,
    *,
    batch_size: int,
    device: torch.device,
    decode: Decode | None = None,
    nrow: int | None = None,
    progress: bool = False,
) -> Path:
    """Sample ``settings`` in this process and save the grid (``nrow`` images a row: by default the
    samples of one label, else a square)."""
    batches = pending_ranges(settings.num_samples, batch_size, [])
    parts = []
    for start, end in tqdm(batches, desc="grid", unit="batch", disable=not progress, leave=False):
        parts.append(sample_range(model, recipe, settings, start, end, device, decode)[0])
    images = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    per = math.ceil(settings.num_samples / len(settings.labels)) if settings.labels else None
    nrow = nrow or per or max(1, math.ceil(math.sqrt(len(images))))
    scale = max(1, min(4, 128 // max(1, images.shape[-1])))
    return save_image_grid(images, out, nrow=nrow, scale=scale)
