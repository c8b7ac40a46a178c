"""Does the ImageNet configs' gradient clipping still matter for the fasterdit recipe?

DiT and LightningDiT train without clipping. The configs clipped at 1 because a fresh DiT outputs
exactly zero (adaLN-Zero), where the exact cosine of the direction loss has a gradient of 1/‖v̂‖,
i.e. ~1e8 through ``F.cosine_similarity``'s eps. fasterdit floors ‖v̂‖ at 1% of ‖v‖ in that
denominator. This script measures (A) the first-step gradient norms of a fresh DiT under the loss
with that floor, without it (LightningDiT's formula) and without the direction term, on 4-channel
latent-shaped data (the cosine over channels) and 1-channel digits (over tokens); and (B) short
training runs on the embedded digits at the ImageNet configs' optimizer settings (AdamW lr 1e-4,
betas 0.9/0.999, no weight decay, no warm-up) with clip 1 and without, two seeds each.

    python benchmarks/grad_clip.py           # ≈ 20 min on a quiet 2-core CPU
    python benchmarks/grad_clip.py --quick   # ≈ 30 s smoke run (CI)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", type=float, default=1e-4, help="the ImageNet configs' lr")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--runs-dir", default=str(common.REPO / "runs" / "bench-grad-clip"))
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.num_samples = 6, "0", 50
        args.runs_dir = tempfile.mkdtemp(prefix="fasterdit-gc-")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-gc-report-") if args.quick else str(common.DOCS)
    return args


# --- (A) first-step gradients -------------------------------------------------------------------------
def first_step_norms(model_name: str, shape: tuple[int, int, int], quick: bool) -> dict[str, Any]:
    """Gradient norms of a fresh DiT at its first step: MSE only, MSE + floored cosine (fasterdit),
    MSE + exact cosine with ``F.cosine_similarity`` over channels (LightningDiT's formula)."""
    from fasterdit.diffusion import DiffusionLoss, get_preset
    from fasterdit.models import create_model

    c, h, _w = shape
    torch.manual_seed(0)
    model = create_model(model_name, input_size=h, in_channels=c, num_classes=10, learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    n = 2 if quick else 8
    x0 = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    recipe = get_preset("fasterdit").resolve(mean=[0.0] * c, std=[1.0] * c).for_channels(c)
    t = torch.sigmoid(torch.randn(n, generator=g))
    noise = torch.randn(n, *shape, generator=g)
    out: dict[str, Any] = dict(model=model_name, shape=list(shape), direction_mode=recipe.loss.direction_mode)

    def norms(loss: torch.Tensor) -> tuple[float, float]:
        model.zero_grad()
        loss.backward()
        total = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None))
        head = model.final_layer.linear.weight.grad.norm()
        return float(total), float(head)

    loss_fn = DiffusionLoss(recipe, patch_size=model.patch_size)
    terms = loss_fn(model, x0, y, t=t, noise=noise)
    out["floored"] = norms(terms["loss"])
    mse_only = DiffusionLoss(recipe.updated({"loss.direction_weight": 0.0}), patch_size=model.patch_size)
    out["mse_only"] = norms(mse_only(model, x0, y, t=t, noise=noise)["loss"])
    # the exact cosine as LightningDiT computes it, on the same prediction and target
    xt = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * noise
    pred = model(xt, recipe.model_time(t), y)
    v = noise - x0
    exact = ((pred - v) ** 2).mean() + (1 - F.cosine_similarity(pred, v, dim=1)).mean()
    out["exact_cosine"] = norms(exact)
    return out


# --- (B) training with and without the clip --------------------------------------------------------------
def train_one(args, seed: int, clip: float) -> dict[str, Any]:
    from fasterdit.train.trainer import Trainer

    run_dir = Path(args.runs_dir) / f"clip{clip:g}-s{seed}"
    cfg = common.run_config(
        recipe="fasterdit", model="DiT-Mi/2", dataset="digits", steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=seed, ema_decay=0.99, warmup_steps=0,
        grad_clip=clip, log_every=10, eval_every=args.steps, eval_num_samples=args.num_samples,
        eval_sampler="euler", eval_steps=20, ckpt_every=200,
        extra={"optim.weight_decay": 0.0, "optim.beta1": 0.9, "optim.beta2": 0.999},
    )  # fmt: skip
    t0 = time.time()
    Trainer(cfg, run_dir, install_signal_handlers=False, show_progress=False).run()
    train = common.read_metrics(run_dir, "train")
    evals = common.read_metrics(run_dir, "eval")
    last = [r["loss"] for r in train if r["step"] > args.steps * 0.8] or [train[-1]["loss"]]
    clipped = [r for r in train if r.get("grad_norm_max", 0.0) > 1.0]
    return dict(
        seed=seed, clip=clip, seconds=round(time.time() - t0, 1),
        final_loss=sum(last) / len(last), fid=evals[-1]["fid"] if evals else None,
        class_accuracy=evals[-1].get("class_accuracy") if evals else None,
        intervals_over_1=f"{len(clipped)}/{len(train)}",
        first_grad_norm_max=train[0].get("grad_norm_max"),
        loss_curve=[(r["step"], r["loss"]) for r in train],
    )  # fmt: skip


def _pair(v: list[float]) -> str:
    return f"{v[0]:.3g} / {v[1]:.3g}"


def report(args, a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]], seconds: float, facts) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "grad_clip.json", dict(first_step=a_rows, runs=b_rows, facts=facts))
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in b_rows:
        steps, losses = zip(*r["loss_curve"])
        style = "-" if r["clip"] > 0 else "--"
        ax.plot(steps, losses, style, label=f"clip {r['clip']:g}, seed {r['seed']}", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE + direction)")
    ax.set_title("fasterdit on digits, AdamW lr 1e-4, no warm-up")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grad_clip.png", dpi=120)

    by_clip: dict[float, list[dict[str, Any]]] = {}
    for r in b_rows:
        by_clip.setdefault(r["clip"], []).append(r)
    fids = {c: [r["fid"] for r in rs if r["fid"] is not None] for c, rs in by_clip.items()}
    lines = [
        *common.report_header("Gradient clipping and the direction loss", __file__, facts, seconds),
        "## (A) The first step of a fresh DiT",
        "",
        "Gradient norms at initialisation (adaLN-Zero: the output is exactly 0), one batch, same draws;"
        " `floored` is fasterdit's loss (‖v̂‖ floored at 1% of ‖v‖ in the cosine), `exact cosine` is "
        "LightningDiT's `mean_flat(1 − F.cosine_similarity(v̂, v, dim=1))` added to the MSE.",
        "",
        common.md_table(
            ["model", "data", "cosine over", "MSE only: total / output layer", "floored: total / output",
             "exact cosine: total / output"],
            [[r["model"], "×".join(map(str, r["shape"])), r["direction_mode"], _pair(r["mse_only"]),
              _pair(r["floored"]), _pair(r["exact_cosine"])] for r in a_rows],
        ),
        "",
        "## (B) Training with clip 1 and without",
        "",
        f"DiT-Mi/2 on the embedded digits, recipe `fasterdit`, batch {args.batch_size}, {args.steps} steps, "
        f"AdamW lr {args.lr:g}, betas (0.9, 0.999), no weight decay, no warm-up (the ImageNet configs' "
        f"optimizer); EMA FID of {args.num_samples} samples, Euler 20 steps, against `digits/heldout`. "
        "`intervals over 1`: log intervals (10 steps) whose largest gradient norm exceeded the clip.",
        "",
        common.md_table(
            ["clip", "seed", "final loss (last 20%)", "FID", "class acc", "intervals over 1",
             "max grad norm, steps 1-10", "s"],
            [[r["clip"], r["seed"], r["final_loss"], r["fid"], r["class_accuracy"], r["intervals_over_1"],
              r["first_grad_norm_max"], r["seconds"]] for r in b_rows],
        ),
        "",
        "![loss curves](grad_clip.png)",
        "",
        "## Reading",
        "",
    ]
    if fids.get(1.0) and fids.get(0.0):
        mean = {c: sum(v) / len(v) for c, v in fids.items()}
        spread = {c: max(v) - min(v) for c, v in fids.items()}
        lines.append(
            f"Mean FID with clip 1: {mean[1.0]:.3g} (seed spread {spread[1.0]:.2g}); "
            f"without: {mean[0.0]:.3g} (spread {spread[0.0]:.2g})."
        )
    (out / "grad_clip.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'grad_clip.md'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_torch()
    facts = common.machine_facts()
    t0 = time.time()
    latent = ("DiT-Mi/2", (4, 8, 8)) if args.quick else ("DiT-S/2", (4, 32, 32))
    a_rows = [first_step_norms(*latent, args.quick), first_step_norms("DiT-Mi/2", (1, 8, 8), args.quick)]
    for r in a_rows:
        print(r, flush=True)
    b_rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for clip in (1.0, 0.0):
            b_rows.append(train_one(args, seed, clip))
            print({k: v for k, v in b_rows[-1].items() if k != "loss_curve"}, flush=True)
    report(args, a_rows, b_rows, time.time() - t0, facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
