"""``fasterdit sample``: samples of a checkpoint (ours or an official DiT/SiT ``.pt``) as a PNG grid or an
ADM-style ``.npz`` (uint8 NHWC images under ``arr_0``, int64 labels under ``arr_1``; what FID tools read).

Examples::

    fasterdit sample --ckpt runs/demo --num-samples 100 --labels 0,1,2,3,4,5,6,7,8,9 --out grid.png
    fasterdit sample --ckpt runs/demo --num-samples 1000 --sampler heun --steps 25 --out samples.npz
    torchrun --nproc_per_node 8 -m fasterdit sample --ckpt DiT-XL-2-256x256.pt --num-samples 50000 \\
        --sampler ddpm --steps 250 --cfg 1.5 --out samples.npz          # FID-50K, resumable
    fasterdit sample --ckpt DiT-XL-2-256x256.pt --num-samples 50000 --cfg 1.5 --out s.npz --dry-run

An ``.npz`` is written by a sampling job (:mod:`fasterdit.generate.job`): sample i's noise and
label depend only on (seed, i), so the file is the same for any number of processes and any batch
size; finished batches are kept in ``OUT.work/`` and a rerun resumes; ``OUT.json`` records how the
samples were made. A PNG grid is sampled in this process.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fasterdit.commands._sampling import (
    add_sampling_arguments,
    build_settings,
    check_counts,
    origin_crop,
    parse_labels,
    print_dry_run,
    run_job,
    summary,
    vae_id,
)
from fasterdit.errors import ConfigError

HELP = "Sample a checkpoint (ours or an official DiT/SiT .pt) to a PNG grid or an ADM-style .npz."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="run dir, checkpoint dir, or an official DiT or SiT checkpoint (.pt)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="grid.png or samples.npz")
    add_sampling_arguments(p, num=64, batch=256)
    p.add_argument(
        "--labels",
        metavar="L,L,...",
        help="class labels; each gets an equal share of the samples, one grid row per label "
        "(default: every class for a PNG of <= 10 classes, else uniform random; see --balanced)",
    )
    p.add_argument("--nrow", type=int, help="PNG: images per row (default: samples per label)")


def _label_mode(args: argparse.Namespace, num_classes: int, png: bool) -> tuple[str, tuple[int, ...] | None]:
    given = parse_labels(args.labels)
    if given:
        return "given", given
    if png and 0 < num_classes <= 10:
        return "given", tuple(range(num_classes))
    return ("balanced" if args.balanced else "uniform"), None


def _grid(lm, settings, out: Path, nrow: int | None, batch_size: int, device, vae: str | None) -> None:
    """A PNG grid, sampled in this process with the same per-index noise as a job."""
    import numpy as np
    import torch

    from fasterdit.generate.job import sample_range
    from fasterdit.viz import save_image_grid

    decode = None
    if vae is not None:
        from fasterdit.data.vae import latent_decoder

        decode = latent_decoder(vae, device, crop=origin_crop(lm), batch_size=16)

    parts = []
    for start in range(0, settings.num_samples, batch_size):
        end = min(start + batch_size, settings.num_samples)
        parts.append(sample_range(lm.model, lm.recipe, settings, start, end, device, decode)[0])
    images = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    per = math.ceil(settings.num_samples / len(settings.labels)) if settings.labels else None
    nrow = nrow or per or max(1, math.ceil(math.sqrt(len(images))))
    scale = max(1, min(4, 128 // max(1, images.shape[-1])))
    save_image_grid(images, out, nrow=nrow, scale=scale)


def run(args: argparse.Namespace) -> int:
    from fasterdit.generate.checks import check_sampling_args, prepare_output
    from fasterdit.generate.loading import load_trained
    from fasterdit.runtime.distributed import cleanup, init_distributed

    out = Path(args.out)
    png = out.suffix.lower() == ".png"
    if out.suffix.lower() not in (".png", ".npz"):
        raise ConfigError("--out", f"must end in .png or .npz, got {out.name!r}")
    check_counts(args, 1)
    check_sampling_args(args.steps, args.cfg, args.nrow)
    if not args.dry_run:
        out = prepare_output(out, "--out")  # a bad path fails now, not after all the sampling
    dist = init_distributed(args.device)
    try:
        if png and dist.distributed:
            raise ConfigError("--out", "a PNG grid is sampled by one process; run it without torchrun")
        lm = load_trained(args.ckpt, ema=not args.no_ema, device=dist.device, family=args.family)
        d = lm.sampling
        mode, labels = _label_mode(args, int(lm.model.num_classes or 0), png)
        settings = build_settings(
            args, lm, sampler=args.sampler or d.sampler, steps=args.steps or d.steps,
            cfg_scale=args.cfg if args.cfg is not None else d.cfg_scale, label_mode=mode, labels=labels,
        )  # fmt: skip
        if args.dry_run:
            if dist.is_main:
                print_dry_run(lm, settings, args)
            return 0
        if png:
            _grid(lm, settings, out, args.nrow, args.batch_size, dist.device, vae_id(args, lm))
            print(f"wrote {out}: {settings.num_samples} samples, {settings.sampler}, {settings.steps} steps")
            return 0
        res = run_job(args, lm, settings, out, dist)
        if dist.is_main:
            print(summary(res, lm, settings))
        return 0
    finally:  # a normal exit (no exception propagating) waits for every rank: see cleanup
        cleanup(synchronize=sys.exc_info()[0] is None)
