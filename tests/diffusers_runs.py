"""Tiny latent runs for the diffusers tests: the 500 held-out MNIST digits encoded by ``mnist-ae``, a
DiT-Mi/2 trained for a few seconds with a large learning rate and a short EMA, so that the EMA weights
are far from the zero-initialised adaLN (whose outputs would make every comparison trivially equal)."""

from __future__ import annotations

from pathlib import Path

import torch

from fasterdit.cli import main

TRAIN = [
    "model.name=DiT-Mi/2",
    "train.batch_size=8",
    "train.threads=1",
    "optim.lr=3e-3",
    "optim.warmup_steps=1",
    "train.ema_decay=0.5",
    "log.log_every=10",
    "log.sample_every=0",
    "sample.steps=2",
    "sample.per_class=1",
    "log.tensorboard=false",
    "log.progress=false",
]


def prepare_latents(out: Path) -> Path:
    args = ["prepare", "--images", "mnist", "--split", "heldout", "--vae", "mnist-ae", "--resolution", "32"]
    assert main([*args, "--small", "pad", "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    return out


def train_run(latents: Path, run: Path, recipe: str, steps: int = 24) -> Path:
    threads = torch.get_num_threads()
    sets = [*TRAIN, f"data.source={latents}", f"recipe={recipe}", f"train.steps={steps}"]
    sets.append(f"log.ckpt_every={steps}")
    args = ["train", "--config", "mnist-latent", "--run-dir", str(run), "--no-progress"]
    try:
        assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())
