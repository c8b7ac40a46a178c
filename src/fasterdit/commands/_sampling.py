"""What ``fasterdit sample`` and ``fasterdit eval`` share: the sampling flags, their resolution, the job.

Flag names meet DiT and SiT users where they are: ``sample_ddp.py``'s ``--cfg-scale``,
``--num-sampling-steps``, ``--per-proc-batch-size``, ``--num-fid-samples`` and ``--global-seed`` work
here (as aliases of ``--steps``, ``--batch-size``, ``--num-samples``, ``--seed``), under ``torchrun`` too.
No flag is a prefix of a torchrun option (torchrun matches abbreviations of its own flags, and ``--num``
would abbreviate its ``--numa-binding``). Defaults come from :mod:`fasterdit.generate.defaults`
(flag > the run's ``eval`` section > its ``sample`` section > the recipe or the official family);
``--ckpt PATH --help`` prints them resolved for that checkpoint.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasterdit.errors import ConfigError, UserError

if TYPE_CHECKING:  # the commands import torch only inside run(), so that --help stays fast
    from fasterdit.generate.defaults import Purpose, ResolvedSampling
    from fasterdit.generate.job import JobResult, SampleSettings
    from fasterdit.generate.loading import LoadedModel
    from fasterdit.runtime.distributed import DistInfo

#: what --help says of a default that the checkpoint decides
_CHAIN = "the run's eval section, else its sample section, else the recipe; official DiT/SiT: their sample.py"


class ResolvedHelp(argparse.Action):
    """``-h/--help``; after ``--ckpt PATH`` also the defaults resolved for that checkpoint."""

    def __init__(self, option_strings: list[str], dest: str, purpose: Purpose, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.purpose = purpose

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.print_help()
        ckpt = namespace.ckpt  # argparse fills the defaults first: None unless --ckpt came before --help
        if ckpt:
            from fasterdit.generate.defaults import SamplingFlags, resolve_sampling
            from fasterdit.generate.loading import load_trained

            try:
                lm = load_trained(ckpt, device="cpu", family=namespace.family)
                resolved = resolve_sampling(self.purpose, lm, SamplingFlags())
            except UserError as err:
                print(f"\n(no defaults for {ckpt}: {err})")
            else:
                print(f"\ndefaults for {ckpt} (flag > eval section > sample section > recipe or family):")
                print(resolved.describe())
        else:
            print("\n(give --ckpt PATH before --help to see the defaults resolved for that checkpoint)")
        parser.exit()


def add_sampling_arguments(p: argparse.ArgumentParser, *, purpose: Purpose) -> None:
    """The flags of a sampling job, and a ``--help`` that resolves them for ``--ckpt``."""
    from fasterdit.generate.defaults import BATCH_SIZE

    p.add_argument("-h", "--help", action=ResolvedHelp, purpose=purpose, help="show this help and exit")
    num_default = (
        "the run's eval.num_samples; official: 1000"
        if purpose == "eval"
        else "one grid of the run: sample.classes x sample.per_class; official: 64"
    )
    p.add_argument(
        "--num-samples", "--num-fid-samples", dest="num", type=int, help=f"number of samples ({num_default})"
    )
    p.add_argument("--sampler", help=f"euler, heun, dopri5, euler-maruyama, ddpm, ddim (default: {_CHAIN})")
    p.add_argument(
        "--steps", "--num-sampling-steps", dest="steps", type=int, help=f"sampling steps (default: {_CHAIN})"
    )
    p.add_argument(
        "--cfg-scale",
        dest="cfg_scale",
        type=float,
        help="classifier-free guidance scale, 1 = none (default: the run's eval.cfg_scale, else "
        "sample.cfg_scale; official DiT/SiT: 1.5 for eval, 4 for sample)",
    )
    p.add_argument(
        "--cfg-interval",
        metavar="LO,HI",
        help="guide only for LO < t <= HI (t = 1 is noise; default: the recipe's, else always)",
    )
    p.add_argument(
        "--seed",
        "--global-seed",
        dest="seed",
        type=int,
        help="seed of every sample's noise and label (default: the run's eval.seed, else sample.seed; 0)",
    )
    p.add_argument(
        "--sampler-opt",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the sampler (repeatable): shift (time shift of the grid), dopri5 atol/rtol/"
        "method, ddim eta, ddpm variance, euler-maruyama diffusion, t_max, ...; checked against the sampler",
    )
    p.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="labels i mod K (every class N/K times) instead of uniform random classes from the seed",
    )
    p.add_argument(
        "--batch-size",
        "--per-proc-batch-size",
        dest="batch_size",
        type=int,
        default=BATCH_SIZE,
        help=f"samples per batch and process ({BATCH_SIZE}; the samples do not depend on it)",
    )
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
        "--dry-run", action="store_true", help="print the resolved settings, NFE x N x GFLOPs and GPU-hours"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "tf32", "fp32", "fp64"),
        default="auto",
        help="bf16 autocast, fp32 with TF32 matmuls (DiT's sample_ddp.py), fp32, or fp64 (bytes that "
        "no BLAS blocking can change) (default auto: on CUDA the run's training precision, bf16 for an "
        "official checkpoint; fp32 on CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--gpu-model", action="append", metavar="NAME", help="--dry-run: this GPU model only (repeatable)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="--dry-run: assumed share of the GPU's peak (0.4)")


def check_args(args: argparse.Namespace, minimum: int, *, png: bool = False) -> None:
    """Every sampling flag in range, before a model is loaded (sampling takes minutes to hours); ``png``:
    the samples are drawn in memory for one grid (a smaller bound on their number)."""
    from fasterdit.generate.checks import check_bounds

    check_bounds(args.steps, args.num, png)
    if args.num is not None and args.num < minimum:
        raise ConfigError("--num-samples", f"must be >= {minimum}, got {args.num}")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps", f"must be >= 1 (leave it out for the run's default), got {args.steps}")
    if args.cfg_scale is not None and not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        why = f"must be a finite number >= 0 (1 = no guidance), got {args.cfg_scale}"
        raise ConfigError("--cfg-scale", why)
    if args.guide_channels is not None and args.guide_channels < 1:
        raise ConfigError("--guide-channels", f"must be >= 1, got {args.guide_channels}")
    parse_interval(args.cfg_interval)
    _sampler_opts(args)


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


def _sampler_opts(args: argparse.Namespace) -> dict[str, Any]:
    from fasterdit.generate.defaults import parse_sampler_opts

    return parse_sampler_opts(args.sampler_opt)


def resolve(args: argparse.Namespace, lm: LoadedModel, purpose: Purpose) -> ResolvedSampling:
    """The flags over the run's defaults (:func:`fasterdit.generate.defaults.resolve_sampling`)."""
    from fasterdit.generate.defaults import SamplingFlags, resolve_sampling

    flags = SamplingFlags(
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        num_samples=args.num,
        guide_channels=args.guide_channels,
        guidance_interval=parse_interval(args.cfg_interval),
        sampler_opts=_sampler_opts(args),
    )
    return resolve_sampling(purpose, lm, flags)


def build_settings(
    args: argparse.Namespace,
    lm: LoadedModel,
    resolved: ResolvedSampling,
    *,
    label_mode: str,
    labels: tuple[int, ...] | None = None,
) -> SampleSettings:
    """The job's :class:`SampleSettings`; refuses guidance of a model without a null class and labels
    the model does not have."""
    from fasterdit.generate.job import SampleSettings, resolve_precision
    from fasterdit.generate.seeds import check_labels

    model = lm.model
    if resolved.cfg_scale != 1.0 and (model.y_embedder is None or not model.y_embedder.has_null_class):
        raise ConfigError(
            "--cfg-scale", "this model was trained without label dropout (no null class): use --cfg-scale 1"
        )
    num_classes = int(model.num_classes or 0)
    if num_classes:
        check_labels(label_mode, num_classes, labels)
    elif labels and label_mode == "given" and args.labels:
        raise ConfigError("--labels", "this model is unconditional")
    device = next(model.parameters()).device
    return SampleSettings.from_resolved(
        resolved,
        label_mode=label_mode if num_classes else "uniform",
        labels=labels if num_classes else None,
        precision=resolve_precision(args.precision, device, None if lm.official else lm.cfg.train),
    )


def print_dry_run(lm: LoadedModel, resolved: ResolvedSampling, settings: SampleSettings, args) -> None:
    from fasterdit.generate.cost import sampling_cost

    # the GPU run's arithmetic: auto is bf16 on CUDA; tf32/fp32 use the TF32 tensor-core peak
    dtype = "bf16" if args.precision in ("auto", "bf16") else "fp32"
    cost = sampling_cost(lm.model, lm.recipe, settings, gpus=args.gpu_model, mfu=args.mfu, dtype=dtype)
    src = f"{lm.path} (step {lm.step})" if lm.step is not None else str(lm.path)
    print(f"dry run: {src}, labels {settings.label_mode}, precision {settings.precision}")
    print(resolved.describe())
    print(cost.format())


def run_job(args: argparse.Namespace, lm: LoadedModel, settings: SampleSettings, out: Path, dist: DistInfo):
    """Sample ``settings`` into ``out`` with this process's share of the work (see generate/job.py)."""
    from fasterdit.generate.decode import decoder_for, vae_for
    from fasterdit.generate.job import run_sample_job
    from fasterdit.generate.provenance import checkpoint_record

    decode = decoder_for(lm.data, dist.device, args.vae)
    record: dict[str, Any] = {}
    if dist.is_main:  # hashing an official .pt costs a second per GB: rank 0's record is the one used
        record = checkpoint_record(lm, not args.no_ema, vae_for(lm.data, args.vae))
        record["image_shape"] = [int(lm.model.in_channels), *map(int, lm.model.input_size)]
    model = lm.model.double() if settings.precision == "fp64" else lm.model
    return run_sample_job(
        model, lm.recipe, settings, out, record=record, batch_size=args.batch_size, dist=dist,
        decode=decode, progress=not args.no_progress,
    )  # fmt: skip


def summary(res: JobResult, lm: LoadedModel, settings: SampleSettings) -> str:
    src = f"{lm.path} (step {lm.step})" if lm.step is not None else str(lm.path)
    rate = res.sampled / res.seconds if res.seconds > 0 else math.nan
    return (
        f"wrote {res.path} (+ {res.sidecar.name}): {res.num_samples} samples from {src}, sampler "
        f"{settings.sampler}, {settings.steps} steps, NFE {res.nfe}, cfg {settings.cfg_scale} on "
        f"{settings.guide_channels or 'all'} channels, labels {settings.label_mode}; {res.sampled} sampled "
        f"now ({rate:.2f}/s), {res.resumed} resumed, {res.seconds:.1f} s"
    )
