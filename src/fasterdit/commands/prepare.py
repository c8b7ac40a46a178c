"""``fasterdit prepare``: encode an image folder into VAE-latent (or pixel) shards for training.

Run it once per dataset; under ``torchrun --nproc_per_node N`` every rank encodes its own shards.
Rerun the same command after an interruption to resume. See docs/data.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "Encode a folder of images into VAE-latent (or pixel) shards and a manifest; resumable; torchrun."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        required=True,
        type=Path,
        help="folder of images (one sub-folder per class, or flat), or an embedded dataset: mnist, digits",
    )
    p.add_argument(
        "--split",
        choices=("train", "heldout", "all"),
        default="train",
        help="the part of an embedded dataset to prepare (train: the held-out split stays the FID reference)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (new, empty, or an earlier run to resume)"
    )
    p.add_argument(
        "--resolution", type=int, default=256, help="image side after the ADM/DiT centre crop (256)"
    )
    p.add_argument(
        "--vae",
        default=None,
        help="diffusers AutoencoderKL: a local folder, a hub id (stabilityai/sd-vae-ft-ema), ema/mse, or the "
        "built-in mnist-ae (the shipped MNIST autoencoder); "
        "without it pixels are stored (uint8) for pixel-space training",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (32)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="source images per shard (default: about 256 MB per shard)",
    )
    p.add_argument(
        "--flip",
        action="store_true",
        help="horizontal-flip augmentation: latents of mirrored images are stored too (doubles the set); "
        "pixel sets are mirrored at random when read",
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of skipping it"
    )
    p.add_argument(
        "--small",
        choices=("upsample", "skip", "pad"),
        default="upsample",
        help="images smaller than --resolution: upsample (bicubic, default), skip, or pad (centred on black, "
        "not resampled: 28x28 digits for a 32x32 autoencoder); upsampled/padded ones go to warnings.tsv",
    )
    p.add_argument("--skip-small", action="store_true", help="the same as --small skip")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="encoder device (default: cuda if present)"
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="encoder precision (fp32)"
    )
    p.add_argument(
        "--storage-dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="dtype of the stored latent mean/logvar; fp16 halves the disk space (fp32)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding worker processes per rank (auto)"
    )
    p.add_argument(
        "--align-encoder",
        default=None,
        metavar="NAME",
        help="also store REPA's patch features of this encoder (mnist-ssl, dinov2-vitb14, a Dinov2Model "
        "folder or hub id; docs/repa.md)",
    )
    p.add_argument(
        "--align-grid",
        type=int,
        default=None,
        metavar="G",
        help="token-grid side of the stored features (default: stored side / 2, the /2 DiTs' grid)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from fasterdit.data.prepare import prepare

    manifest = prepare(
        args.images,
        args.out,
        args.resolution,
        args.vae,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        flip=args.flip,
        strict=args.strict,
        device=args.device,
        dtype=args.precision,
        storage_dtype=args.storage_dtype,
        small="skip" if args.skip_small else args.small,
        workers=args.workers,
        progress=not args.no_progress,
        split=args.split,
        align_encoder=args.align_encoder,
        align_grid=args.align_grid,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    m = manifest
    what = f"latents of {m['vae']}" if m["kind"] == "latent" else "pixels"
    classes = f"{m['num_classes']} classes" if m["num_classes"] else "unconditional"
    print(
        f"prepared {m['num_items']} items ({m['num_images']} images, {classes}) as {what}: "
        f"{m['channels']}x{m['resolution']}x{m['resolution']} in {len(m['shards'])} shards under {args.out}"
    )
    mean = ", ".join(f"{v:.4f}" for v in m["channel_mean"])
    std = ", ".join(f"{v:.4f}" for v in m["channel_std"])
    print(f"per-channel mean [{mean}], std [{std}], pooled std {m['std']:.4f}")
    if m["skipped"]["count"]:
        print(f"skipped {m['skipped']['count']} files: see {args.out / m['skipped']['report']}")
    if m["warnings"]["count"]:
        print(f"{m['warnings']['count']} files used with warnings: see {args.out / m['warnings']['report']}")
    print(f"next: fasterdit train --config <config> --set data.source={args.out}")
    return 0
