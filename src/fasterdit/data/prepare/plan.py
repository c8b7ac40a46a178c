"""What the shards of a preparation hold, and how the file list is cut into them.

Why a plan before any encoding: the settings fingerprint decides whether an earlier preparation in OUT
can be resumed and which of its shards can be reused, so it must be fixed (from the settings, the VAE
and the sorted file list) before a single image is read. Shard ``k`` covers the files
``[k·S, (k+1)·S)`` and the ranks take contiguous blocks of shard numbers, so the plan alone says who
writes what.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fasterdit.data.prepared import FORMAT_VERSION, STORAGE_DTYPES
from fasterdit.data.vae import vae_downsample_factor, vae_scaling_factor, vae_shift_factor
from fasterdit.errors import ConfigError

SHARD_TARGET_BYTES = 256 * 2**20  # default shard size: as many items as fit in about 256 MB

#: the header entry (safetensors dtype, per-item shape) of the columns every shard has
_COMMON = {"label": ("I64", ()), "index": ("I64", ()), "flipped": ("U8", ())}


@dataclass(frozen=True)
class Content:
    """What one item of a shard holds: the VAE posterior (latents) or the image itself (pixels)."""

    kind: str  # "latent" or "pixel"
    vae_name: str | None
    channels: int
    res: int  # spatial size of a stored item
    scale: float  # the VAE's scaling factor (1 for pixels)
    shift: float  # the VAE's shift factor (0 for pixels)
    gray_input: bool  # the VAE takes one channel: encode the luminance
    item_bytes: int  # bytes of one source image's stored items (both of them with flip)
    expected: dict[str, tuple[str, tuple[int, ...]]]  # column -> (safetensors dtype, per-item shape)
    float_dtype: type  # NumPy dtype of the stored mean/log-variance
    #: the REPA features stored beside each item: {"encoder", "grid", "dim"} (docs/repa.md), or None
    align: dict[str, Any] | None = None


def with_features(content: Content, encoder: str, grid: int, dim: int, flip: bool) -> Content:
    """``content`` plus a ``features`` column: ``dim`` x ``grid`` x ``grid`` float16 patch features of
    ``encoder`` on each item's source image (of the mirrored image for a stored mirrored copy)."""
    if grid < 1:
        raise ConfigError("align_grid", f"must be a positive token-grid side, got {grid}")
    copies = 2 if (flip and content.kind == "latent") else 1  # latents store the mirrored image's item
    return replace(
        content,
        item_bytes=content.item_bytes + copies * dim * grid * grid * 2,
        expected={**content.expected, "features": ("F16", (dim, grid, grid))},
        align={"encoder": encoder, "grid": grid, "dim": dim},
    )


def latent_content(model, vae_name: str, resolution: int, storage_dtype: str, flip: bool) -> Content:
    """The shards of ``model``'s posteriors at ``resolution`` (raises ConfigError for a VAE that cannot)."""
    factor = vae_downsample_factor(model)
    if resolution % factor:
        raise ConfigError(
            "resolution", f"{resolution} is not divisible by the VAE's downsampling factor {factor}"
        )
    channels, res = int(model.config.latent_channels), resolution // factor
    gray_input = int(model.config.in_channels) == 1  # e.g. mnist-ae: encode the luminance
    if int(model.config.in_channels) not in (1, 3):
        raise ConfigError("vae", f"takes {model.config.in_channels} channels; prepare feeds 1 or 3")
    st = STORAGE_DTYPES[storage_dtype]
    item_bytes = 2 * channels * res * res * np.dtype(np.float32 if st == "F32" else np.float16).itemsize
    item_bytes *= 2 if flip else 1
    expected = {"mean": (st, (channels, res, res)), "logvar": (st, (channels, res, res)), **_COMMON}
    return Content(
        "latent", vae_name, channels, res, vae_scaling_factor(model), vae_shift_factor(model), gray_input,
        item_bytes, expected, _float_dtype(storage_dtype),
    )  # fmt: skip


def pixel_content(resolution: int, storage_dtype: str) -> Content:
    """The shards of the images themselves, uint8 RGB at ``resolution``."""
    expected = {"pixels": ("U8", (3, resolution, resolution)), **_COMMON}
    return Content(
        "pixel", None, 3, resolution, 1.0, 0.0, False, 3 * resolution * resolution, expected,
        _float_dtype(storage_dtype),
    )  # fmt: skip


def _float_dtype(storage_dtype: str) -> type:
    return {"fp32": np.float32, "fp16": np.float16}[storage_dtype]


@dataclass(frozen=True)
class Plan:
    """The settings record of a preparation (its fingerprint decides resuming) and its shard ranges."""

    content: Content
    config: dict[str, Any]  # the settings the fingerprint covers, as written to prepare.json
    fingerprint: str
    shard_size: int
    num_files: int

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_files / self.shard_size)

    def shard_range(self, k: int) -> range:
        """The lines of files.txt that shard ``k`` covers."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.num_files))

    def record(self, images: Path) -> dict[str, Any]:
        """What prepare.json holds: the fingerprint, the settings it covers, and the source folder."""
        return {"fingerprint": self.fingerprint, "config": self.config, "images": str(images.resolve())}

    def rank_block(self, rank: int, world: int) -> range:
        """The contiguous block of shard numbers that ``rank`` of ``world`` writes."""
        return range(rank * self.num_shards // world, (rank + 1) * self.num_shards // world)


def make_plan(
    content: Content,
    rel: list[str],
    *,
    resolution: int,
    flip: bool,
    small: str,
    storage_dtype: str,
    dtype: str,
    shard_size: int | None,
    origin: dict[str, Any] | None,
    previous: dict[str, Any] | None,
) -> Plan:
    """Fix the settings and the shard size. ``shard_size=None`` keeps ``previous``'s (the record of an
    earlier preparation in OUT, so that a resume needs no flag), else aims at about 256 MB per shard."""
    if shard_size is None:  # keep the earlier run's shard size when resuming
        prev_size = (previous or {}).get("config", {}).get("shard_size")
        shard_size = (
            int(prev_size) if prev_size else max(16, min(16384, SHARD_TARGET_BYTES // content.item_bytes))
        )
    latent = content.kind == "latent"
    config = {
        "format_version": FORMAT_VERSION,
        "kind": content.kind,
        "vae": content.vae_name,
        "image_resolution": resolution,
        "flip": bool(flip),
        "small": small,
        "storage_dtype": storage_dtype if latent else "uint8",
        "dtype": dtype if latent else None,
        "shard_size": int(shard_size),
        "num_files": len(rel),
        # surrogateescape: a name that is not UTF-8 hashes as its bytes (the others as before)
        "files_sha256": hashlib.sha256("\n".join(rel).encode("utf-8", "surrogateescape")).hexdigest(),
    }
    if origin is not None:  # only then: the fingerprints of earlier folder preparations stay valid
        config["origin"] = origin
    if content.align is not None:  # the same: sets without features keep their fingerprints
        config["align_features"] = dict(content.align)
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
    return Plan(content, config, fingerprint, int(shard_size), len(rel))
