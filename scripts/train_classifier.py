#!/usr/bin/env python
"""Train the digit classifiers whose features define fasterdit's offline FID, and ship their weights.

    python scripts/train_classifier.py                      # mnist and digits, default seed 0
    python scripts/train_classifier.py --dataset mnist --epochs 20 --seed 0

Trains on the embedded training split only (the held-out split is the FID reference and the
accuracy check), with every random choice (initialisation, shuffling, augmentation) drawn from one
seeded ``torch.Generator``; the same seed and thread count reproduce the same weights. Writes
``src/fasterdit/assets/classifier_<dataset>.safetensors`` (config + held-out accuracy in the
metadata) and the accuracy table in ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from fasterdit.data import load_embedded
from fasterdit.eval.classifier import CONFIGS, DigitClassifier, save_classifier

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "evaluation.md"
ASSETS = ROOT / "src" / "fasterdit" / "assets"
TABLE_START, TABLE_END = "<!-- classifier-table:start -->", "<!-- classifier-table:end -->"

# Default recipe per dataset: epochs, augmentation strength (max rotation in degrees, max shift in pixels).
RECIPES = {
    "mnist": {"epochs": 15, "rotate": 12.0, "shift": 2.0, "scale": 0.1},
    "digits": {"epochs": 30, "rotate": 8.0, "shift": 0.5, "scale": 0.05},
}


def augment(x: torch.Tensor, g: torch.Generator, rotate: float, shift: float, scale: float) -> torch.Tensor:
    """Random small rotation / zoom / shift (bilinear, background stays -1): digits stay legible."""
    n, _, h, w = x.shape
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(rotate)
    s = 1.0 + (torch.rand(n, generator=g) * 2 - 1) * scale
    tx = (torch.rand(n, generator=g) * 2 - 1) * (2.0 * shift / w)
    ty = (torch.rand(n, generator=g) * 2 - 1) * (2.0 * shift / h)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shift to [0, 2] so padding is the black (-1) background.
    return F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).double().mean())


def train(dataset: str, seed: int, epochs: int, batch_size: int, lr: float, log_every: int = 1) -> dict:
    recipe = RECIPES[dataset]
    x_tr, y_tr = load_embedded(dataset, "train")
    x_ho, y_ho = load_embedded(dataset, "heldout")
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier(CONFIGS[dataset])
    model.reset_parameters(g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:  # linear warm-up for one epoch, then cosine to 0
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    step, t0 = 0, time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        loss_sum = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            xb = augment(x_tr[idx], g, recipe["rotate"], recipe["shift"], recipe["scale"])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            step += 1
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            print(
                f"[{dataset}] epoch {epoch + 1}/{epochs} loss {loss_sum / len(x_tr):.4f} "
                f"held-out acc {accuracy(model, x_ho, y_ho):.4f} ({time.time() - t0:.0f}s)",
                flush=True,
            )
    result = {
        "dataset": dataset,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": {k: recipe[k] for k in ("rotate", "shift", "scale")},
        "train_accuracy": accuracy(model, x_tr, y_tr),
        "heldout_accuracy": accuracy(model, x_ho, y_ho),
        "n_train": len(x_tr),
        "n_heldout": len(x_ho),
        "num_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    return {"model": model, **result}


def write_docs_table(rows: list[dict]) -> None:
    """Replace the accuracy table between the markers in docs/evaluation.md (other text untouched)."""
    if not DOCS.is_file():
        print(f"note: {DOCS} not found; accuracy table not written", file=sys.stderr)
        return
    text = DOCS.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        print(f"note: no table markers in {DOCS}; accuracy table not written", file=sys.stderr)
        return
    lines = [
        TABLE_START,
        "| dataset | weights file | params | size | train acc | held-out acc (N) | seed / epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        size_kb = (ASSETS / f"classifier_{r['dataset']}.safetensors").stat().st_size / 1024
        lines.append(
            f"| {r['dataset']} | `assets/classifier_{r['dataset']}.safetensors` | {r['num_params']:,} | "
            f"{size_kb:.0f} KB | {100 * r['train_accuracy']:.2f}% | "
            f"**{100 * r['heldout_accuracy']:.2f}%** ({r['n_heldout']}) | {r['seed']} / {r['epochs']} |"
        )
    lines.append(TABLE_END)
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    DOCS.write_text(pattern.sub(lambda _: "\n".join(lines), text))
    print(f"wrote accuracy table to {DOCS}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=[*RECIPES, "all"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: per-dataset recipe")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out-dir", type=Path, default=ASSETS)
    p.add_argument("--no-docs", action="store_true", help="do not update docs/evaluation.md")
    p.add_argument(
        "--docs-only", action="store_true", help="only rewrite the docs table from the shipped files"
    )
    args = p.parse_args(argv)
    if args.docs_only:
        from fasterdit.eval.classifier import read_classifier

        shipped = [ASSETS / f"classifier_{n}.safetensors" for n in RECIPES]
        write_docs_table([read_classifier(f)[1] for f in shipped if f.is_file()])
        return 0

    torch.use_deterministic_algorithms(True)
    datasets = list(RECIPES) if args.dataset == "all" else [args.dataset]
    rows = []
    for name in datasets:
        epochs = args.epochs or RECIPES[name]["epochs"]
        res = train(name, args.seed, epochs, args.batch_size, args.lr)
        model = res.pop("model")
        path = save_classifier(model, args.out_dir / f"classifier_{name}.safetensors", **res)
        print(f"[{name}] held-out accuracy {res['heldout_accuracy']:.4f} -> {path}")
        rows.append(res)
    if not args.no_docs and args.out_dir.resolve() == ASSETS.resolve():
        # Keep rows of datasets not retrained this time.
        from fasterdit.eval.classifier import read_classifier

        done = {r["dataset"] for r in rows}
        for name in RECIPES:
            f = ASSETS / f"classifier_{name}.safetensors"
            if name not in done and f.is_file():
                rows.append(read_classifier(f)[1])
        rows.sort(key=lambda r: list(RECIPES).index(r["dataset"]))
        write_docs_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
