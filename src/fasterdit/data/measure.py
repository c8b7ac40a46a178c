"""Measure a dataset's per-channel mean and std, streamed: what ``fasterdit snr --data`` reads.

Why in ``data/``: it opens datasets (embedded sets, image folders, prepared folders, ``.npy``/``.npz``);
the SNR law in :mod:`fasterdit.diffusion.snr` only needs the resulting numbers, so ``diffusion/`` no
longer imports ``data/``.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fasterdit.data.embedded import EMBEDDED, load_embedded
from fasterdit.data.folder import ImageFolder, scan_folder
from fasterdit.data.stats import RunningStats
from fasterdit.errors import DataError

__all__ = ["measure_data_std", "npz_array", "npz_keys"]

_NPY_KEYS = ("x", "images", "latents", "data", "arr_0")
#: how a damaged .npz or .npy fails inside NumPy and zipfile (a cut file, a flipped byte, a bad header)
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first member, or an empty archive
_NPY_MAGIC = b"\x93NUMPY"


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of ``path`` (DataError naming it when it cannot be read)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None


def npz_keys(path: Path) -> list[str]:
    """The array names of the ``.npz`` at ``path``, or DataError naming the file and what is wrong.

    Why check the first bytes: NumPy reads any file that is neither a zip archive nor an ``.npy`` as a
    pickle, so a text file named ``.npz`` used to be reported as "pickled (object) data".
    """
    if _head(path, 4) not in _ZIP_MAGIC:
        raise DataError(
            f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays; this is not one)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: the .npz (zip) archive is truncated or damaged ({err})") from None


def npz_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of the ``.npz`` at ``path`` (only that member is read), or DataError naming the
    file and the array."""
    if key not in npz_keys(path):
        raise DataError(f"{path}: no array {key!r} (it holds {', '.join(npz_keys(path)) or 'none'})")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except _READ_ERRORS as err:
        raise DataError(f"{path}: array {key!r} is truncated or damaged ({err})") from None


def _open_npy(path: Path) -> np.ndarray:
    """A memory-mapped ``.npy``, or DataError naming the file and what is wrong."""
    if _head(path, len(_NPY_MAGIC)) != _NPY_MAGIC:
        raise DataError(f"{path}: not an .npy file (no NumPy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: the .npy file is truncated or damaged ({err})") from None


def _update_images_from_folder(
    stats: RunningStats, root: Path, resolution: int | None, limit: int | None
) -> None:
    if resolution is not None:  # exactly what training sees: the DiT centre crop at that resolution
        ds = ImageFolder(root, int(resolution), on_error="raise")
        n = len(ds) if limit is None else min(len(ds), limit)
        for i in range(n):
            x, _ = ds.load(i)
            stats.update(x.unsqueeze(0))
        return
    files, _, _, _ = scan_folder(root)
    for path in files[: limit or None]:
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.float64)
        except OSError as err:
            raise DataError(f"{path}: cannot read the image ({err})") from None
        stats.update(arr[None] / 127.5 - 1.0, channel_dim=-1)


def _update_from_array(
    stats: RunningStats, arr: np.ndarray, name: str, channel_dim: int | None, chunk: int
) -> None:
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise DataError(f"{name}: expected an array of items (N, ...), got shape {arr.shape}")
    if channel_dim is None:
        if arr.ndim == 4:  # (N,C,H,W) unless the last axis looks like RGB(A)/gray and axis 1 does not
            channel_dim = -1 if (arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4)) else 1
        elif arr.ndim == 3:
            channel_dim = None  # (N, H, W): one channel
        else:
            channel_dim = 1 if arr.ndim >= 2 else None
    is_uint8 = arr.dtype == np.uint8
    for a in range(0, arr.shape[0], chunk):
        try:
            block = np.asarray(arr[a : a + chunk], dtype=np.float64)
        except _READ_ERRORS as err:  # a memory-mapped file cut short, or values that are not numbers
            raise DataError(f"{name}: items {a}.. cannot be read as numbers ({err})") from None
        if is_uint8:  # 8-bit images: the [-1, 1] range the models are trained on
            block = block / 127.5 - 1.0
        _check_finite(block, name, a)
        if channel_dim is None:
            stats.update(block, channel_dim=None)
        else:
            stats.update(block, channel_dim=channel_dim)


def _check_finite(block: np.ndarray, name: str, offset: int) -> None:
    """DataError naming the file and the first item with a NaN or an infinity (they would poison the
    statistics, and the std they give would scale the data of a whole run)."""
    bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{name}: item {offset + int(np.argmax(bad))} holds NaN or infinite values")


def measure_data_std(
    source: str | os.PathLike,
    *,
    resolution: int | None = None,
    channel_dim: int | None = None,
    limit: int | None = None,
    chunk: int = 256,
) -> RunningStats:
    """Per-channel mean/std of a dataset, streamed (never all in memory). Returns a RunningStats.

    ``source`` is one of:

    * an embedded dataset name, ``"mnist"`` or ``"digits"`` (the training split, pixels in [-1, 1]);
    * a prepared-data folder (or its ``manifest.json``): the exact statistics ``fasterdit prepare``
      stored (``channel_mean``/``channel_std``) are read, nothing is recomputed;
    * an image folder: images converted to RGB and scaled to [-1, 1], at native size, or centre-cropped
      to ``resolution`` (what training sees) when given;
    * a ``.npy`` file (memory-mapped, read in chunks of ``chunk`` items) or ``.npz`` archive (its
      ``x``/``images``/``latents``/``data`` array, or the only one). uint8 arrays are 8-bit images
      and mapped to [-1, 1]; float arrays are used as they are. Layout ``(N, C, H, W)`` unless the
      last axis has 1/3/4 entries and axis 1 does not (then channels-last); ``(N, H, W)`` is one
      channel; ``channel_dim`` overrides the guess.

    ``limit`` caps the number of items (images / array rows) for a quick estimate.
    """
    stats = RunningStats()
    src = os.fspath(source)
    if src in EMBEDDED:
        x, _ = load_embedded(src, "train")
        if limit is not None:
            x = x[:limit]
        for a in range(0, len(x), chunk):
            stats.update(x[a : a + chunk])
        return stats
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(
            f"data not found: {src!r} is neither an embedded dataset ({', '.join(EMBEDDED)}) "
            "nor an existing path"
        )
    manifest = path if path.name == "manifest.json" else path / "manifest.json"
    if manifest.is_file():
        return _stats_from_manifest(manifest)
    if path.is_dir():
        _update_images_from_folder(stats, path, resolution, limit)
    elif path.suffix == ".npy":
        arr = _open_npy(path)
        _update_from_array(stats, arr[:limit] if limit else arr, str(path), channel_dim, chunk)
    elif path.suffix == ".npz":
        keys = npz_keys(path)
        key = next((k for k in _NPY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DataError(f"{path}: which array? it holds {keys}; name one of them {_NPY_KEYS[:4]}")
        arr = npz_array(path, key)  # npz members are decompressed one at a time; only this one is read
        _update_from_array(stats, arr[:limit] if limit else arr, f"{path}[{key}]", channel_dim, chunk)
    else:
        raise DataError(
            f"{path}: not a dataset this command can read (an image folder, a prepared folder with "
            "manifest.json, a .npy/.npz file, or mnist/digits)"
        )
    if stats.count == 0:
        raise DataError(f"{path}: no data found")
    return stats


def _stats_from_manifest(manifest: Path) -> RunningStats:
    try:
        m = json.loads(manifest.read_text())
        mean = [float(v) for v in m["channel_mean"]]
        std = [float(v) for v in m["channel_std"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{manifest}: cannot read channel_mean/channel_std ({err})") from None
    if len(mean) != len(std) or not mean:
        raise DataError(f"{manifest}: channel_mean and channel_std must be equal-length, non-empty lists")
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise DataError(f"{manifest}: channel_std must be finite and > 0, got {std}")
    count = int((m.get("stats") or {}).get("count_per_channel") or m.get("num_items") or 1)
    var = torch.tensor(std, dtype=torch.float64) ** 2
    return RunningStats.from_state_dict(
        {"count": count, "num_channels": len(mean), "mean": mean, "m2": (var * count).tolist()}
    )
