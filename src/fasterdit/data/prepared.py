"""Reading prepared shards (written by ``fasterdit prepare``) for training, memory-mapped.

A prepared set is a folder with ``manifest.json`` and shard files in the safetensors format (a
little-endian u64 header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the
raw bytes). Why safetensors plus our own ``numpy.memmap`` views rather than ``safe_open``: a training
batch is a random set of rows spread over many shards, and a memmap view supports fancy indexing
that touches only the pages of the requested rows. Nothing is loaded into RAM up front, so an
ImageNet-sized set (tens of GB) costs only page cache, shared between DataLoader workers and ranks.

Shard tensors (``n`` items each):

* latent sets: ``mean`` and ``logvar`` ``(n, C, h, w)`` float32 (or float16 with
  ``--storage-dtype fp16``), the raw posterior of the VAE, unscaled;
* pixel sets: ``pixels`` ``(n, 3, H, W)`` uint8;
* both: ``label`` int64 ``(n,)``, ``index`` int64 (line of the source image in ``files.txt``) and
  ``flipped`` uint8 (1 for a stored mirrored copy);
* optionally (``prepare --align-encoder``): ``features`` ``(n, D, g, g)`` float16, the patch features of a
  REPA encoder on the source image (the mirrored image for a stored mirrored copy), on a ``g`` x ``g``
  token grid; the manifest's ``align_features`` says which encoder and grid (docs/repa.md).

:meth:`PreparedDataset.get_batch` returns what the model trains on: for latents a fresh draw
``z = (mean + exp(logvar / 2) · ε - shift_factor) · scaling_factor`` with ``ε`` from the caller's
generator (as DiT does with ``latent_dist.sample().mul_(0.18215)``), for pixels values in [-1, 1].
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.data.embedded import Origin
from fasterdit.data.stats import DataStats
from fasterdit.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLIP_MODES = ("none", "stored", "random")

# safetensors dtype names <-> numpy
ST_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}
STORAGE_DTYPES = {"fp32": "F32", "fp16": "F16"}
REQUIRED_KEYS = (
    "format_version",
    "kind",
    "vae",
    "scaling_factor",
    "image_resolution",
    "resolution",
    "channels",
    "num_classes",
    "class_to_idx",
    "num_items",
    "shards",
    "channel_mean",
    "channel_std",
)


def read_header(path: str | Path) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Parse a safetensors header: ``(tensors, data_start, metadata)``, where ``tensors`` maps a name to
    ``{"dtype", "shape", "data_offsets"}`` with offsets relative to ``data_start``. Raises DataError
    naming the file when it is not a complete safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise DataError(f"{path}: shard file is truncated or empty ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise DataError(f"{path}: not a safetensors shard (header length {n} > file size {size})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise DataError(f"shard file missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the shard header ({err})") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: not a safetensors shard (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    for name, info in header.items():
        try:
            b, e = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: malformed header entry for tensor {name!r}") from None
        if data_start + e > size or b > e:
            raise DataError(
                f"{path}: shard file is truncated (tensor {name!r} ends at byte {data_start + e}, "
                f"file has {size})"
            )
        if dtype in ST_DTYPES and (e - b) != int(np.prod(shape, dtype=np.int64)) * ST_DTYPES[dtype].itemsize:
            raise DataError(f"{path}: tensor {name!r} has {e - b} bytes, which does not match shape {shape}")
    return header, data_start, metadata


def shard_metadata(path: str | Path) -> dict[str, Any]:
    """The fasterdit metadata a shard carries (source range, config fingerprint, skipped files)."""
    _, _, meta = read_header(path)
    try:
        return json.loads(meta.get("fasterdit", "{}"))
    except json.JSONDecodeError:
        raise DataError(f"{path}: corrupt fasterdit metadata in the shard header") from None


def load_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, manifest)`` for a prepared folder or its manifest.json; DataError when absent or invalid."""
    path = Path(path).expanduser()
    folder, file = (path.parent, path) if path.suffix == ".json" else (path, path / MANIFEST)
    if not file.is_file():
        if not folder.exists():
            raise DataError(f"prepared data folder not found: {folder}")
        if (folder / "prepare.json").is_file():
            raise DataError(
                f"{folder}: preparation has not finished (no {MANIFEST}); run the same "
                "`fasterdit prepare` command again to resume it"
            )
        raise DataError(f"{folder}: no {MANIFEST}; create the folder with `fasterdit prepare`")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: cannot read the manifest ({err})") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise DataError(f"{file}: manifest lacks {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"{file}: format_version {manifest['format_version']} is not supported (this fasterdit "
            f"reads version {FORMAT_VERSION}); prepare the data again"
        )
    if manifest["kind"] not in ("latent", "pixel"):
        raise DataError(f"{file}: kind must be 'latent' or 'pixel', got {manifest['kind']!r}")
    return folder, manifest


class _Shard:
    """One shard file: validated layout and lazily opened memory maps."""

    def __init__(
        self, path: Path, num_items: int, rank: int, expected: dict[str, tuple[str, tuple[int, ...]]]
    ):
        self.path, self.num_items, self.rank = path, int(num_items), int(rank)
        header, self.data_start, _ = read_header(path)
        self.layout: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        for name, (dtypes, shape) in expected.items():
            if name not in header:
                raise DataError(f"{path}: shard lacks the tensor {name!r} (has {', '.join(sorted(header))})")
            info = header[name]
            got_shape = tuple(int(s) for s in info["shape"])
            want_shape = (self.num_items, *shape)
            if info["dtype"] not in dtypes.split("|"):
                raise DataError(f"{path}: tensor {name!r} has dtype {info['dtype']}, expected {dtypes}")
            if got_shape != want_shape:
                raise DataError(
                    f"{path}: tensor {name!r} has shape {list(got_shape)}, expected {list(want_shape)} "
                    "(from the manifest); the shard does not belong to this prepared set or is damaged"
                )
            self.layout[name] = (
                ST_DTYPES[info["dtype"]],
                got_shape,
                self.data_start + int(info["data_offsets"][0]),
            )
        self._maps: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = {
                name: np.memmap(self.path, dtype=dt, mode="r", offset=off, shape=shape)
                for name, (dt, shape, off) in self.layout.items()
            }
        return self._maps

    def close(self) -> None:
        self._maps = None


class PreparedDataset:
    """A prepared (latent or pixel) dataset, read memory-mapped from its shards.

    ``flip=None`` follows the manifest (``"random"``: each pixel item is mirrored with probability 1/2
    in :meth:`get_batch`; ``"stored"``: mirrored latents were encoded at prepare time and are ordinary
    items). ``flip=True`` forces random mirroring in :meth:`get_batch` (for latents this flips the
    latent grid, an approximation of encoding the mirrored image); ``flip=False`` disables it.
    """

    def __init__(self, path: str | Path, flip: bool | None = None):
        self.path, self.manifest = load_manifest(path)
        m = self.manifest
        self.kind: str = m["kind"]
        self.is_latent = self.kind == "latent"
        self.vae: str | None = m["vae"]
        self.scaling_factor = float(m["scaling_factor"])
        self.shift_factor = float(m.get("shift_factor", 0.0))
        self.image_resolution = int(m["image_resolution"])
        self.resolution = int(m["resolution"])
        self.channels = int(m["channels"])
        self.num_classes = int(m["num_classes"])
        self.class_to_idx: dict[str, int] = dict(m["class_to_idx"])
        self.stats = DataStats.of(m["channel_mean"], m["channel_std"])  # measured by ``fasterdit prepare``
        self.origin: Origin | None = Origin.from_dict(m.get("origin"))
        self.flip_mode = m.get("flip", "none")
        if self.flip_mode not in FLIP_MODES:
            raise DataError(
                f"{self.path / MANIFEST}: flip must be one of {FLIP_MODES}, got {self.flip_mode!r}"
            )
        self.random_flip = (self.flip_mode == "random") if flip is None else bool(flip)
        #: {"encoder", "grid", "dim"} of the stored REPA features, or None when the set has none
        self.align_features: dict[str, Any] | None = m.get("align_features")
        shape = (self.channels, self.resolution, self.resolution)
        if self.is_latent:
            dt = "F32|F16"
            expected = {"mean": (dt, shape), "logvar": (dt, shape)}
        else:
            expected = {"pixels": ("U8", shape)}
        expected["label"] = ("I64", ())
        if self.align_features is not None:
            af = self.align_features
            expected["features"] = ("F16", (int(af["dim"]), int(af["grid"]), int(af["grid"])))
        self._shards = [
            _Shard(self.path / s["file"], s["num_items"], s.get("rank", 0), expected)
            for s in m["shards"]
            if int(s["num_items"]) > 0
        ]
        counts = np.array([s.num_items for s in self._shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        if int(self._starts[-1]) != int(m["num_items"]):
            raise DataError(
                f"{self.path / MANIFEST}: num_items is {m['num_items']} but the shards hold "
                f"{int(self._starts[-1])}"
            )
        if int(m["num_items"]) == 0:
            raise DataError(f"{self.path}: the prepared set is empty (every image was skipped?)")
        self._labels: np.ndarray | None = None

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shard_files(self) -> list[Path]:
        return [s.path for s in self._shards]

    @property
    def labels(self) -> np.ndarray:
        """All labels, int64 ``(N,)`` (8 bytes per item, so this one is read into memory)."""
        if self._labels is None:
            self._labels = np.concatenate([np.asarray(s.arrays()["label"]) for s in self._shards])
        return self._labels

    def __repr__(self) -> str:
        what = f"latents of {self.vae}" if self.is_latent else "pixels"
        return (
            f"PreparedDataset({self.path}, {len(self)} items, {what}, {self.channels}x{self.resolution}"
            f"x{self.resolution}, {self.num_classes} classes)"
        )

    # pickling (spawned DataLoader workers): memmaps are reopened lazily, never pickled as arrays
    def __getstate__(self) -> dict[str, Any]:
        for s in self._shards:
            s.close()
        return self.__dict__.copy()

    # ------------------------------------------------------------------ read
    def _gather(self, idx: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard_of]
        out: dict[str, np.ndarray] = {}
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            rows = local[sel]
            order = np.argsort(rows, kind="stable")  # ascending offsets: sequential page access
            arrays = self._shards[int(k)].arrays()
            for name in names:
                src = arrays[name]
                if name not in out:
                    out[name] = np.empty((len(idx), *src.shape[1:]), dtype=src.dtype)
                out[name][sel[order]] = src[rows[order]]
        return out

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as ``(x float32 (B, C, h, w), y int64 (B,))``, on the generator's device.

        Latents are drawn fresh, ``z = (mean + exp(logvar/2)·ε - shift)·scale`` with ``ε`` from
        ``generator``; pixels come in [-1, 1]. Random draws, in this order: ``ε`` (latents), then the
        flip mask (when flipping), so a batch is a deterministic function of the indices and the
        generator's state.
        """
        x, y, _ = self._read(indices, generator, features=False)
        return x, y

    def get_batch_features(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`get_batch` (the same draws) plus the stored REPA features ``(B, D, g, g)`` float32, mirrored
        with the items that the random flip mirrors (the mirrored feature grid: an approximation, as flipping
        a latent is; a set prepared with ``--flip`` stores the features of the mirrored images)."""
        if self.align_features is None:
            raise DataError(f"{self.path}: no REPA features stored (prepare with --align-encoder)")
        x, y, f = self._read(indices, generator, features=True)
        assert f is not None
        return x, y, f

    def _read(
        self, indices: torch.Tensor, generator: torch.Generator | None, features: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(indices).reshape(-1).to("cpu", torch.int64).numpy()
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for a prepared set of {n} items: {idx.min()}..{idx.max()}")
        device = generator.device if generator is not None else torch.device("cpu")
        names = ("mean", "logvar", "label") if self.is_latent else ("pixels", "label")
        names += ("features",) if features else ()
        data = self._gather(idx, names) if idx.size else {}
        shape = (len(idx), self.channels, self.resolution, self.resolution)
        if not idx.size:
            af = self.align_features or {"dim": 0, "grid": 0}
            f0 = torch.zeros(0, int(af["dim"]), int(af["grid"]), int(af["grid"]), device=device)
            return (torch.zeros(shape, device=device), torch.zeros(0, dtype=torch.long, device=device),
                    f0 if features else None)  # fmt: skip
        y = torch.from_numpy(data["label"]).to(device)
        f = torch.from_numpy(data["features"]).to(device=device, dtype=torch.float32) if features else None
        if self.is_latent:
            mean = torch.from_numpy(data["mean"]).to(device=device, dtype=torch.float32)
            logvar = torch.from_numpy(data["logvar"]).to(device=device, dtype=torch.float32)
            eps = torch.randn(shape, generator=generator, device=device)
            x = (mean + torch.exp(0.5 * logvar) * eps - self.shift_factor) * self.scaling_factor
        else:
            x = torch.from_numpy(data["pixels"]).to(device).float().div_(127.5).sub_(1.0)
        if self.random_flip:
            mask = torch.rand(len(idx), generator=generator, device=device) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
            if f is not None:
                f = torch.where(mask[:, None, None, None], f.flip(-1), f)
        return x, y, f
