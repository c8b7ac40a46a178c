"""``fasterdit sample``: samples of a checkpoint (ours or an official DiT/SiT ``.pt``) as a PNG grid or an
ADM-style ``.npz`` (uint8 NHWC images under ``arr_0``, int64 labels under ``arr_1``; what FID tools read).

Examples::

    fasterdit sample --ckpt runs/demo --num-samples 100 --labels 0,1,2,3,4,5,6,7,8,9 --out grid.png
    fasterdit sample --ckpt runs/demo --num-samples 1000 --sampler heun --steps 25 --out samples.npz
    fasterdit sample --ckpt runs/demo --out grid.png        # the run's grid, as training drew it
    torchrun --nproc_per_node 8 -m fasterdit sample --ckpt DiT-XL-2-256x256.pt --num-samples 50000 \\
        --sampler ddpm --num-sampling-steps 250 --cfg-scale 1.5 --out samples.npz    # FID-50K, resumable
    fasterdit sample --ckpt DiT-XL-2-256x256.pt --num-fid-samples 50000 --cfg-scale 1.5 --out s.npz --dry-run

An ``.npz`` is written by a sampling job (:mod:`fasterdit.generate.job`): sample i's noise and
label depend only on (seed, i), so the file is the same for any number of processes and any batch
size; finished batches are kept in ``OUT.work/`` and a rerun resumes; ``OUT.json`` records how the
samples were made. A PNG grid is sampled in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fasterdit.commands._sampling import (
    add_sampling_arguments,
    build_settings,
    check_args,
    parse_labels,
    print_dry_run,
    resolve,
    run_job,
    summary,
)
from fasterdit.errors import ConfigError

if TYPE_CHECKING:
    from fasterdit.generate.loading import LoadedModel

HELP = "Sample a checkpoint (ours or an official DiT/SiT .pt) to a PNG grid or an ADM-style .npz."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="run dir, checkpoint dir, or an official DiT or SiT checkpoint (.pt)",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE",
        help="grid.png, samples.npz, or DIR/ (a trailing slash or an existing folder: one PNG per sample "
        "and labels.csv, from DIR/samples.npz)",
    )  # fmt: skip
    add_sampling_arguments(p, purpose="sample")
    p.add_argument(
        "--labels",
        metavar="L,L,...",
        help="class labels; each gets an equal share of the samples, one grid row per label "
        "(default for a PNG: the run's grid rows, sample.classes or every class up to 10; "
        "for an .npz: uniform random, see --balanced)",
    )
    p.add_argument("--nrow", type=int, help="PNG: images per row (default: samples per label)")


def _label_mode(args: argparse.Namespace, lm: LoadedModel, png: bool) -> tuple[str, tuple[int, ...] | None]:
    from fasterdit.generate.defaults import grid_classes

    given = parse_labels(args.labels)
    if given:
        return "given", given
    if png and lm.data.num_classes > 0:
        return "given", tuple(grid_classes(lm.cfg, lm.data.num_classes))
    return ("balanced" if args.balanced else "uniform"), None


def run(args: argparse.Namespace) -> int:
    from fasterdit.generate.checks import prepare_output
    from fasterdit.generate.decode import decoder_for
    from fasterdit.generate.grid import write_grid
    from fasterdit.generate.loading import load_on_every_rank
    from fasterdit.runtime.distributed import cleanup, init_distributed

    out = Path(args.out)
    folder = args.out.endswith(("/", os.sep)) or out.is_dir()
    if folder:
        out = out / "samples.npz"  # the job's file; the PNGs are written from it
    png = out.suffix.lower() == ".png"
    if out.suffix.lower() not in (".png", ".npz"):
        raise ConfigError("--out", f"must end in .png or .npz (or / for a folder), got {out.name!r}")
    check_args(args, 1, png=png)
    if args.nrow is not None and args.nrow < 1:
        raise ConfigError("--nrow", f"must be >= 1 (leave it out for one row per label), got {args.nrow}")
    if not args.dry_run:
        out = prepare_output(out, "--out")  # a bad path fails now, not after all the sampling
    dist = init_distributed(args.device)
    try:
        if png and dist.distributed:
            raise ConfigError("--out", "a PNG grid is sampled by one process; run it without torchrun")
        lm = load_on_every_rank(args.ckpt, dist, ema=not args.no_ema, family=args.family)
        resolved = resolve(args, lm, "sample")
        mode, labels = _label_mode(args, lm, png)
        settings = build_settings(args, lm, resolved, label_mode=mode, labels=labels)
        if args.dry_run:
            if dist.is_main:
                print_dry_run(lm, resolved, settings, args)
            return 0
        if png:
            decode = decoder_for(lm.data, dist.device, args.vae)
            write_grid(
                lm.model, lm.recipe, settings, out, batch_size=args.batch_size, device=dist.device,
                decode=decode, nrow=args.nrow, progress=not args.no_progress,
            )  # fmt: skip
            print(f"wrote {out}: {settings.num_samples} samples, {settings.sampler}, {settings.steps} steps")
            return 0
        res = run_job(args, lm, settings, out, dist)
        if dist.is_main:
            print(summary(res, lm, settings))
            if folder:
                from fasterdit.generate.folder import LABELS_CSV, write_image_folder

                n = write_image_folder(out, out.parent)
                print(f"wrote {n} PNGs and {LABELS_CSV} to {out.parent}")
        return 0
    finally:  # a normal exit (no exception propagating) waits for every rank: see cleanup
        cleanup(synchronize=sys.exc_info()[0] is None)
