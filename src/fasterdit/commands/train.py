"""``fasterdit train``: train a DiT from a YAML config, resuming automatically; runs under torchrun.

Examples::

    fasterdit train --config demo --run-dir runs/demo        # a shipped config, by name
    fasterdit train --config mnist --set recipe=sit --run-dir runs/mnist-sit   # one config, 3 presets
    fasterdit train --run-dir runs/demo                       # resume with the run's own config.yaml
    fasterdit train --config imagenet256 --dry-run    # DiT-XL/2: params, FLOPs, memory, time per step on GPUs
    torchrun --nproc_per_node 8 -m fasterdit train --config imagenet256 \
        --set model.name=DiT-B/2 --set train.steps=400000 --run-dir runs/b2
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from fasterdit.errors import UserError

HELP = "Train a DiT from a YAML config (--set key=value overrides); resumes; runs under torchrun."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        metavar="YAML",
        help="config file, or a name from ./configs or the shipped ones (demo, mnist, mnist-latent, "
        "imagenet256); default: <run-dir>/config.yaml",
    )
    p.add_argument("--run-dir", metavar="DIR", help="output directory (default: runs/<config name>)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=2e-4 --set recipe.loss.direction_weight=0"
        " (repeatable)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start from scratch even if the run dir holds checkpoints (refuses to mix runs)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though the seed or the recipe differs from the run's checkpoints",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and print parameters, FLOPs/step, memory and time per step on GPUs",
    )
    p.add_argument(
        "--gpus", type=int, default=None, help="--dry-run: GPUs sharing the batch (default: WORLD_SIZE or 1)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="--dry-run: assumed model FLOPs utilisation")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)"
    )


def _load(args: argparse.Namespace):
    from fasterdit.run.config import load_config

    spec = args.config
    run_cfg = Path(args.run_dir) / "config.yaml" if args.run_dir else None
    if spec is None:
        if run_cfg is None or not run_cfg.is_file():
            raise UserError(
                "give --config (e.g. --config demo, or a YAML file), or a --run-dir that holds config.yaml"
            )
        spec = run_cfg
    cfg = load_config(spec, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(str(spec)).stem
    return cfg, run_dir


def run(args: argparse.Namespace) -> int:
    cfg, run_dir = _load(args)
    if args.dry_run:
        return _dry_run(cfg, args)

    from fasterdit.run import checkpoint as ckpt_mod
    from fasterdit.runtime.distributed import cleanup, init_distributed
    from fasterdit.train.trainer import Trainer

    if args.no_resume and ckpt_mod.latest_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds checkpoints; choose a new --run-dir (nothing was changed)")
    dist = init_distributed(cfg.train.device)
    trainer: Trainer | None = None
    try:
        trainer = Trainer(
            cfg,
            run_dir,
            dist,
            resume=not args.no_resume,
            show_progress=False if args.no_progress else None,
            allow_config_change=args.allow_config_change,
        )
        trainer.run()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (setup, exit): a message, no traceback
        raise UserError("interrupted (Ctrl-C); checkpoints on disk are untouched") from None
    finally:  # a normal exit (no exception propagating) waits for every rank: see cleanup
        # the DDP reducer and its gloo work go before the process group does: a reducer freed at
        # interpreter exit, after the group, is one way gloo aborts a finished rank (see cleanup)
        trainer = None
        gc.collect()
        cleanup(synchronize=sys.exc_info()[0] is None)
    return 0


def _dry_run(cfg, args: argparse.Namespace) -> int:
    from fasterdit.models.cost import estimate_cost
    from fasterdit.train.build import ShapeOnly, check_config, model_kwargs

    world = args.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    recipe, source = check_config(cfg, world, shape_if_missing=True)
    if isinstance(source, ShapeOnly):
        where = f"{cfg.data.source} (not present; shape from the config)"
    else:
        where = f"{cfg.data.source} ({len(source)} items)"
    kw = model_kwargs(cfg, source, recipe)
    prec = cfg.train.precision
    dtype = "fp32" if prec == "fp32" else "bf16"
    est = estimate_cost(
        cfg.model.name,
        kw["input_size"],
        kw["in_channels"],
        cfg.train.batch_size,
        num_classes=kw["num_classes"],
        learn_sigma=kw["learn_sigma"],
        dtype=dtype,
        mfu=args.mfu,
        grad_checkpointing=cfg.model.grad_checkpointing,
        num_gpus=world,
    )
    t = cfg.train
    print(f"config ok: model {cfg.model.name}, recipe {cfg.recipe}, data {where}")
    print(
        f"  {kw['in_channels']}x{kw['input_size']}x{kw['input_size']} inputs, {kw['num_classes']} classes, "
        f"learn_sigma={kw['learn_sigma']}; global batch {t.batch_size} over {world} GPU(s) x accum "
        f"{t.grad_accum}; {t.steps} steps = {t.steps * t.batch_size / 1e6:.2f}M images"
    )
    print(est.format())
    per_step = [g for g in est.gpus if g.seconds_per_step]
    if per_step:
        print(f"\nwhole run ({t.steps} steps) at the estimated rate:")
        for g in per_step:
            hours = g.seconds_per_step * t.steps / 3600
            print(f"  {g.name:<10} {hours:10.1f} h on {world} GPU(s)")
    return 0
