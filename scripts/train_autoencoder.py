#!/usr/bin/env python
"""Train the small KL autoencoder that fasterdit ships for latent diffusion on the embedded MNIST.

    python scripts/train_autoencoder.py                 # the shipped weights (seed 0, ~15 min on 2 cores)
    python scripts/train_autoencoder.py --variant mnist-ae16        # the second one (16 channels)
    python scripts/train_autoencoder.py --steps 200 --out /tmp/ae   # a quick look

Why it exists: FasterDiT is about DiTs trained on VAE latents (SD-VAE: 4 channels, raw std ~5.5, hence
DiT's 0.18215), and the data-std modulation it proposes only matters when the data's std is not already
~1. This autoencoder gives the same situation at laptop scale: 28x28 digits padded to 32x32, encoded to
8x8x4 latents by diffusers' own ``AutoencoderKL`` class, so that loading, ``encode`` (the posterior),
``latent_dist.sample()``, ``decode`` and ``scaling_factor`` all run through exactly the code SD-VAE uses.

Choices, each as Latent Diffusion trained its KL autoencoders (Rombach et al. 2022, ``LPIPSWithDiscriminator``
without the perceptual and adversarial terms, which MNIST strokes do not need):

* loss = L1 reconstruction summed over pixels + ``kl_weight`` x KL(posterior || N(0, I)) summed over latent
  elements, both per image; the decoder sees a posterior *sample*, so the latent noise is part of training;
* the latents are **not** normalised: their std is whatever the small KL weight leaves them, and
  ``scaling_factor`` is set afterwards to 1 / std of the training latents, as LDM set SD's;
* only the embedded training split is used; the held-out split measures quality.

``--variant mnist-ae16`` builds the second built-in autoencoder, the SNR validation's data set (b): the
same f4 geometry with 16 latent channels (SD3's and FLUX's VAEs have 16) and SD-VAE's KL weight 1e-6,
whose latents are then put at SD-VAE's raw std 1/0.18215 = 5.49 by an exact reparametrisation
(``set_latent_gauge``): a new tokenizer's shape with the statistics of raw SD-VAE latents.

Every random choice (initialisation, batch order, posterior noise) comes from the seed. Writes a diffusers
folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, whose metadata holds the settings and the
measured quality, also written to ``fasterdit.json``) to ``src/fasterdit/assets/autoencoder_mnist/`` and
the quality table in ``docs/data.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from fasterdit.data.autoencoder import (
    BUILTIN,
    BUILTIN_CONFIGS,
    MNIST_PADDED,
    builtin_path,
    latent_statistics,
    set_latent_gauge,
)
from fasterdit.data.embedded import center_crop_images, load_embedded, pad_images
from fasterdit.eval.classifier import classifier_outputs, load_classifier
from fasterdit.eval.frechet import FeatureStats

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "data.md"


@dataclasses.dataclass(frozen=True)
class Variant:
    """What differs between the built-in autoencoders: a description, the KL weight and, where set, the raw
    latent std the trained autoencoder is reparametrised to (``set_latent_gauge``)."""

    description: str
    kl_weight: float
    latent_std: float | None = None

    def asset(self, name: str) -> Path:
        return ROOT / "src" / "fasterdit" / "assets" / BUILTIN[name]

    @staticmethod
    def markers(name: str) -> tuple[str, str]:
        tag = "autoencoder-table" if name == "mnist-ae" else f"autoencoder-table-{name}"
        return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


VARIANTS = {
    "mnist-ae": Variant("fasterdit MNIST KL autoencoder (f4, 4 latent channels)", 1e-5),
    "mnist-ae16": Variant(
        "fasterdit MNIST KL autoencoder (f4, 16 latent channels, latents at SD-VAE's raw std)",
        1e-6,
        latent_std=1.0 / 0.18215,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2400, help="optimizer steps (2400 x 64 = 34 epochs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam peak lr, cosine decay to 0 (1e-3)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--variant", choices=sorted(VARIANTS), default="mnist-ae", help="which built-in (mnist-ae)"
    )
    p.add_argument(
        "--kl-weight",
        type=float,
        default=None,
        help="weight of the summed KL term (the variant's: 1e-5, 1e-8)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="output folder (the variant's asset folder)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/data.md")
    args = p.parse_args(argv)
    variant = VARIANTS[args.variant]
    args.kl_weight = variant.kl_weight if args.kl_weight is None else args.kl_weight
    args.out = variant.asset(args.variant) if args.out is None else args.out
    return args


def build(variant: str, seed: int):
    from diffusers import AutoencoderKL  # lazy: the optional "vae" extra

    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global RNG: seed it, locally
        torch.manual_seed(seed)
        return AutoencoderKL(**BUILTIN_CONFIGS[variant])


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    done = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def train(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    images, _labels = load_embedded("mnist", "train")
    x_all = pad_images(images, MNIST_PADDED)
    g = torch.Generator().manual_seed(args.seed)
    model = build(args.variant, args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order, pos, t0 = torch.randperm(len(x_all), generator=g), 0, time.time()
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(x_all), generator=g), 0
        x = x_all[order[pos : pos + args.batch_size]]
        pos += args.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        posterior = model.encode(x).latent_dist
        recon = model.decode(posterior.sample(generator=g)).sample
        rec = (recon - x).abs().flatten(1).sum(1).mean()
        kl = posterior.kl().mean()  # diffusers sums the KL over (C, H, W)
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            per_pixel = rec.item() / x[0].numel()
            print(
                f"step {step:5d}  L1/pixel {per_pixel:.4f}  KL {kl.item():8.1f}  "
                f"lr {lr_at(step, args):.2e}  {time.time() - t0:6.0f}s",
                flush=True,
            )
    model.eval().requires_grad_(False)
    return model, x_all, time.time() - t0


@torch.no_grad()
def reconstruction_quality(model, seed: int) -> dict:
    """The quality gate: the shipped classifier's accuracy on held-out digits and on their reconstructions
    (posterior mean, and a posterior sample as the diffusion model's training latents are), the feature
    FID of the reconstructions against the held-out digits, and the FID of as many real training digits
    (the floor at that N)."""
    real, labels = load_embedded("mnist", "heldout")
    x = pad_images(real, MNIST_PADDED)
    dist = model.encode(x).latent_dist
    g = torch.Generator().manual_seed(seed + 1)
    recon_mean = center_crop_images(model.decode(dist.mean).sample, 28).clamp(-1, 1)
    recon_sample = center_crop_images(model.decode(dist.sample(generator=g)).sample, 28).clamp(-1, 1)
    clf, _ = load_classifier("mnist")
    f_real, l_real = classifier_outputs(clf, real)
    f_mean, l_mean = classifier_outputs(clf, recon_mean)
    _f_sample, l_sample = classifier_outputs(clf, recon_sample)
    train, _ = load_embedded("mnist", "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(real)]
    f_train, _ = classifier_outputs(clf, train[pick])
    ref = FeatureStats.from_features(f_real)

    def acc(logits: torch.Tensor) -> float:
        return float((logits.argmax(1) == labels).double().mean())

    return {
        "n": len(real),
        "accuracy_real": acc(l_real),
        "accuracy_recon_mean": acc(l_mean),
        "accuracy_recon_sample": acc(l_sample),
        "fid_recon": FeatureStats.from_features(f_mean).frechet_distance(ref),
        "fid_real": FeatureStats.from_features(f_train).frechet_distance(ref),
        "l1_per_pixel": float((recon_mean - real).abs().mean()),
    }


def write_docs(variant: str, meta: dict) -> None:
    q, s = meta["quality"], meta["latents"]
    rows = [
        "| measured on the 500 held-out digits | value |",
        "| --- | --- |",
        f"| classifier accuracy, real digits | {100 * q['accuracy_real']:.1f}% |",
        f"| classifier accuracy, reconstructions (posterior mean) | {100 * q['accuracy_recon_mean']:.1f}% |",
        f"| classifier accuracy, reconstructions (posterior sample) | "
        f"{100 * q['accuracy_recon_sample']:.1f}% |",
        f"| FID-clf, reconstructions vs held-out (N={q['n']}) | {q['fid_recon']:.2f} |",
        f"| FID-clf, real training digits vs held-out (N={q['n']}, the floor) | {q['fid_real']:.2f} |",
        f"| L1 per pixel (posterior mean, [-1, 1] scale) | {q['l1_per_pixel']:.4f} |",
        f"| raw latent std, pooled (training split) | {s['std']:.3f} |",
        f"| raw latent std as trained, before the gauge (`set_latent_gauge`) | {s['trained_std']:.3f} |",
        f"| raw latent std per channel | {', '.join(f'{v:.3f}' for v in s['channel_std'])} |",
        f"| raw latent mean per channel | {', '.join(f'{v:.3f}' for v in s['channel_mean'])} |",
        f"| mean posterior std (the encoder's own noise) | {s['posterior_std']:.4f} |",
        f"| `scaling_factor` = 1 / pooled std | {s['scaling_factor']:.5f} |",
        f"| parameters / weights file | {meta['parameters']:,} / {meta['file_kb']:.0f} KB |",
        f"| training | {meta['settings']['steps']} steps x {meta['settings']['batch_size']}, "
        f"seed {meta['settings']['seed']}, {meta['train_seconds'] / 60:.1f} min on {meta['cpu']} |",
    ]
    start, end = Variant.markers(variant)
    text = DOCS.read_text()
    if start not in text:
        print(f"note: {DOCS} has no {start} marker; table not written", file=sys.stderr)
        return
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    DOCS.write_text(pattern.sub(start + "\n" + "\n".join(rows) + "\n" + end, text))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, x_train, seconds = train(args)
    target = VARIANTS[args.variant].latent_std
    trained_std = latent_statistics(model, x_train)["std"]
    if target is not None:
        set_latent_gauge(model, target / trained_std)
    stats = latent_statistics(model, x_train)
    stats["trained_std"] = trained_std  # before the gauge (the same as std where none is set)
    model.register_to_config(scaling_factor=stats["scaling_factor"])
    quality = reconstruction_quality(model, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    weights = args.out / "diffusion_pytorch_model.safetensors"
    meta = {
        "name": VARIANTS[args.variant].description,
        "data": "embedded MNIST, training split (4,500 digits), 28x28 padded to 32x32 with the background",
        "input": {"native": 28, "padded": MNIST_PADDED, "pad_value": -1.0},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "loss": "sum L1 over pixels + kl_weight * sum KL over latent elements, per image (LDM, no LPIPS/GAN)",
        "latents": stats,
        "quality": quality,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    # Re-write the weights with the metadata (diffusers ignores it when loading).
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"fasterdit": json.dumps(meta)})
    weights.chmod(0o644)  # package data must be readable by every user of an installed package
    meta["file_kb"] = weights.stat().st_size / 1024
    (args.out / "fasterdit.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"latents": stats, "quality": quality}, indent=2))
    if not args.no_docs and args.out.resolve() == builtin_path(args.variant).resolve():
        write_docs(args.variant, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
