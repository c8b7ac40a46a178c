"""``fasterdit eval``: sample quality of a checkpoint (or of a samples ``.npz``) as a metrics JSON.

Examples::

    fasterdit eval --ckpt runs/demo --num 1000 --steps 20 --out metrics.json
    fasterdit eval --samples-npz samples.npz --dataset mnist
    fasterdit eval --ckpt DiT-XL-2-256x256.pt --num 50000 --steps 250 --cfg 1.5 \\
        --reference-npz VIRTUAL_imagenet256_labeled.npz --inception inception-2015-12-05.pt

On the embedded datasets (mnist, digits) it reports the offline metrics of fasterdit.eval (FID in
the shipped digit classifier's features, class accuracy, precision/recall) against a fixed real
reference split; with ``--reference-npz`` and ``--inception`` it adds the standard Inception metrics
(FID, sFID, IS, precision, recall) against an ADM-format reference batch. Every number comes with its
sample count and reference set: compare FIDs only at equal N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from fasterdit.errors import ConfigError, UserError

HELP = "Evaluate a checkpoint or a samples .npz: FID, class accuracy, precision/recall (+ Inception metrics)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument("--ckpt", metavar="PATH", help="run dir, checkpoint dir, or official DiT .pt")
    src.add_argument(
        "--samples-npz", metavar="PATH", help="saved samples: ADM-style .npz (uint8 NHWC arr_0, labels arr_1)"
    )
    s = p.add_argument_group("sampling (with --ckpt)")
    s.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--sampler", help="euler, heun, dopri5, euler-maruyama, ddpm, ddim (default: the run's)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the run's eval/sample steps)")
    s.add_argument("--cfg", type=float, help="guidance scale (default: the run's eval scale, else 1)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--batch-size", type=int, default=250, help="samples per batch (default 250)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--vae", help="VAE for latent models with --reference-npz (default: the run's)")
    s.add_argument("--save-samples", metavar="NPZ", help="also write the samples as an ADM-style .npz")
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
        "--reference",
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from fasterdit.data import INFO
    from fasterdit.eval.evaluate import evaluate_samples, generate_samples
    from fasterdit.eval.standard import load_inception, load_samples_npz, standard_metrics
    from fasterdit.train.distributed import resolve_device

    if bool(args.ckpt) == bool(args.samples_npz):
        raise UserError("give exactly one of --ckpt (sample a model) or --samples-npz (saved samples)")
    if args.num < 2:
        raise ConfigError("--num", f"must be >= 2, got {args.num}")
    if args.reference_npz and not Path(args.reference_npz).is_file():
        raise ConfigError("--reference-npz", f"file not found: {args.reference_npz}")
    out_path = Path(args.out)
    if out_path.suffix.lower() != ".json":
        raise ConfigError("--out", f"must end in .json, got {out_path.name!r}")

    device = resolve_device(args.device)
    extractor = None
    if args.reference_npz:  # load it first: a missing Inception file should fail before sampling
        extractor = load_inception(args.inception, device=device, download=args.download_inception)

    result: dict[str, Any] = {}
    if args.samples_npz:
        images, labels = load_samples_npz(args.samples_npz)
        dataset = args.dataset or "mnist"
        result["samples_npz"] = str(args.samples_npz)
        x = torch.from_numpy(images)
        y = None if labels is None or args.no_labels else torch.from_numpy(labels)
    else:
        from fasterdit.train.build import recipe_sampler
        from fasterdit.train.loading import load_trained

        lm = load_trained(args.ckpt, ema=not args.no_ema, device=device)
        official = lm.source == "official"
        ev, sc = lm.cfg.eval, lm.cfg.sample
        run_sampler = "ddpm" if official else (ev.sampler or sc.sampler)
        sampler = args.sampler or run_sampler or recipe_sampler(lm.recipe)
        steps = args.steps or (250 if official else (ev.steps or sc.steps))
        if args.cfg is not None:
            cfg_scale = args.cfg
        elif official:
            cfg_scale = 1.5  # the DiT paper's FID setting
        else:
            cfg_scale = ev.cfg_scale if ev.cfg_scale is not None else 1.0
        dataset = args.dataset or str(lm.cfg.data.source)
        decode = None
        if lm.data.get("is_latent"):
            if not args.reference_npz:
                raise UserError(
                    "a latent-space model: the offline metrics need a pixel model of an embedded dataset; "
                    "pass --reference-npz and --inception for the standard metrics"
                )
            from fasterdit.data.vae import decode as vae_decode
            from fasterdit.data.vae import load_vae

            vae_id = args.vae or lm.data.get("vae")
            if not vae_id:
                raise UserError("this latent model's run records no VAE: pass --vae ID_OR_PATH")
            vae = load_vae(vae_id, device=device)

            def decode(z: torch.Tensor) -> torch.Tensor:
                return vae_decode(vae, z, batch_size=16).clamp(-1, 1)

        print(
            f"sampling {args.num} images: {sampler}, {steps} steps, cfg {cfg_scale}, seed {args.seed}",
            flush=True,
        )
        gen = generate_samples(
            lm.model, lm.recipe, args.num, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
            batch_size=args.batch_size, seed=args.seed, device=device, decode=decode, progress=True,
        )  # fmt: skip
        x, y = gen.images.clamp(-1, 1), gen.labels
        result.update(
            checkpoint=str(lm.path), step=lm.step, sampler=gen.sampler, steps=gen.steps, nfe=gen.nfe,
            cfg_scale=float(cfg_scale), seed=args.seed, sample_seconds=round(gen.seconds, 3),
        )  # fmt: skip
        if args.save_samples:
            from fasterdit.viz import to_uint8

            lab = (y if y is not None else torch.zeros(len(x), dtype=torch.long)).numpy().astype(np.int64)
            np.savez(args.save_samples, arr_0=to_uint8(x), arr_1=lab)
            result["samples_npz"] = str(args.save_samples)

    embedded = dataset in INFO
    if embedded:
        info = INFO[dataset]
        res = tuple(x.shape[1:3]) if x.dtype == torch.uint8 else tuple(x.shape[-2:])
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
        result.update(evaluate_samples(x, y, dataset, args.reference))
    if extractor is not None:
        std = standard_metrics(x, args.reference_npz, extractor, recompute_reference=args.recompute_reference)
        result["standard"] = std
    _write_json(out_path, result)
    if "summary" in result:
        print(result["summary"])
    if "standard" in result:
        print(result["standard"]["summary"])
    print(f"wrote {out_path}")
    return 0
