"""``fasterdit export``: a trained run in another library's format.

Examples::

    fasterdit export --ckpt runs/demo-latent --format diffusers --out dit-mnist
    fasterdit export --ckpt runs/demo-latent/checkpoints/step-001200 --no-ema --out dit-mnist-raw

The folder loads with ``DiTPipeline.from_pretrained(DIR)`` (stock diffusers) and with
``DiffusionPipeline.from_pretrained(DIR, custom_pipeline="pipeline_fasterdit")`` (fasterdit's sampler);
docs/diffusers.md says what each computes.
"""

from __future__ import annotations

import argparse

HELP = "Export a trained run (EMA weights, VAE, sampler) as a diffusers DiT pipeline folder."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="PATH", help="run dir or checkpoint dir")
    p.add_argument("--format", default="diffusers", choices=["diffusers"], help="output format (diffusers)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")


def run(args: argparse.Namespace) -> int:
    from fasterdit.export.diffusers import export_diffusers
    from fasterdit.generate.loading import load_trained

    lm = load_trained(args.ckpt, ema=not args.no_ema)
    res = export_diffusers(lm, args.out, ema=not args.no_ema)
    print(f"wrote {res.out} ({'EMA' if not args.no_ema else 'raw'} weights of step {lm.step})")
    print(f"  stock DiTPipeline: {res.scheduler.stock}")
    print(f"  custom_pipeline='pipeline_fasterdit': {res.scheduler.shipped}")
    if res.vae_folded:
        print("  vae/: the recipe's per-channel data scaling folded into quant_conv/post_quant_conv")
    return 0
