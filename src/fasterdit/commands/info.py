"""``fasterdit info``: model summaries and cost estimates, the config list, and embedded-data grids.

Examples::

    fasterdit info --list
    fasterdit info --model DiT-XL/2 --input-size 32 --in-channels 4 --batch-size 256 --gpus 8
    fasterdit info --model DiT-Ti/4 --dataset mnist --grid mnist.png
"""

from __future__ import annotations

import argparse

from fasterdit.errors import UserError

HELP = "Show model configs, parameter/FLOP/memory/GPU-time estimates, and embedded-dataset grids."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list all model configs with parameter counts")
    p.add_argument("--model", metavar="NAME", help="summarise this config, e.g. DiT-XL/2 or DiT-Ti/4")
    p.add_argument("--input-size", type=int, help="image/latent side (default: the dataset's, else 32)")
    p.add_argument("--in-channels", type=int, help="input channels (default: the dataset's, else 4)")
    p.add_argument(
        "--num-classes", type=int, help="classes, 0 = unconditional (default: dataset's, else 1000)"
    )
    p.add_argument("--no-learn-sigma", action="store_true", help="C output channels instead of 2C")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs sharing the batch (default 1)")
    p.add_argument(
        "--precision", default="bf16", choices=["bf16", "fp16", "fp32"], help="training precision (bf16)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.add_argument("--grad-checkpointing", action="store_true", help="estimate with gradient checkpointing")
    p.add_argument("--dataset", choices=["mnist", "digits"], help="embedded dataset to describe")
    p.add_argument("--grid", metavar="PNG", help="with --dataset: write a sample grid (8 per class) here")


def run(args: argparse.Namespace) -> int:
    did = False
    ds_info = None
    if args.dataset:
        ds_info = _dataset(args.dataset, args.grid)
        did = True
    elif args.grid:
        raise UserError("--grid needs --dataset mnist|digits")
    if args.list:
        _list_models()
        did = True
    if args.model:
        from fasterdit.models.cost import estimate_cost

        size = args.input_size or (ds_info.resolution if ds_info else 32)
        chans = args.in_channels or (ds_info.channels if ds_info else 4)
        classes = (
            args.num_classes if args.num_classes is not None else (ds_info.num_classes if ds_info else 1000)
        )
        est = estimate_cost(
            args.model, size, chans, args.batch_size, num_classes=classes,
            learn_sigma=not args.no_learn_sigma, dtype=args.precision, mfu=args.mfu,
            grad_checkpointing=args.grad_checkpointing, num_gpus=args.gpus,
        )  # fmt: skip
        print(est.format())
        did = True
    if not did:
        _list_models()
        print("\nsee `fasterdit info --help` for model summaries (--model) and dataset grids (--dataset)")
    return 0


def _list_models() -> None:
    from fasterdit.models import CONFIGS
    from fasterdit.models.cost import Arch

    print("Model configs (head dim 64; DiT-XL 72). Parameters with learned sigma: for ImageNet 256")
    print("latents (32x32x4, 1000 classes), and for the CPU data the small ones target.\n")
    print(f"{'name':<10}{'depth':>6}{'width':>6}{'heads':>6}{'patch':>6}{'params@32x32x4':>16}  note")
    for name, cfg in CONFIGS.items():
        n, _ = Arch.of_name(name).param_count()
        note = cfg.note
        if name.startswith(("DiT-Ti", "DiT-Mi")):
            size = 28 if name.startswith("DiT-Ti") else 8
            small, _ = Arch.of_name(name, size, 1, 10).param_count()
            note += f"; {small / 1e6:.2f}M at {size}x{size}x1, 10 classes"
        row = f"{name:<10}{cfg.depth:>6}{cfg.hidden_size:>6}{cfg.num_heads:>6}{cfg.patch_size:>6}"
        print(f"{row}{n / 1e6:>15.2f}M  {note}")


def _dataset(name: str, grid: str | None):
    import torch

    from fasterdit.data import INFO, load_embedded

    info = INFO[name]
    train_x, train_y = load_embedded(name, "train")
    held_x, _ = load_embedded(name, "heldout")
    print(f"dataset {name}: {info.source}")
    print(f"  {len(train_x)} train + {len(held_x)} held-out images, {info.channels}x{info.resolution}x"
          f"{info.resolution}, {info.num_classes} classes, values in [-1, 1]")  # fmt: skip
    if grid:
        from fasterdit.viz import save_image_grid

        per_class = 8
        # row r shows the r-th example of each class, so each column is one class
        idx = [torch.nonzero(train_y == c).flatten()[:per_class] for c in range(info.num_classes)]
        order = torch.stack(idx, dim=1).flatten()
        path = save_image_grid(
            train_x[order], grid, nrow=info.num_classes, scale=2 if info.resolution > 16 else 4
        )
        print(f"  wrote a {per_class}x{info.num_classes} sample grid to {path}")
    return info
