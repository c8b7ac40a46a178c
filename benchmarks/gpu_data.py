"""Synthetic data for the GPU check: a prepared latent set written from the documented format, and a
tiny random diffusers VAE saved to a folder.

Why synthetic: the GPU check runs offline on a bare machine that has neither ImageNet nor the Hugging Face
hub, and what it checks (CUDA code paths, step speed) does not depend on what the latents depict. The set
is a real prepared folder (safetensors shards plus ``manifest.json``, the format ``fasterdit prepare``
writes and ``fasterdit.data.prepared`` documents), so the trainer reads it through the same memory-mapped,
pinned-memory path that ImageNet latents take, and a run on it records the VAE that ``fasterdit sample``
decodes with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCALING_FACTOR = 0.18215  # the SD-VAE factor: brings the raw posterior means below to about unit std


def write_latent_set(
    folder: str | Path,
    *,
    items: int,
    channels: int = 4,
    resolution: int = 32,
    num_classes: int = 1000,
    vae: str | None = None,
    downsample: int = 8,
    shard_items: int = 1024,
    seed: int = 0,
) -> Path:
    """Write ``items`` random latent posteriors (raw ``mean``, ``logvar``) and labels as a prepared set.

    The raw means are N(0, 5²) and the log-variances U(-6, -2), about the range of SD-VAE posteriors, so
    the scaled latents have a std near 1 like real ones. The manifest's per-channel statistics are those
    of the scaled draw ``z = (mean + exp(logvar / 2)·ε)·scale`` over the whole set, computed in float64
    as ``fasterdit prepare`` reports them: mean ``scale·E[mean]``, std ``scale·sqrt(Var[mean] +
    E[exp(logvar)])``. ``vae`` is recorded as the set's VAE (a folder from :func:`write_tiny_vae`).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (channels, resolution, resolution)
    shards, sums, sq, var_sums = [], np.zeros(channels), np.zeros(channels), np.zeros(channels)
    for k, start in enumerate(range(0, items, shard_items)):
        n = min(shard_items, items - start)
        mean = rng.normal(0.0, 5.0, (n, *shape)).astype(np.float32)
        logvar = rng.uniform(-6.0, -2.0, (n, *shape)).astype(np.float32)
        name = f"shard-{k:06d}-r000.safetensors"
        save_file(
            {
                "mean": mean,
                "logvar": logvar,
                "label": rng.integers(0, num_classes, n).astype(np.int64),
                "index": np.arange(start, start + n, dtype=np.int64),
                "flipped": np.zeros(n, np.uint8),
            },
            str(folder / name),
        )
        shards.append({"file": name, "num_items": n, "rank": 0})
        m64 = mean.astype(np.float64)
        sums += m64.sum(axis=(0, 2, 3))
        sq += (m64**2).sum(axis=(0, 2, 3))
        var_sums += np.exp(logvar.astype(np.float64)).sum(axis=(0, 2, 3))
    count = items * resolution * resolution
    mu = sums / count
    std = SCALING_FACTOR * np.sqrt(sq / count - mu**2 + var_sums / count)
    manifest = {
        "format_version": 1,
        "kind": "latent",
        "vae": vae,
        "scaling_factor": SCALING_FACTOR,
        "shift_factor": 0.0,
        "image_resolution": resolution * downsample,
        "resolution": resolution,
        "channels": channels,
        "num_classes": num_classes,
        "class_to_idx": {f"class{i:04d}": i for i in range(num_classes)},
        "num_items": items,
        "shards": shards,
        "channel_mean": [float(v) for v in SCALING_FACTOR * mu],
        "channel_std": [float(v) for v in std],
        "flip": "none",
        "skipped": {"count": 0, "report": "skipped.tsv"},
        "synthetic": f"benchmarks/gpu_data.py, seed {seed}",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def write_tiny_vae(folder: str | Path, latent_channels: int = 4, seed: int = 0) -> Path:
    """A random ``diffusers.AutoencoderKL`` with two blocks of width 8 (2x down-sampling), saved with
    ``save_pretrained``: what ``fasterdit sample`` loads from a folder, in milliseconds and offline."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=64,
    )
    vae.save_pretrained(str(folder))
    return Path(folder)
