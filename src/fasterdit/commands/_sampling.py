"""What ``fasterdit sample`` and ``fasterdit eval --ckpt`` share: the sampling flags, the job, the dry run.

The flag for the sample count is ``--num-samples``: under ``torchrun`` the launcher's own parser
matches abbreviations of its flags anywhere on the command line, and ``--num`` abbreviates its
``--numa-binding``; ``--num`` is kept as an alias for single-process use. No flag here is a prefix
of a torchrun option.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from fasterdit.errors import ConfigError, UserError


def add_sampling_arguments(p: argparse.ArgumentParser | Any, *, num: int, batch: int) -> None:
    """The flags of a sampling job (``p`` may be an argument group)."""
    p.add_argument(
        "--num-samples", "--num", dest="num", type=int, default=num,
        help=f"number of samples (default {num}); --num is an alias that torchrun does not accept",
    )  # fmt: skip
    p.add_argument("--sampler", help="euler, heun, dopri5, euler-maruyama, ddpm, ddim (default: the run's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's; official DiT: 250)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    p.add_argument(
        "--cfg-interval",
        metavar="LO,HI",
        help="guide only for LO < t <= HI (t = 1 is noise; default: always)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every sample's noise and label (default 0)")
    p.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="labels i mod K (every class N/K times) instead of uniform random classes from the seed",
    )
    p.add_argument("--batch-size", type=int, default=batch, help=f"samples per batch and process ({batch})")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda (default auto; cuda:LOCAL_RANK under torchrun)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument(
        "--vae", help="VAE for latent models: hub id, local folder, or ema/mse (default: the run's)"
    )
    p.add_argument(
        "--guide-channels",
        type=int,
        help="guide only the first N channels (default: 3 for official DiT/SiT checkpoints, as their "
        "sample.py; every channel for fasterdit runs)",
    )
    p.add_argument(
        "--family",
        choices=("dit", "sit"),
        help="which official code wrote a .pt (default: from its saved args or file name, else dit)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print NFE x N x GFLOPs and GPU-hours; sample nothing"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "tf32", "fp32", "fp64"),
        default="auto",
        help="bf16 autocast, fp32 with TF32 matmuls (DiT's sample_ddp.py), fp32, or fp64 (bytes that "
        "no BLAS blocking can change) (default auto: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--gpu", action="append", metavar="NAME", help="--dry-run: this GPU only (repeatable)")
    p.add_argument("--mfu", type=float, default=0.4, help="--dry-run: assumed share of the GPU's peak (0.4)")


def check_counts(args: argparse.Namespace, minimum: int) -> None:
    flag = "--num-samples"
    if args.num < minimum:
        raise ConfigError(flag, f"must be >= {minimum}, got {args.num}")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {args.batch_size}")


def parse_interval(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError("--cfg-interval", f"expected LO,HI (e.g. 0,0.7), got {text!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError("--cfg-interval", f"need 0 <= LO < HI <= 1, got {text!r}")
    return lo, hi


def parse_labels(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ConfigError("--labels", f"expected comma-separated integers, got {text!r}") from None


def build_settings(
    args: argparse.Namespace,
    lm: Any,
    *,
    sampler: str,
    steps: int,
    cfg_scale: float,
    label_mode: str,
    labels: tuple[int, ...] | None = None,
) -> Any:
    """The job's :class:`SampleSettings` from resolved defaults plus the flags every command shares."""
    from fasterdit.generate.job import SampleSettings
    from fasterdit.generate.seeds import check_labels

    model, d = lm.model, lm.sampling
    if cfg_scale != 1.0 and (model.y_embedder is None or not model.y_embedder.has_null_class):
        raise ConfigError(
            "--cfg", "this model was trained without label dropout (no null class): use --cfg 1"
        )
    num_classes = int(model.num_classes or 0)
    if num_classes:
        check_labels(label_mode, num_classes, labels)
    elif labels:
        raise ConfigError("--labels", "this model is unconditional")
    return SampleSettings(
        num_samples=args.num, seed=args.seed, sampler=sampler, steps=steps, cfg_scale=float(cfg_scale),
        guidance_interval=parse_interval(args.cfg_interval),
        guide_channels=args.guide_channels if args.guide_channels is not None else d.guide_channels,
        sampler_kwargs=dict(d.sampler_kwargs) if sampler == d.sampler else {},
        label_mode=label_mode if num_classes else "uniform", labels=labels if num_classes else None,
        precision=_precision(args.precision, lm.model),
    )  # fmt: skip


def _precision(flag: str, model: Any) -> str:
    if flag != "auto":
        return flag
    return "bf16" if next(model.parameters()).device.type == "cuda" else "fp32"


def vae_id(args: argparse.Namespace, lm: Any) -> str | None:
    """The VAE a latent model's samples are decoded with (None for pixel models)."""
    if not lm.data.is_latent:
        return None
    vid = args.vae or lm.data.vae
    if not vid:
        raise UserError("this is a latent model and its run records no VAE: pass --vae ID_OR_PATH")
    return str(vid)


def origin_crop(lm: Any) -> int | None:
    """The side decoded samples are cropped to: the embedded images' own size when the autoencoder saw
    them padded (``mnist-ae``: 32 -> 28), else None (decoded images are the samples)."""
    origin = lm.data.origin
    return origin.resolution if origin else None


def print_dry_run(lm: Any, settings: Any, args: argparse.Namespace) -> None:
    from fasterdit.generate.cost import sampling_cost

    # the GPU run's arithmetic: auto is bf16 on CUDA; tf32/fp32 use the TF32 tensor-core peak
    dtype = "bf16" if args.precision in ("auto", "bf16") else "fp32"
    cost = sampling_cost(lm.model, lm.recipe, settings, gpus=args.gpu, mfu=args.mfu, dtype=dtype)
    src = f"{lm.path} (step {lm.step})" if lm.step is not None else str(lm.path)
    print(f"dry run: {src}, sampler {settings.sampler}, {settings.steps} steps, cfg {settings.cfg_scale}")
    print(cost.format())


def run_job(args: argparse.Namespace, lm: Any, settings: Any, out: Path, dist: Any) -> Any:
    """Sample ``settings`` into ``out`` with this process's share of the work (see sample_job)."""

    from fasterdit.generate.job import run_sample_job
    from fasterdit.generate.provenance import checkpoint_record

    vid = vae_id(args, lm)
    decode = None
    if vid is not None:
        from fasterdit.data.vae import latent_decoder

        decode = latent_decoder(vid, dist.device, crop=origin_crop(lm))

    record: dict[str, Any] = {}
    if dist.is_main:  # hashing an official .pt costs a second per GB: rank 0's record is the one used
        record = checkpoint_record(lm, not args.no_ema, vid)
        record["image_shape"] = [int(lm.model.in_channels), *map(int, lm.model.input_size)]
    model = lm.model.double() if settings.precision == "fp64" else lm.model
    return run_sample_job(
        model, lm.recipe, settings, out, record=record, batch_size=args.batch_size, dist=dist,
        decode=decode, progress=True,
    )  # fmt: skip


def summary(res: Any, lm: Any, settings: Any) -> str:
    src = f"{lm.path} (step {lm.step})" if lm.step is not None else str(lm.path)
    rate = res.sampled / res.seconds if res.seconds > 0 else math.nan
    return (
        f"wrote {res.path} (+ {res.sidecar.name}): {res.num_samples} samples from {src}, sampler "
        f"{settings.sampler}, {settings.steps} steps, NFE {res.nfe}, cfg {settings.cfg_scale} on "
        f"{settings.guide_channels or 'all'} channels, labels {settings.label_mode}; {res.sampled} sampled "
        f"now ({rate:.2f}/s), {res.resumed} resumed, {res.seconds:.1f} s"
    )
