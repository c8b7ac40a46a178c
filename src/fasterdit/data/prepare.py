"""``fasterdit prepare``: turn a folder of images into shards of VAE latents (or pixels) plus a manifest.

Why prepare at all: encoding with the SD-VAE costs more than a DiT-B training step, so DiT-style
pipelines (fast-DiT, REPA, LightningDiT) encode once and train on stored latents. We store the
posterior **distribution** (mean, log-variance) so the trainer can still draw a fresh latent each
time, exactly like the official DiT, which calls ``latent_dist.sample()`` on every step.

Layout of ``OUT`` (see docs/data.md)::

    manifest.json          written last, once, by rank 0: what the trainer reads
    prepare.json           the settings and file-list fingerprint of this preparation (for resume)
    files.txt              the sorted source files, one per line; a shard's ``index`` is a line number
    shard-KKKKKK-rRRR.safetensors   shard K (a fixed range of files.txt), written by rank R
    skipped.tsv            files that could not be used, with the reason
    warnings.tsv           files used with a caveat (upsampled because smaller than the target)

Design decisions:

* **Shards are fixed ranges of the sorted file list** (shard K covers files ``[K·S, (K+1)·S)``), and
  the ranks of a torchrun job take contiguous blocks of shard numbers. So shards are disjoint by
  construction, nothing is ever overwritten, the concatenation of all shards is in file order
  whatever the number of ranks, and a run interrupted on 8 GPUs can resume on 4.
* **Resume = skip finished shards.** A shard file appears only through an atomic rename of a
  complete temporary file, and carries in its header the settings fingerprint, its file range, its
  skipped files and its statistics. A rerun reuses every shard whose header matches and encodes
  only the missing ones; batches never cross a shard boundary, so (same batch size, device and
  dtype) the resumed shards are byte-identical to an uninterrupted run.
* **Statistics** are those of what :meth:`PreparedDataset.get_batch` returns, i.e. the scaled
  latents ``z = (μ + σε - shift)·scale`` the model sees, computed analytically from the stored
  distribution (no sampling noise): per channel ``E[z] = mean of (μ - shift)·scale`` and
  ``Var[z] = Var[(μ - shift)·scale] + E[σ²·scale²]`` (law of total variance), accumulated with
  :class:`~fasterdit.data.stats.RunningStats` in float64 per shard and all-reduced across ranks.
* **Horizontal flips** (``flip=True``): for latents we encode the mirrored image too and store it as
  a second item (the set doubles; ``flipped`` marks the copies), the fast-DiT way, because the VAE is
  not exactly mirror-equivariant: flipping a latent is not the latent of the flipped image. For
  pixels flipping is exact and free, so nothing is stored twice: the manifest says ``"random"`` and
  the reader mirrors on the fly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.numpy import save
from tqdm.auto import tqdm

from fasterdit.data.embedded import EMBEDDED, INFO, Origin, export_embedded
from fasterdit.data.folder import SMALL, BadImage, _decode, scan_folder, to_tensor
from fasterdit.data.prepared import FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, read_header, shard_metadata
from fasterdit.data.stats import RunningStats
from fasterdit.data.vae import (
    encode_distribution,
    load_vae,
    parse_dtype,
    vae_downsample_factor,
    vae_record_name,
    vae_scaling_factor,
    vae_shift_factor,
)
from fasterdit.errors import ConfigError, DataError

SHARD_TARGET_BYTES = 256 * 2**20  # default shard size: as many items as fit in about 256 MB
PREPARE_JSON = "prepare.json"
FILES_TXT = "files.txt"
SKIPPED_TSV = "skipped.tsv"
WARNINGS_TSV = "warnings.tsv"
DIST_TIMEOUT = timedelta(hours=48)  # ranks with resumed shards wait for the others at the end


def shard_name(k: int, rank: int) -> str:
    return f"shard-{k:06d}-r{rank:03d}.safetensors"


# ----------------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None
    owns_init: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """``obj`` of rank 0, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out


def _setup_dist() -> _Dist:
    """Join the torchrun job if there is one. Our collectives are small CPU objects, so we use a gloo
    group even on GPUs (no device bookkeeping, and a long timeout: a rank whose shards were all done
    before a resume waits for the others)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=DIST_TIMEOUT)
        return _Dist(dist.get_rank(), world, local_rank, group, owns_init=False)
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise DataError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group(backend="gloo", timeout=DIST_TIMEOUT)
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, None, owns_init=True)


# ----------------------------------------------------------------------------------- file writing
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _write_shard(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write a safetensors shard atomically (temporary file, fsync, rename): a shard file either is
    complete or does not exist, which is what makes resuming safe. One metadata entry only, a JSON
    string with sorted keys, so the bytes are deterministic."""
    blob = save(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        metadata={"fasterdit": json.dumps(meta, sort_keys=True)},
    )
    _atomic_write_bytes(path, blob)


def _tsv_field(s: str) -> str:
    return s.replace("\t", " ").replace("\n", " ")


# ----------------------------------------------------------------------------------- image loading
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


# ----------------------------------------------------------------------------------- statistics
def _shard_stats(tensors: dict[str, np.ndarray], scale: float, shift: float) -> dict[str, Any]:
    """Per-shard RunningStats states (JSON-able) of the values the reader will return."""
    if "pixels" in tensors:
        x = torch.from_numpy(tensors["pixels"]).to(torch.float64).div(127.5).sub(1.0)
        return {"x": RunningStats().update(x).state_dict()}
    mu = torch.from_numpy(tensors["mean"]).to(torch.float64)
    var = torch.from_numpy(tensors["logvar"]).to(torch.float64).exp()
    return {
        "mu": RunningStats().update((mu - shift) * scale).state_dict(),
        "var": RunningStats().update(var * scale**2).state_dict(),
    }


def _finish_stats(per_shard: list[dict[str, Any]], kind: str, dist_: _Dist) -> dict[str, Any]:
    """Merge shard statistics (in shard order), all-reduce across ranks, and express them as the
    per-channel mean/std of the model's input plus the pooled std over all channels."""
    names = ("x",) if kind == "pixel" else ("mu", "var")
    total = {n: RunningStats() for n in names}
    for st in per_shard:
        for n in names:
            total[n].merge(RunningStats.from_state_dict(st[n]))
    for n in names:
        total[n].all_reduce(group=dist_.group)
    if total[names[0]].count == 0:
        return {}
    if kind == "pixel":
        s = total["x"]
        return {
            "channel_mean": s.mean.tolist(),
            "channel_std": s.std.tolist(),
            "std": s.pooled_std,
            "count_per_channel": s.count,
        }
    mu, var = total["mu"], total["var"]
    channel_var = mu.var + var.mean
    pooled_var = mu.pooled_var + float(var.mean.mean())
    return {
        "channel_mean": mu.mean.tolist(),
        "channel_std": channel_var.sqrt().tolist(),
        "std": math.sqrt(pooled_var),
        "count_per_channel": mu.count,
        "latent_mean_std": mu.std.tolist(),  # spread of the posterior means alone
        "posterior_std_rms": var.mean.sqrt().tolist(),  # RMS of the posterior std (scaled)
    }


# ----------------------------------------------------------------------------------- main entry
def _resolve_device(device: str | None, dist_: _Dist) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", "CUDA was requested but torch sees no GPU; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", dist_.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ConfigError("device", f"must be cpu or cuda, got {device!r}")
    return dev


def _check_out(out: Path, images: Path) -> None:
    out_r, img_r = out.resolve(), images.resolve()
    if out_r == img_r or img_r in out_r.parents:
        raise ConfigError(
            "out",
            f"{out} is inside the image folder {images}; it would be read as a class folder. "
            "Choose an output folder outside it",
        )
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """OUT, or the nearest folder above it that exists, must take new files: checked before any work."""
    base = out.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError("out", f"cannot create {out}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError("out", f"cannot write {out}: no write permission in {base}")


def _foreign_entries(out: Path, own: str | None) -> list[str]:
    """Names in OUT that no preparation wrote (hidden files and this run's exported source excepted)."""
    if not out.exists():
        return []
    mine = {own, f"{own}.tmp"} if own else set()
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in mine)


def _check_previous(out: Path, record: dict[str, Any], rel: list[str], own: str | None = None) -> str | None:
    """Rank 0: compare with an earlier (interrupted or finished) preparation in OUT. Returns an error
    message, or None after writing prepare.json / files.txt for a fresh start."""
    prev_file = out / PREPARE_JSON
    if prev_file.is_file():
        try:
            prev = json.loads(prev_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"{prev_file}: unreadable ({err}); move it away to start over"
        if prev.get("fingerprint") != record["fingerprint"]:
            old, new = prev.get("config", {}), record["config"]
            diffs = [
                f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
            return (
                f"{out} holds a preparation with different settings or a different image list "
                f"({'; '.join(diffs) or 'fingerprint differs'}). Rerun with the same settings to resume, "
                "or choose a new --out"
            )
        return None
    if out.exists():
        foreign = _foreign_entries(out, own)
        if foreign:
            return (
                f"{out} is not empty and holds no fasterdit preparation ({', '.join(sorted(foreign)[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); choose an empty or new --out"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out / FILES_TXT, "".join(r + "\n" for r in rel))
        _atomic_write_text(prev_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        return f"cannot write {out} ({err.strerror or err})"
    return None


def _valid_existing(
    out: Path, k: int, span: range, fingerprint: str, expected: dict[str, tuple[str, tuple[int, ...]]]
) -> tuple[Path, dict] | None:
    """A finished shard k from an earlier run whose header matches this run, or None. Shards that
    do not match are renamed aside (``.stale``), never deleted."""
    for path in sorted(out.glob(f"shard-{k:06d}-r*.safetensors")):
        try:
            meta = shard_metadata(path)
            header, _, _ = read_header(path)
            ok = (
                meta.get("fingerprint") == fingerprint
                and meta.get("shard") == k
                and meta.get("start") == span.start
                and meta.get("stop") == span.stop
            )
            n = int(meta.get("num_items", -1))
            for name, (dtype, shape) in expected.items():
                info = header.get(name)
                ok = ok and info is not None and info["dtype"] == dtype and list(info["shape"]) == [n, *shape]
        except DataError:
            ok = False
        if ok:
            return path, meta
        aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
        os.replace(path, aside)
        print(f"fasterdit prepare: {path.name} does not match this run; moved aside to {aside.name}")
    return None


def prepare(
    images: str | Path,
    out: str | Path,
    resolution: int = 256,
    vae: str | None = None,
    *,
    batch_size: int = 32,
    shard_size: int | None = None,
    flip: bool = False,
    strict: bool = False,
    device: str | None = None,
    dtype: str = "fp32",
    storage_dtype: str = "fp32",
    small: str = "upsample",
    workers: int | None = None,
    progress: bool = True,
    on_shard_written: Callable[[int, Path], None] | None = None,
    split: str = "train",
) -> dict[str, Any]:
    """Encode (or store) every image of ``images`` into shards under ``out``; returns the manifest.

    ``images`` may also name an embedded dataset (``mnist``, ``digits``; ``split`` picks the part, the
    training split by default): its images are exported once as PNGs under ``OUT/source-<name>-<split>``
    and prepared like any folder, and the manifest records that ``origin`` so that evaluation can score
    decoded samples with that dataset's classifier against its held-out split.

    Runs as one process, or as every rank of a ``torchrun`` job (each rank encodes its own block of
    shards; rank 0 writes the manifest after all are done). Rerunning with the same arguments resumes
    an interrupted run. ``on_shard_written(k, path)`` is called after each new shard (tests use it to
    simulate a crash).
    """
    images, out = Path(images).expanduser(), Path(out).expanduser()
    resolution = int(resolution)
    if resolution <= 0:
        raise ConfigError("resolution", f"must be a positive number of pixels, got {resolution}")
    if batch_size <= 0:
        raise ConfigError("batch_size", f"must be positive, got {batch_size}")
    if shard_size is not None and shard_size <= 0:
        raise ConfigError("shard_size", f"must be positive, got {shard_size}")
    if storage_dtype not in STORAGE_DTYPES:
        raise ConfigError(
            "storage_dtype", f"must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}"
        )
    if small not in SMALL:
        raise ConfigError("small", f"must be one of {SMALL}, got {small!r}")
    compute_dtype = parse_dtype(dtype)
    _check_out(out, images)

    dist_ = _setup_dist()
    try:
        dev = _resolve_device(device, dist_)
        origin = None
        if str(images) in EMBEDDED and not images.exists():
            name = str(images)
            origin = Origin(name, split, INFO[name].resolution).to_dict()
            images = out / f"source-{name}-{split}"
            if dist_.rank == 0:
                if not (out / PREPARE_JSON).is_file() and _foreign_entries(out, images.name):
                    raise DataError(
                        f"{out} is not empty and holds no fasterdit preparation; choose an empty or new --out"
                    )
                export_embedded(name, split, images)
            dist_.barrier()
        files, labels, class_to_idx, stray = scan_folder(images)
        rel = [f.relative_to(images).as_posix() for f in files]
        num_files = len(rel)
        del files  # 1.3M Path objects for ImageNet: keep only the strings

        # --- what the shards will hold
        if vae is not None:
            vae_name = vae_record_name(vae)
            model = load_vae(vae_name, device=dev, dtype=compute_dtype)
            factor = vae_downsample_factor(model)
            if resolution % factor:
                raise ConfigError(
                    "resolution", f"{resolution} is not divisible by the VAE's downsampling factor {factor}"
                )
            kind, channels, res = "latent", int(model.config.latent_channels), resolution // factor
            gray_input = int(model.config.in_channels) == 1  # e.g. mnist-ae: encode the luminance
            if int(model.config.in_channels) not in (1, 3):
                raise ConfigError("vae", f"takes {model.config.in_channels} channels; prepare feeds 1 or 3")
            scale, shift = vae_scaling_factor(model), vae_shift_factor(model)
            st = STORAGE_DTYPES[storage_dtype]
            item_bytes = (
                2 * channels * res * res * np.dtype(np.float32 if st == "F32" else np.float16).itemsize
            )
            item_bytes *= 2 if flip else 1
            expected = {"mean": (st, (channels, res, res)), "logvar": (st, (channels, res, res))}
        else:
            model, vae_name, kind, channels, res, scale, shift = None, None, "pixel", 3, resolution, 1.0, 0.0
            gray_input = False
            item_bytes = 3 * res * res
            expected = {"pixels": ("U8", (3, res, res))}
        expected.update({"label": ("I64", ()), "index": ("I64", ()), "flipped": ("U8", ())})

        record_prev: dict[str, Any] | None = None
        if (out / PREPARE_JSON).is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                record_prev = json.loads((out / PREPARE_JSON).read_text())
        if shard_size is None:  # keep the earlier run's shard size when resuming
            prev_size = (record_prev or {}).get("config", {}).get("shard_size")
            shard_size = (
                int(prev_size) if prev_size else max(16, min(16384, SHARD_TARGET_BYTES // item_bytes))
            )
        files_sha = hashlib.sha256("\n".join(rel).encode("utf-8")).hexdigest()
        config = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "vae": vae_name,
            "image_resolution": resolution,
            "flip": bool(flip),
            "small": small,
            "storage_dtype": storage_dtype if kind == "latent" else "uint8",
            "dtype": dtype if kind == "latent" else None,
            "shard_size": int(shard_size),
            "num_files": len(rel),
            "files_sha256": files_sha,
        }
        if origin is not None:  # only then: the fingerprints of earlier folder preparations stay valid
            config["origin"] = origin
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
        shard_size = int(shard_size)
        num_shards = math.ceil(num_files / shard_size)
        record = {"fingerprint": fingerprint, "config": config, "images": str(images.resolve())}

        own = images.name if origin is not None else None
        error = _check_previous(out, record, rel, own) if dist_.rank == 0 else None
        error = dist_.broadcast(error)
        if error:
            raise DataError(error)

        # --- this rank's shards: a contiguous block of shard numbers
        first = dist_.rank * num_shards // dist_.world
        last = (dist_.rank + 1) * num_shards // dist_.world
        mine = list(range(first, last))

        def shard_range(k: int) -> range:
            return range(k * shard_size, min((k + 1) * shard_size, num_files))

        for tmp in out.glob("shard-*.safetensors.tmp-*"):  # left by a crash: incomplete by construction
            k_tmp = int(tmp.name[6:12]) if tmp.name[6:12].isdigit() else -1
            if first <= k_tmp < last:
                tmp.unlink(missing_ok=True)
        done: dict[int, tuple[Path, dict]] = {}
        for k in mine:
            found = _valid_existing(out, k, shard_range(k), fingerprint, expected)
            if found is not None:
                done[k] = found
        todo = [k for k in mine if k not in done]

        n_mine = sum(len(shard_range(k)) for k in mine)
        n_done = sum(len(shard_range(k)) for k in done)
        bar = tqdm(
            total=n_mine,
            initial=n_done,
            unit="img",
            desc=f"prepare {kind}s" + (f" (rank 0 of {dist_.world})" if dist_.active else ""),
            disable=not progress or dist_.rank != 0,
            dynamic_ncols=True,
        )

        # batches never cross a shard boundary: resumed shards are bit-identical to a one-go run
        batches = [
            list(shard_range(k))[i : i + batch_size]
            for k in todo
            for i in range(0, len(shard_range(k)), batch_size)
        ]
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) // dist_.world - 1))
        loader = torch.utils.data.DataLoader(
            _Images(images, rel, resolution, small),
            batch_sampler=batches,
            num_workers=int(workers) if batches else 0,
            collate_fn=_as_list,
        )
        sd = {"fp32": np.float32, "fp16": np.float16}[storage_dtype]

        current: int | None = None
        buf: dict[str, list[np.ndarray]] = {}
        skipped: list[list[str]] = []
        warned: list[list[str]] = []

        def flush(k: int) -> None:
            cat = {name: np.concatenate(parts) if parts else None for name, parts in buf.items()}
            tensors: dict[str, np.ndarray] = {}
            for name, (_, shape) in expected.items():
                arr = cat.get(name)
                if arr is None:  # every file of the shard was skipped
                    arr = np.zeros(
                        (0, *shape),
                        dtype={
                            "label": np.int64,
                            "index": np.int64,
                            "flipped": np.uint8,
                            "pixels": np.uint8,
                        }.get(name, sd),
                    )
                tensors[name] = arr
            r = shard_range(k)
            meta = {
                "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "shard": k,
                "start": r.start,
                "stop": r.stop,
                "num_items": int(tensors["label"].shape[0]),
                "skipped": skipped.copy(),
                "warnings": warned.copy(),
                "stats": _shard_stats(tensors, scale, shift),
            }
            path = out / shard_name(k, dist_.rank)
            _write_shard(path, tensors, meta)
            done[k] = (path, meta)
            if on_shard_written is not None:
                on_shard_written(k, path)

        for batch in loader:
            k = batch[0][0] // shard_size
            if current is not None and k != current:
                flush(current)
            if k != current:
                current, buf, skipped, warned = k, {n: [] for n in expected}, [], []
            good = []
            for i, arr, reason, warning in batch:
                if arr is None:
                    if strict:
                        raise DataError(f"{images / rel[i]}: {reason} (--strict makes bad files fatal)")
                    skipped.append([rel[i], reason])
                else:
                    if warning is not None:
                        warned.append([rel[i], warning])
                    good.append((i, arr))
            bar.update(len(batch))
            if not good:
                continue
            idx = np.array([i for i, _ in good], dtype=np.int64)
            lab = np.array([labels[i] for i, _ in good], dtype=np.int64)
            pix = np.stack([a for _, a in good])  # (B, H, W, 3) uint8
            if kind == "pixel":
                buf["pixels"].append(np.ascontiguousarray(pix.transpose(0, 3, 1, 2)))
                buf["label"].append(lab)
                buf["index"].append(idx)
                buf["flipped"].append(np.zeros(len(idx), dtype=np.uint8))
                continue
            x = to_tensor(_luminance(pix)[..., None] if gray_input else pix)
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
            buf["mean"].append(mean.astype(sd))
            buf["logvar"].append(logvar.astype(sd))
            buf["label"].append(lab)
            buf["index"].append(idx)
            buf["flipped"].append(flipped)
        if current is not None:
            flush(current)
        bar.close()

        # --- gather, reduce, and write the manifest once
        stats = _finish_stats([done[k][1]["stats"] for k in mine], kind, dist_)
        gathered = dist_.gather(
            {k: (p.name, m["num_items"], m["skipped"], m["warnings"]) for k, (p, m) in done.items()}
        )
        manifest: dict[str, Any] = {}
        if dist_.rank == 0:
            allinfo = {k: v for part in gathered for k, v in part.items()}
            if sorted(allinfo) != list(range(num_shards)):
                raise DataError(
                    f"{out}: internal error, shards {sorted(set(range(num_shards)) - set(allinfo))} missing"
                )
            all_skipped = list(stray)
            all_warn: list[tuple[str, str]] = []
            shards = []
            for k in range(num_shards):
                name, n, sk, wn = allinfo[k]
                shards.append({"file": name, "num_items": int(n), "rank": int(name.split("-r")[1][:3])})
                all_skipped += [(str(images / r), reason) for r, reason in sk]
                all_warn += [(str(images / r), msg) for r, msg in wn]
            where = images.resolve()
            _atomic_write_text(
                out / SKIPPED_TSV,
                f"# fasterdit prepare: {len(all_skipped)} file(s) under {where} skipped\n# path\treason\n"
                + "".join(f"{_tsv_field(p)}\t{_tsv_field(r)}\n" for p, r in all_skipped),
            )
            _atomic_write_text(
                out / WARNINGS_TSV,
                f"# fasterdit prepare: {len(all_warn)} file(s) under {where} used with a warning\n"
                "# path\twarning\n" + "".join(f"{_tsv_field(p)}\t{_tsv_field(r)}\n" for p, r in all_warn),
            )
            num_items = sum(s["num_items"] for s in shards)
            if num_items == 0:
                raise DataError(
                    f"no usable image in {images}: all {num_files} files were skipped; "
                    f"see {out / SKIPPED_TSV}"
                )
            manifest = {
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "vae": vae_name,
                "scaling_factor": scale,
                "shift_factor": shift,
                "image_resolution": resolution,
                "resolution": res,
                "channels": channels,
                "num_classes": len(class_to_idx),
                "class_to_idx": class_to_idx,
                "num_items": num_items,
                "num_images": num_files - sum(len(allinfo[k][2]) for k in allinfo),
                "flip": ("stored" if kind == "latent" else "random") if flip else "none",
                "storage_dtype": config["storage_dtype"],
                "shards": shards,
                "channel_mean": stats["channel_mean"],
                "channel_std": stats["channel_std"],
                "std": stats["std"],
                "stats": {
                    "of": "scaled latents z = (mean + exp(logvar/2)*eps - shift_factor) * scaling_factor"
                    if kind == "latent"
                    else "pixels in [-1, 1]",
                    "method": "analytic: E[z] = mean of means; Var[z] = Var[means] + E[posterior var]"
                    if kind == "latent"
                    else "exact over all pixels",
                    **{k: v for k, v in stats.items() if k not in ("channel_mean", "channel_std", "std")},
                },
                "skipped": {"count": len(all_skipped), "report": SKIPPED_TSV},
                "warnings": {"count": len(all_warn), "report": WARNINGS_TSV},
                "files": FILES_TXT,
                "images": str(images.resolve()),
                "origin": origin,
                "settings": {
                    "shard_size": shard_size,
                    "small": small,
                    "dtype": config["dtype"],
                    "world_size": dist_.world,
                },
            }
            _atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        manifest = dist_.broadcast(manifest)
        return manifest
    finally:
        if dist_.owns_init:
            with contextlib.suppress(RuntimeError, ValueError):  # cleanup must not hide the real error
                dist.destroy_process_group()


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` RGB -> uint8 luminance as Pillow's ``convert("L")`` computes it (ITU-R 601 in
    16-bit fixed point); exact for gray images, whose three channels are equal."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _encode_cpu(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch and bring ``(mean, logvar)`` back to the CPU as float32 NumPy arrays."""
    mean, logvar = encode_distribution(model, x)
    return mean.cpu().numpy(), logvar.cpu().numpy()
