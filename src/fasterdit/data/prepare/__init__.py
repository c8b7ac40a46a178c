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

Modules: :mod:`.plan` (what the shards hold, the settings fingerprint, the shard ranges), :mod:`.outdir`
(OUT's names, the checks before any work, resuming), :mod:`.encode` (one shard's batches through the
VAE, the shard file), :mod:`.report` (statistics over ranks, the reports, the manifest). :func:`prepare`
below runs them in that order; the torchrun group, the device and the atomic writes come from
:mod:`fasterdit.runtime`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fasterdit.data.embedded import EMBEDDED, INFO, Origin, export_embedded
from fasterdit.data.encoders import load_encoder
from fasterdit.data.folder import SMALL, check_resolution, scan_folder
from fasterdit.data.prepare.encode import encode_shards, image_loader, shard_batches, write_shard
from fasterdit.data.prepare.outdir import (
    PREPARE_JSON,
    check_out,
    check_previous,
    foreign_entries,
    read_previous_record,
    remove_crash_leftovers,
    valid_existing,
)
from fasterdit.data.prepare.plan import Plan, latent_content, make_plan, pixel_content, with_features
from fasterdit.data.prepare.report import ShardInfo, finish_stats, write_manifest
from fasterdit.data.prepared import STORAGE_DTYPES
from fasterdit.data.vae import load_vae, parse_dtype, vae_record_name
from fasterdit.errors import ConfigError, DataError
from fasterdit.runtime.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    join_process_group,
    object_group,
    resolve_device,
    torchrun_ranks,
)

__all__ = ["prepare"]

DIST_TIMEOUT = timedelta(hours=48)  # ranks with resumed shards wait for the others at the end
#: bounds of what one process holds: decoding workers (processes), an encoder batch as float32, and a
#: shard, which is assembled in memory before it is written (the default aims at 256 MB)
MAX_WORKERS = 256
MAX_BATCH_BYTES = 16 * 2**30
MAX_SHARD_BYTES = 4 * 2**30


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
    align_encoder: str | None = None,
    align_grid: int | None = None,
) -> dict[str, Any]:
    """Encode (or store) every image of ``images`` into shards under ``out``; returns the manifest.

    ``images`` may also name an embedded dataset (``mnist``, ``digits``; ``split`` picks the part, the
    training split by default): its images are exported once as PNGs under ``OUT/source-<name>-<split>``
    and prepared like any folder, and the manifest records that ``origin`` so that evaluation can score
    decoded samples with that dataset's classifier against its held-out split.

    Runs as one process, or as every rank of a ``torchrun`` job (each rank encodes its own block of
    shards; rank 0 writes the manifest after all are done). Rerunning with the same arguments resumes
    an interrupted run. ``align_encoder`` stores REPA's patch features of that encoder beside each item
    (float16, on an ``align_grid`` x ``align_grid`` token grid; default: the stored side / 2, the grid of
    the /2 DiTs), so that training need not run the encoder (docs/repa.md). ``on_shard_written(k, path)``
    is called after each new shard (tests use it to
    simulate a crash).
    """
    images, out = Path(images).expanduser(), Path(out).expanduser()
    resolution = check_resolution(resolution)
    _check_args(resolution, batch_size, shard_size, storage_dtype, small, workers)
    compute_dtype = parse_dtype(dtype)
    check_out(out, images)

    # Our collectives are small CPU objects: a gloo group even on GPUs (no device bookkeeping), with a
    # long timeout, since a rank whose shards were all done before a resume waits for the others.
    info = join_process_group(_encoder_device(device), DIST_TIMEOUT, backend="gloo")
    try:
        group = object_group(info, DIST_TIMEOUT)
        images, origin = _source_folder(images, out, split, info, group)
        files, labels, class_to_idx, stray = scan_folder(images)
        rel = [f.relative_to(images).as_posix() for f in files]
        del files  # 1.3M Path objects for ImageNet: keep only the strings

        # --- what the shards will hold, and whether OUT may be resumed
        if vae is not None:
            vae_name = vae_record_name(vae)
            model = load_vae(vae_name, device=info.device, dtype=compute_dtype)
            content = latent_content(model, vae_name, resolution, storage_dtype, flip)
        else:
            model, content = None, pixel_content(resolution, storage_dtype)
        encoder = None
        if align_encoder is not None:
            encoder = load_encoder(align_encoder, info.device)
            grid = align_grid if align_grid is not None else content.res // 2
            content = with_features(content, align_encoder, grid, encoder.dim, flip)
        plan = make_plan(
            content, rel, resolution=resolution, flip=flip, small=small, storage_dtype=storage_dtype,
            dtype=dtype, shard_size=shard_size, origin=origin, previous=read_previous_record(out),
        )  # fmt: skip
        _check_shard_bytes(plan)
        own = images.name if origin is not None else None
        error = check_previous(out, plan.record(images), rel, own) if info.is_main else None
        error = broadcast_object(error, group=group)
        if error:
            raise DataError(error)

        # --- this rank's shards: a contiguous block of shard numbers; reuse the finished ones
        mine = plan.rank_block(info.rank, info.world_size)
        remove_crash_leftovers(out, mine)
        done = _finished_shards(out, plan, mine)
        todo = [k for k in mine if k not in done]

        # --- encode the others
        batches = shard_batches(plan, todo, batch_size)
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) // info.world_size - 1))
        loader = image_loader(images, rel, resolution, small, batches, workers)
        bar = _progress_bar(plan, mine, done, info, progress)
        shards = encode_shards(
            loader, plan, model, images=images, rel=rel, labels=labels, flip=flip, strict=strict,
            on_batch=bar.update, encoder=encoder,
        )  # fmt: skip
        for shard in shards:
            path, meta = write_shard(out, info.rank, plan, shard)
            done[shard.k] = (path, meta)
            if on_shard_written is not None:
                on_shard_written(shard.k, path)
        bar.close()

        # --- gather, reduce, and write the manifest once
        stats = finish_stats([done[k][1]["stats"] for k in mine], content.kind, group)
        mine_info: dict[int, ShardInfo] = {
            k: (p.name, m["num_items"], m["skipped"], m["warnings"]) for k, (p, m) in done.items()
        }
        gathered = gather_objects(mine_info, group=group)
        manifest: dict[str, Any] = {}
        if info.is_main:
            allinfo = {k: v for part in gathered for k, v in part.items()}
            manifest = write_manifest(
                out, plan, allinfo, stats, images=images, stray=stray, class_to_idx=class_to_idx,
                origin=origin, world=info.world_size,
            )  # fmt: skip
        return broadcast_object(manifest, group=group)
    finally:
        if info.owns_group:
            with contextlib.suppress(RuntimeError, ValueError):  # cleanup must not hide the real error
                cleanup()


def _check_args(
    resolution: int,
    batch_size: int,
    shard_size: int | None,
    storage_dtype: str,
    small: str,
    workers: int | None,
) -> None:
    """The settings that need no file: checked before any work."""
    if batch_size <= 0:
        raise ConfigError("batch_size", f"must be positive, got {batch_size}")
    batch_bytes = batch_size * 3 * resolution**2 * 4  # decoded, as float32
    if batch_bytes > MAX_BATCH_BYTES:
        most = MAX_BATCH_BYTES // (3 * resolution**2 * 4)
        raise ConfigError(
            "batch_size",
            f"{batch_size} images of {resolution}x{resolution} are over {MAX_BATCH_BYTES // 2**30} GB "
            f"as float32; at most {most}",
        )
    if workers is not None and not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(
            "workers", f"must be in [0, {MAX_WORKERS}] (0: decode in this process), got {workers}"
        )
    if shard_size is not None and shard_size <= 0:
        raise ConfigError("shard_size", f"must be positive, got {shard_size}")
    if storage_dtype not in STORAGE_DTYPES:
        raise ConfigError(
            "storage_dtype", f"must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}"
        )
    if small not in SMALL:
        raise ConfigError("small", f"must be one of {SMALL}, got {small!r}")


def _check_shard_bytes(plan: Plan) -> None:
    """A shard is assembled in memory before it is written: refuse one over MAX_SHARD_BYTES."""
    images = min(plan.shard_size, plan.num_files)
    shard_bytes = images * plan.content.item_bytes
    if shard_bytes > MAX_SHARD_BYTES:
        most = MAX_SHARD_BYTES // plan.content.item_bytes
        raise ConfigError(
            "shard_size",
            f"{images} images per shard are {shard_bytes / 2**30:.1f} GB of {plan.content.kind}s, "
            f"over {MAX_SHARD_BYTES // 2**30} GB (a shard is built in memory); at most {most}",
        )


def _encoder_device(device: str | None) -> torch.device:
    """The encoder's device: ``None`` picks the GPU when there is one. Unlike training, several ranks
    may share a GPU (the encoder needs no NCCL), so a rank's GPU is its local rank modulo the GPUs."""
    _, _, local_rank = torchrun_ranks()
    slot = local_rank % torch.cuda.device_count() if torch.cuda.is_available() else local_rank
    return resolve_device(device or "auto", slot, field="device")


def _source_folder(
    images: Path, out: Path, split: str, info: DistInfo, group: Any
) -> tuple[Path, dict[str, Any] | None]:
    """The folder to prepare and its origin: ``images`` itself, or the embedded dataset it names,
    exported once (by rank 0) under OUT."""
    if str(images) not in EMBEDDED or images.exists():
        return images, None
    name = str(images)
    origin = Origin(name, split, INFO[name].resolution).to_dict()
    images = out / f"source-{name}-{split}"
    if info.is_main:
        if not (out / PREPARE_JSON).is_file() and foreign_entries(out, images.name):
            raise DataError(
                f"{out} is not empty and holds no fasterdit preparation; choose an empty or new --out"
            )
        export_embedded(name, split, images)
    barrier(group)
    return images, origin


def _finished_shards(out: Path, plan: Plan, mine: range) -> dict[int, tuple[Path, dict[str, Any]]]:
    """This rank's shards that an earlier run finished with this plan: shard -> (path, header metadata)."""
    done = {}
    for k in mine:
        found = valid_existing(out, k, plan.shard_range(k), plan.fingerprint, plan.content.expected)
        if found is not None:
            done[k] = found
    return done


def _progress_bar(plan: Plan, mine: range, done: dict[int, Any], info: DistInfo, progress: bool) -> tqdm:
    """Images of this rank's block, the resumed shards' counted as done; shown by rank 0 only."""
    return tqdm(
        total=sum(len(plan.shard_range(k)) for k in mine),
        initial=sum(len(plan.shard_range(k)) for k in done),
        unit="img",
        desc=f"prepare {plan.content.kind}s"
        + (f" (rank 0 of {info.world_size})" if info.distributed else ""),
        disable=not progress or not info.is_main,
        dynamic_ncols=True,
    )
