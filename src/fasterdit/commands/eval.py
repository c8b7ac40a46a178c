"""``fasterdit eval``: sample quality of a checkpoint (or of a samples ``.npz``) as a metrics JSON.

Examples::

    fasterdit eval --ckpt runs/demo --num-samples 1000 --steps 20 --out metrics.json
    fasterdit eval --ckpt runs/demo/checkpoints/step-000001000   # = the FID the run logged at step 1000
    fasterdit eval --samples-npz samples.npz --dataset mnist
    torchrun --nproc_per_node 8 -m fasterdit eval --ckpt DiT-XL-2-256x256.pt --num-samples 50000 \\
        --num-sampling-steps 250 --cfg-scale 1.5 --reference-npz VIRTUAL_imagenet256_labeled.npz \\
        --inception inception-2015-12-05.pt --save-samples samples.npz

On the embedded datasets (mnist, digits) it reports the offline metrics of fasterdit.eval (FID in
the shipped digit classifier's features, class accuracy, precision/recall) against a fixed real
reference split; with ``--reference-npz`` and ``--inception`` it adds the standard Inception metrics
(FID, sFID, IS, precision, recall) against an ADM-format reference batch. Every number comes with its
sample count and reference set: compare FIDs only at equal N.

With ``--ckpt`` the samples come from the same distributed, resumable job as ``fasterdit sample``
(every rank samples its share; rank 0 computes the metrics). They are kept in ``--save-samples``,
else in ``OUT.samples.npz``, which is removed once the metrics are written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasterdit.commands._sampling import (
    add_sampling_arguments,
    build_settings,
    check_args,
    print_dry_run,
    resolve,
    run_job,
)
from fasterdit.errors import ConfigError, UserError
from fasterdit.runtime.files import atomic_write_text

if TYPE_CHECKING:  # torch and the loaders are imported inside run(), so that --help stays fast
    import torch

    from fasterdit.generate.loading import LoadedModel
    from fasterdit.runtime.distributed import DistInfo

HELP = "Evaluate a checkpoint or a samples .npz: FID, class accuracy, precision/recall (+ Inception metrics)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument("--ckpt", metavar="PATH", help="run dir, checkpoint dir, or official DiT .pt")
    src.add_argument(
        "--samples-npz", metavar="PATH", help="saved samples: ADM-style .npz (uint8 NHWC arr_0, labels arr_1)"
    )
    add_sampling_arguments(p, purpose="eval")
    p.add_argument("--save-samples", metavar="NPZ", help="keep the samples as an ADM-style .npz (+ .json)")
    src.add_argument(
        "--no-labels", action="store_true", help="ignore arr_1 (samples of an unconditional model)"
    )
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--dataset",
        help="embedded dataset of the offline metrics: mnist or digits "
        "(default: the run's data source; mnist for --samples-npz)",
    )
    m.add_argument(
        "--reference-split",
        default="heldout",
        choices=["heldout", "train", "all"],
        help="real reference split of the offline metrics (default heldout)",
    )
    m.add_argument(
        "--reference-npz", metavar="PATH", help="standard metrics vs this ADM-format reference batch"
    )
    m.add_argument(
        "--inception",
        metavar="PATH",
        help="inception-2015-12-05.pt TorchScript (default $FASTERDIT_INCEPTION)",
    )
    m.add_argument(
        "--download-inception", action="store_true", help="download the Inception TorchScript if missing"
    )
    m.add_argument(
        "--recompute-reference", action="store_true", help="recompute the reference mu/sigma from arr_0"
    )
    p.add_argument("--out", default="metrics.json", metavar="JSON", help="output file (default metrics.json)")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None (strict JSON has no NaN), tuples -> lists, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def _check_args(args: argparse.Namespace) -> Path:
    """Every flag checked and every output path proven writable before any sampling."""
    from fasterdit.generate.checks import prepare_output

    if bool(args.ckpt) == bool(args.samples_npz):
        raise UserError("give exactly one of --ckpt (sample a model) or --samples-npz (saved samples)")
    check_args(args, 2)
    if args.dry_run and args.samples_npz:
        raise UserError("--dry-run estimates the sampling of a --ckpt; --samples-npz samples nothing")
    out_path = Path(args.out)
    if out_path.suffix.lower() != ".json":
        raise ConfigError("--out", f"must end in .json, got {out_path.name!r}")
    if args.save_samples and Path(args.save_samples).suffix.lower() != ".npz":
        raise ConfigError("--save-samples", f"must end in .npz, got {Path(args.save_samples).name!r}")
    if args.save_samples and Path(args.save_samples).with_suffix(".json").resolve() == out_path.resolve():
        raise ConfigError("--out", f"{out_path} is the sidecar of --save-samples; name the metrics otherwise")
    if args.dry_run:  # planning: the reference batch may not be downloaded yet
        return out_path
    if args.reference_npz and not Path(args.reference_npz).is_file():
        raise ConfigError("--reference-npz", f"file not found: {args.reference_npz}")
    out_path = prepare_output(out_path, "--out")
    if args.save_samples:
        args.save_samples = str(prepare_output(args.save_samples, "--save-samples"))
    return out_path


def _sample_checkpoint(args: argparse.Namespace, dist: DistInfo, out_path: Path) -> dict[str, Any] | None:
    """Sample with every rank; on rank 0 the samples file and what to record about it, else None."""
    from fasterdit.generate.loading import load_on_every_rank

    lm = load_on_every_rank(args.ckpt, dist, ema=not args.no_ema, family=args.family)
    if lm.data.is_latent and lm.data.origin is None and not args.reference_npz:
        raise UserError(
            "a latent-space model of images that are not an embedded dataset: the offline metrics need "
            "pixels of mnist/digits (as pixels, or latents prepared from them: fasterdit prepare --images "
            "mnist); pass --reference-npz and --inception for the standard metrics"
        )
    resolved = resolve(args, lm, "eval")
    # the offline metrics measure class accuracy per class: balanced labels unless asked otherwise (as
    # eval.every); the ImageNet protocol (DiT's sample_ddp.py) draws uniform random classes
    balanced = args.balanced if args.balanced is not None else not args.reference_npz
    settings = build_settings(args, lm, resolved, label_mode="balanced" if balanced else "uniform")
    if args.dry_run:
        if dist.is_main:
            print_dry_run(lm, resolved, settings, args)
        return None
    if dist.is_main:
        print(
            f"sampling {settings.num_samples} images: {settings.sampler}, {settings.steps} steps, "
            f"cfg {settings.cfg_scale}, seed {settings.seed}"
        )
    samples = (
        Path(args.save_samples) if args.save_samples else out_path.with_name(out_path.stem + ".samples.npz")
    )
    res = run_job(args, lm, settings, samples, dist)
    if not dist.is_main:
        return None
    return {
        "samples": samples,
        "dataset": args.dataset or _run_dataset(lm),
        "record": dict(
            checkpoint=str(lm.path), step=lm.step, sampler=settings.sampler, steps=settings.steps,
            nfe=res.nfe, cfg_scale=settings.cfg_scale, guidance_interval=settings.guidance_interval,
            seed=settings.seed, label_mode=settings.label_mode, sample_seconds=round(res.seconds, 3),
            world_size=dist.world_size,
        ),
    }  # fmt: skip


def _run_dataset(lm: LoadedModel) -> str:
    """The embedded dataset whose classifier scores this run: the one its images came from (for latent
    runs, the dataset ``fasterdit prepare`` encoded), else the configured source name."""
    origin = lm.data.origin
    return origin.dataset if origin else str(lm.cfg.data.source)


def _metrics(
    args: argparse.Namespace, samples: Path, dataset: str, extractor: Any, device: torch.device
) -> dict[str, Any]:
    """Offline metrics (embedded datasets) and/or the standard ones (--reference-npz) of a samples file."""
    import torch

    from fasterdit.data import INFO
    from fasterdit.eval.evaluate import evaluate_samples
    from fasterdit.eval.standard import load_samples_npz, standard_metrics

    images, labels = load_samples_npz(samples, labels=not args.no_labels)
    x = torch.from_numpy(images)
    y = None if labels is None else torch.from_numpy(labels)
    result: dict[str, Any] = {}
    embedded = dataset in INFO
    if embedded:
        info = INFO[dataset]
        res = tuple(x.shape[1:3])
        if res != (info.resolution, info.resolution):
            if not args.reference_npz:
                raise UserError(
                    f"samples are {res[0]}x{res[1]} but {dataset} images are "
                    f"{info.resolution}x{info.resolution}; use --dataset to match, or --reference-npz"
                )
            embedded = False
    elif not args.reference_npz:
        raise ConfigError(
            "--dataset",
            f"{dataset!r} is not an embedded dataset (mnist, digits): "
            "pass --reference-npz and --inception for the standard metrics",
        )
    if embedded:
        result.update(evaluate_samples(x, y, dataset, args.reference_split, device=device))
    if extractor is not None:
        std = standard_metrics(
            x, args.reference_npz, extractor, recompute_reference=args.recompute_reference,
            progress=not args.no_progress,
        )  # fmt: skip
        result["standard"] = std
    return result


def run(args: argparse.Namespace) -> int:
    from fasterdit.eval.standard import load_inception
    from fasterdit.generate.job import sidecar_path
    from fasterdit.runtime.distributed import cleanup, init_distributed

    out_path = _check_args(args)
    dist = init_distributed(args.device)
    try:
        extractor = None
        if args.reference_npz and dist.is_main and not args.dry_run:
            # loaded first: a missing Inception file must fail before hours of sampling
            extractor = load_inception(args.inception, device=dist.device, download=args.download_inception)
        result: dict[str, Any] = {}
        if args.samples_npz:
            if not dist.is_main:
                return 0
            samples, dataset = Path(args.samples_npz), args.dataset or "mnist"
        else:
            job = _sample_checkpoint(args, dist, out_path)
            if job is None:
                return 0
            samples, dataset = job["samples"], job["dataset"]
            result.update(job["record"])
        result["samples_npz"] = str(samples) if args.samples_npz or args.save_samples else None
        result.update(_metrics(args, samples, dataset, extractor, dist.device))
        _write_json(out_path, result)
        if args.ckpt and not args.save_samples:  # the samples were a means, not an output
            samples.unlink(missing_ok=True)
            sidecar_path(samples).unlink(missing_ok=True)
        if "summary" in result:
            print(result["summary"])
        if "standard" in result:
            print(result["standard"]["summary"])
        print(f"wrote {out_path}")
        return 0
    finally:  # a normal exit (no exception propagating) waits for every rank: see cleanup
        cleanup(synchronize=sys.exc_info()[0] is None)
