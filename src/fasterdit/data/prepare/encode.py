"""Encoding: decode a shard's source images, run them through the VAE (or keep the pixels), and write
the shard with its header.

Why batches never cross a shard boundary: a shard's bytes then depend only on its own files (same batch
size, device and dtype), so the shards a resumed run writes are byte-identical to an uninterrupted run's.
Why statistics per shard, in its header: a resumed run reuses them for the shards it does not re-encode.
They are those of what :meth:`PreparedDataset.get_batch` returns, computed analytically from the stored
distribution (see :func:`shard_stats`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save

from fasterdit.data.encoders import FeatureEncoder
from fasterdit.data.folder import BadImage, _decode, to_tensor
from fasterdit.data.prepare.outdir import shard_name
from fasterdit.data.prepare.plan import Content, Plan
from fasterdit.data.prepared import FORMAT_VERSION
from fasterdit.data.stats import RunningStats
from fasterdit.data.vae import encode_distribution
from fasterdit.errors import DataError
from fasterdit.runtime.files import atomic_write_bytes


class _Images(torch.utils.data.Dataset):
    """Decodes source images for the encoder (picklable, so DataLoader workers work with any start method)."""

    def __init__(self, root: Path, rel: list[str], resolution: int, small: str):
        self.root, self.rel, self.resolution, self.small = root, rel, resolution, small

    def __len__(self) -> int:
        return len(self.rel)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None, str | None]:
        try:
            arr, warning = _decode(self.root / self.rel[i], self.resolution, self.small)
        except BadImage as err:
            return i, None, str(err), None
        return i, arr, None, warning


def _as_list(batch: list) -> list:
    return batch


def image_loader(
    images: Path, rel: list[str], resolution: int, small: str, batches: list[list[int]], workers: int
) -> torch.utils.data.DataLoader:
    """Decoded images, one list of ``(index, array or None, skip reason, warning)`` per batch."""
    return torch.utils.data.DataLoader(
        _Images(images, rel, resolution, small),
        batch_sampler=batches,
        num_workers=int(workers) if batches else 0,
        collate_fn=_as_list,
    )


def shard_batches(plan: Plan, todo: list[int], batch_size: int) -> list[list[int]]:
    """The batches of file indices of the shards ``todo``; none crosses a shard boundary."""
    return [
        list(plan.shard_range(k))[i : i + batch_size]
        for k in todo
        for i in range(0, len(plan.shard_range(k)), batch_size)
    ]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` RGB -> uint8 luminance as Pillow's ``convert("L")`` computes it (ITU-R 601 in
    16-bit fixed point); exact for gray images, whose three channels are equal."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _encode_cpu(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch and bring ``(mean, logvar)`` back to the CPU as float32 NumPy arrays."""
    mean, logvar = encode_distribution(model, x)
    return mean.cpu().numpy(), logvar.cpu().numpy()


@dataclass
class EncodedShard:
    """The items of one shard as they come out of the encoder, with the files skipped or warned about."""

    k: int
    parts: dict[str, list[np.ndarray]]
    skipped: list[list[str]] = field(default_factory=list)
    warned: list[list[str]] = field(default_factory=list)

    def tensors(self, content: Content) -> dict[str, np.ndarray]:
        """One array per column; empty arrays of the right dtype when every file of the shard was skipped."""
        out: dict[str, np.ndarray] = {}
        for name, (_, shape) in content.expected.items():
            parts = self.parts[name]
            if parts:
                out[name] = np.concatenate(parts)
            else:
                dtypes = {"label": np.int64, "index": np.int64, "flipped": np.uint8, "pixels": np.uint8,
                          "features": np.float16}  # fmt: skip
                out[name] = np.zeros((0, *shape), dtype=dtypes.get(name, content.float_dtype))
        return out


def encode_shards(
    loader: torch.utils.data.DataLoader,
    plan: Plan,
    model,
    *,
    images: Path,
    rel: list[str],
    labels: list[int],
    flip: bool,
    strict: bool,
    on_batch: Callable[[int], None],
    encoder: FeatureEncoder | None = None,
) -> Iterator[EncodedShard]:
    """Encode the loader's batches and yield each shard once all its batches are in (in shard order).
    ``on_batch(n)`` is told how many files each batch took (the progress bar). ``encoder``: the REPA
    feature encoder of a ``features`` column (``content.align``)."""
    content = plan.content
    shard: EncodedShard | None = None
    for batch in loader:
        k = batch[0][0] // plan.shard_size
        if shard is not None and k != shard.k:
            yield shard
        if shard is None or k != shard.k:
            shard = EncodedShard(k, {n: [] for n in content.expected})
        good = []
        for i, arr, reason, warning in batch:
            if arr is None:
                if strict:
                    raise DataError(f"{images / rel[i]}: {reason} (--strict makes bad files fatal)")
                shard.skipped.append([rel[i], reason])
            else:
                if warning is not None:
                    shard.warned.append([rel[i], warning])
                good.append((i, arr))
        on_batch(len(batch))
        if good:
            _encode_batch(shard.parts, good, labels, content, model, flip)
            if encoder is not None:
                shard.parts["features"].append(_features(encoder, content, good, flip))
    if shard is not None:
        yield shard


def _encode_batch(
    parts: dict[str, list[np.ndarray]], good: list[tuple[int, np.ndarray]], labels: list[int],
    content: Content, model, flip: bool,
) -> None:  # fmt: skip
    """Append the columns of one batch of decoded images (index, uint8 HWC array) to ``parts``."""
    idx = np.array([i for i, _ in good], dtype=np.int64)
    lab = np.array([labels[i] for i, _ in good], dtype=np.int64)
    pix = np.stack([a for _, a in good])  # (B, H, W, 3) uint8
    if content.kind == "pixel":
        parts["pixels"].append(np.ascontiguousarray(pix.transpose(0, 3, 1, 2)))
        parts["label"].append(lab)
        parts["index"].append(idx)
        parts["flipped"].append(np.zeros(len(idx), dtype=np.uint8))
        return
    x = to_tensor(luminance(pix)[..., None] if content.gray_input else pix)
    if flip:
        x = torch.cat([x, x.flip(-1)])
    mean, logvar = _encode_cpu(model, x)
    if flip:  # interleave: image, its mirror, next image, ...
        b = len(idx)
        mean = np.stack([mean[:b], mean[b:]], 1).reshape(2 * b, *mean.shape[1:])
        logvar = np.stack([logvar[:b], logvar[b:]], 1).reshape(2 * b, *logvar.shape[1:])
        idx, lab = np.repeat(idx, 2), np.repeat(lab, 2)
        flipped = np.tile(np.array([0, 1], dtype=np.uint8), b)
    else:
        flipped = np.zeros(len(idx), dtype=np.uint8)
    parts["mean"].append(mean.astype(content.float_dtype))
    parts["logvar"].append(logvar.astype(content.float_dtype))
    parts["label"].append(lab)
    parts["index"].append(idx)
    parts["flipped"].append(flipped)


def _features(
    encoder: FeatureEncoder, content: Content, good: list[tuple[int, np.ndarray]], flip: bool
) -> np.ndarray:
    """float16 REPA features of one batch's source images, in the order of its stored items: each image,
    then (latents with ``flip``) its mirror, as :func:`_encode_batch` interleaves them."""
    assert content.align is not None
    g = int(content.align["grid"])
    x = to_tensor(np.stack([a for _, a in good])).to(encoder.mean.device)
    f = encoder(x, (g, g))
    if flip and content.kind == "latent":
        f = torch.stack([f, encoder(x.flip(-1), (g, g))], 1).reshape(2 * len(good), *f.shape[1:])
    return f.cpu().numpy().astype(np.float16)


def shard_stats(tensors: dict[str, np.ndarray], scale: float, shift: float) -> dict[str, Any]:
    """Per-shard RunningStats states (JSON-able) of the values the reader will return: for latents
    ``z = (μ + σε - shift)·scale`` per channel through ``E[z]`` and ``E[σ²·scale²]`` (law of total
    variance, no sampling noise), for pixels the values in [-1, 1]."""
    if "pixels" in tensors:
        x = torch.from_numpy(tensors["pixels"]).to(torch.float64).div(127.5).sub(1.0)
        return {"x": RunningStats().update(x).state_dict()}
    mu = torch.from_numpy(tensors["mean"]).to(torch.float64)
    var = torch.from_numpy(tensors["logvar"]).to(torch.float64).exp()
    return {
        "mu": RunningStats().update((mu - shift) * scale).state_dict(),
        "var": RunningStats().update(var * scale**2).state_dict(),
    }


def write_shard(out: Path, rank: int, plan: Plan, shard: EncodedShard) -> tuple[Path, dict[str, Any]]:
    """Write ``shard`` as ``out/shard-K-rR.safetensors``; returns its path and header metadata.

    Atomic (a shard file either is complete or does not exist, which is what makes resuming safe), and
    deterministic: one metadata entry only, a JSON string with sorted keys."""
    tensors = shard.tensors(plan.content)
    r = plan.shard_range(shard.k)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "shard": shard.k,
        "start": r.start,
        "stop": r.stop,
        "num_items": int(tensors["label"].shape[0]),
        "skipped": shard.skipped,
        "warnings": shard.warned,
        "stats": shard_stats(tensors, plan.content.scale, plan.content.shift),
    }
    blob = save(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        metadata={"fasterdit": json.dumps(meta, sort_keys=True)},
    )
    path = out / shard_name(shard.k, rank)
    atomic_write_bytes(path, blob)
    return path, meta
