"""Running ``latent_convergence.py``'s parts: the mnist-ae latents, one training run through the real
trainer with its converged-NFE evaluations and its metrics file, the autoencoder floor, and the SNR tool's
recommendation.

Why a module of its own: this is the only code that trains, samples or writes metrics files; the plan says
what to run and the report only reads the files written here, so a report can be rebuilt without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import common
import convergence_curves as curves
from latent_convergence_plan import (
    EMA_DECAY,
    EVAL_KEYS,
    GRAD_CLIP,
    QUICK_SPLIT,
    REPA_ENCODER,
    RESOLUTION,
    STD_LAWS,
    Job,
    plan,
    print_estimate,
    repa_latents,
    results_dir,
    settings_of,
    std_overrides,
)

#: the command every metrics file records is the entry script's, not this module's
SCRIPT = Path(__file__).resolve().with_name("latent_convergence.py")


def prepare_latents(
    args: argparse.Namespace, vae: str = "mnist-ae", out: str | None = None
) -> dict[str, Any]:
    """The latents of the MNIST training split under a built-in autoencoder (``mnist-ae`` into
    ``args.latents`` by default; the held-out digits stay the FID reference).

    ``--quick`` encodes the 500 held-out digits instead of the 4,500 training digits, only to stay within
    its minute: the same command and code path, and its numbers mean nothing anyway."""
    from fasterdit.cli import main as cli

    out_dir = Path(args.latents if out is None else out)
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        split = QUICK_SPLIT if args.quick else "train"
        common.log(f"preparing the {vae} latents of the MNIST {split} split in {out_dir}")
        argv = [
            "prepare",
            "--images",
            "mnist",
            "--split",
            split,
            "--vae",
            vae,
            "--resolution",
            str(RESOLUTION),
            "--small",
            "pad",
            "--out",
            str(out_dir),
            "--no-progress",
            "--workers",
            "0",
        ]
        if cli(argv) != 0:
            raise SystemExit(f"fasterdit {' '.join(argv)} failed")
    m = json.loads(manifest.read_text())
    return {
        k: m.get(k)
        for k in (
            "vae",
            "scaling_factor",
            "shift_factor",
            "std",
            "channel_mean",
            "channel_std",
            "num_items",
            "channels",
            "resolution",
            "origin",
        )
    }


def prepare_repa_latents(args: argparse.Namespace) -> Path:
    """The repa part's set: the same latents (same split, autoencoder, padding) plus the features of the
    shipped self-supervised encoder, stored by ``prepare --align-encoder`` (docs/repa.md)."""
    from fasterdit.cli import main as cli

    out = Path(repa_latents(args))
    prepare_seconds = None
    if not (out / "manifest.json").is_file():
        t0 = time.time()
        split = QUICK_SPLIT if args.quick else "train"
        common.log(
            f"preparing the mnist-ae latents with {REPA_ENCODER} features of the MNIST {split} split in {out}"
        )
        argv = [
            "prepare", "--images", "mnist", "--split", split, "--vae", "mnist-ae",
            "--resolution", str(RESOLUTION), "--small", "pad", "--align-encoder", REPA_ENCODER,
            "--out", str(out), "--no-progress", "--workers", "0",
        ]  # fmt: skip
        if cli(argv) != 0:
            raise SystemExit(f"fasterdit {' '.join(argv)} failed")
        prepare_seconds = round(time.time() - t0, 1)
    encoder_cost(args, prepare_seconds)
    return out


def encoder_cost(args: argparse.Namespace, prepare_seconds: float | None, reps: int = 20) -> dict[str, Any]:
    """What the frozen encoder costs, measured once into ``repa_encoder_cost.json``: its forward pass on a
    batch of 64 padded training digits (median of ``reps`` after 3 warm-ups; what a step would pay if the
    features were computed on the fly), and the wall time of the ``prepare --align-encoder`` that stored them
    (latents and features, when this invocation made it). With stored features a step pays neither."""
    import torch

    from fasterdit.data.embedded import load_embedded, pad_images
    from fasterdit.data.encoders import load_encoder

    path = results_dir(args) / "repa_encoder_cost.json"
    if path.is_file():
        return json.loads(path.read_text())
    enc = load_encoder(REPA_ENCODER, "cpu")
    grid = (RESOLUTION // enc.patch,) * 2
    x = pad_images(load_embedded("mnist", "train")[0][:64], RESOLUTION)
    times = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        enc(x, grid)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    out = {
        "encoder": REPA_ENCODER,
        "parameters": sum(p.numel() for p in enc.parameters()),
        "batch": 64,
        "grid": list(grid),
        "forward_ms_per_batch": round(1000 * statistics.median(times), 3),
        "prepare_seconds": prepare_seconds,
        "prepare_split": QUICK_SPLIT if args.quick else "train",
        "torch_threads": torch.get_num_threads(),
        "machine": common.machine_facts(),
        "command": common.command_line(SCRIPT),
    }
    common.write_json(path, out)
    common.log(f"{REPA_ENCODER} forward, batch 64: {out['forward_ms_per_batch']:.2f} ms")
    return out


def converged_eval(run_dir: Path, step: int, conv: dict[str, Any], num_samples: int, seed: int) -> dict:
    """FID etc. of the EMA weights of the checkpoint at ``step`` with the converged-NFE sampler (the samples
    of the run's in-training evaluations: ``fasterdit eval``'s defaults but for the sampler), cached in
    the run dir so an interrupted part does not redo it. ``seed`` is the run's (its eval's sample seed)."""
    from fasterdit.eval import evaluate
    from fasterdit.generate.decode import decoder_for
    from fasterdit.generate.defaults import SamplingFlags, resolve_sampling
    from fasterdit.generate.job import SampleSettings
    from fasterdit.generate.loading import load_trained
    from fasterdit.run import checkpoint as ckpt_mod

    # "sampling": the per-index samples of fasterdit.generate (results cached before it used other noise)
    key = {**conv, "num_samples": num_samples, "step": step, "sampling": "per-index"}
    cache = run_dir / f"converged-{step:09d}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    ckpt = next((c for c in ckpt_mod.list_checkpoints(run_dir) if ckpt_mod.checkpoint_step(c) == step), None)
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint at step {step} for the converged-NFE evaluation")
    lm = load_trained(ckpt, ema=True, device="cpu")
    assert lm.data.origin is not None and lm.cfg.seed == seed
    flags = SamplingFlags(
        sampler=conv["sampler"], steps=conv["steps"], cfg_scale=1.0, num_samples=num_samples,
        sampler_opts=dict(conv["kwargs"]),
    )  # fmt: skip
    settings = SampleSettings.from_resolved(resolve_sampling("eval", lm, flags), label_mode="balanced")
    decode = decoder_for(lm.data, next(lm.model.parameters()).device)
    res = evaluate(lm.model, lm.recipe, settings, dataset=lm.data.origin.dataset, decode=decode)
    assert res is not None
    out = {k: res[k] for k in EVAL_KEYS if k in res}
    out.update(step=step, sampler_kwargs=conv["kwargs"])
    common.write_json(cache, {"key": key, "result": out})
    common.log(
        f"  converged NFE ({conv['sampler']}, NFE {out.get('nfe')}) at step {step}: FID {out['fid']:.3f}, "
        f"acc {out.get('class_accuracy', math.nan):.3f} ({out.get('sample_seconds', 0):.0f} s)"
    )
    return out


def run_job(args: argparse.Namespace, job: Job, latents: dict[str, Any]) -> dict[str, Any]:
    from fasterdit.run import checkpoint as ckpt_mod
    from fasterdit.train.trainer import Trainer, TrainingAborted

    path = results_dir(args) / job.part / f"{job.name}.json"
    settings = settings_of(job)
    if path.is_file() and not args.fresh:
        prev = json.loads(path.read_text())
        if prev["settings"] == settings:
            common.log(f"{job.part}/{job.name}: metrics file exists, skipped ({common.shown_path(path)})")
            return prev
        raise SystemExit(
            f"{path} holds a run with other settings than this invocation's (e.g. an older budget or lr); "
            "rerun with --fresh to replace it, or move it away"
        )
    s = job.sizes
    sampler = curves.natural_sampler(job.preset)
    cfg = common.run_config(
        recipe=job.preset,
        recipe_overrides=job.overrides,
        model=s.model,
        dataset=job.extra.get("source", args.latents),  # snr_validation trains on other data too
        steps=s.steps,
        batch_size=s.batch_size,
        lr=job.lr,
        seed=job.seed,
        ema_decay=EMA_DECAY,
        warmup_steps=s.warmup,
        grad_clip=GRAD_CLIP,
        eval_every=s.eval_every,
        eval_num_samples=s.num_samples,
        eval_sampler=sampler,
        eval_steps=s.nfe,
        log_every=max(1, min(50, s.eval_every)),
        ckpt_every=s.eval_every,
        extra={
            "sample.sampler": sampler,
            "sample.per_class": 2 if args.quick else 8,
            "log.keep_last": s.steps // s.eval_every + 1,  # the converged-NFE checkpoints survive the run
        },
    )
    run_dir = Path(args.work) / "runs" / job.part / job.name
    if run_dir.exists() and (args.fresh or not curves.resumable(run_dir, cfg, False)):
        shutil.rmtree(run_dir)  # another run of the same name: start clean
    common.log(f"{job.part}/{job.name}: lr {job.lr:g}, {s.steps} steps -> {run_dir}")
    t0 = time.time()
    status, error, sps = "ok", None, math.nan
    try:
        res = Trainer(cfg, run_dir, install_signal_handlers=False, show_progress=False).run()
        sps = float(res.samples_per_sec)
    except TrainingAborted as err:  # a diverged run is a result (e.g. the largest lr of the sweep)
        status, error = "diverged", str(err)
        common.log(f"  diverged: {err}")
    train_wall = time.time() - t0
    evals = [{k: e[k] for k in EVAL_KEYS if k in e} for e in common.read_metrics(run_dir, "eval")]
    train = common.read_metrics(run_dir, "train")
    t1 = time.time()
    conv = []
    if status == "ok":
        for step in job.converged_steps:
            conv.append(converged_eval(run_dir, step, job.converged, s.num_samples, job.seed))
    conv_wall = time.time() - t1
    if not args.keep_checkpoints and status == "ok":
        ckpt_mod.prune_checkpoints(run_dir, 1)  # the final one stays, for sampling or more evaluations
    finite = [
        float(r["samples_per_sec"]) for r in train[1:] if math.isfinite(r.get("samples_per_sec", math.nan))
    ]
    metrics = {
        "part": job.part,
        "name": job.name,
        "variant": job.variant,
        "preset": job.preset,
        "seed": job.seed,
        "lr": job.lr,
        "lr_source": job.lr_source,
        **({"align_source": job.extra["align_source"]} if "align_source" in job.extra else {}),
        "status": status,
        "error": error,
        "quick": bool(args.quick),
        "settings": settings,
        "evals": evals,
        "converged": conv,
        "train": {
            "samples_per_sec": sps if math.isfinite(sps) else (statistics.median(finite) if finite else None),
            "final_loss": float(train[-1]["loss"]) if train else None,
            "skipped_total": int(train[-1].get("skipped_total", 0)) if train else None,
            # per log interval (training steps only: evaluations and checkpoints excluded), for the
            # per-step cost of a stage (the alignment on, then off)
            "throughput": [
                [int(r["step"]), round(float(r["samples_per_sec"]), 2)]
                for r in train
                if math.isfinite(r.get("samples_per_sec", math.nan))
            ],
        },
        "wall_seconds": {"train_and_evals": round(train_wall, 1), "converged_evals": round(conv_wall, 1)},
        "machine": common.machine_facts(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": common.command_line(SCRIPT),
        "latents": latents,
        "work_dir": str(run_dir),
    }
    common.write_json(path, metrics)
    last = evals[-1] if evals else {}
    common.log(
        f"{job.part}/{job.name}: {status}, {train_wall + conv_wall:.0f} s, final FID "
        f"{last.get('fid', math.nan):.3f} at step {last.get('step')} (load {common.loadavg()[0]:.2f})"
    )
    return metrics


def ae_floor(args: argparse.Namespace, num_samples: int) -> dict[str, Any]:
    """The autoencoder's reconstruction floor at N: FID of reconstructions of N real training digits (the
    same N digits whose raw FID is the real-data floor) against the held-out reference. Computed once."""
    import torch

    from fasterdit.data.autoencoder import MNIST_PADDED
    from fasterdit.data.embedded import center_crop_images, pad_images
    from fasterdit.data.vae import decode, encode_distribution, load_vae, vae_scaling_factor, vae_shift_factor
    from fasterdit.eval import evaluate_samples
    from fasterdit.eval.evaluate import embedded_split

    path = results_dir(args) / "floors.json"
    floors = json.loads(path.read_text()) if path.is_file() else {}
    key = f"mnist-ae/N={num_samples}"
    if key in floors:
        return floors[key]
    t0 = time.time()
    images, labels = embedded_split("mnist", "train")
    # the pick of fasterdit.eval's real-data floor (randperm, seed 0): reconstruction - real = the AE alone
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:num_samples]
    x, y = images[pick], labels[pick]
    vae = load_vae("mnist-ae", device="cpu")
    mean, logvar = encode_distribution(vae, pad_images(x, MNIST_PADDED))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    scale, shift = vae_scaling_factor(vae), vae_shift_factor(vae)
    out: dict[str, Any] = {"num_samples": num_samples, "reference": "mnist/heldout", "vae": "mnist-ae"}
    for name, z in (("posterior_sample", mean + torch.exp(0.5 * logvar) * eps), ("posterior_mean", mean)):
        rec = center_crop_images(decode(vae, (z - shift) * scale, batch_size=250), x.shape[-1])
        m = evaluate_samples(rec, y, "mnist")
        out[name] = {k: m[k] for k in ("fid", "class_accuracy", "precision", "recall") if k in m}
        out["fid_real_at_n"] = m.get("fid_real_at_n")
    out.update(
        machine=common.machine_facts()["cpu"],
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command=common.command_line(SCRIPT),
        seconds=round(time.time() - t0, 1),
    )
    floors[key] = out
    common.write_json(path, floors)
    common.log(
        f"autoencoder floor at N={num_samples}: reconstructions FID {out['posterior_sample']['fid']:.3f} "
        f"(posterior mean {out['posterior_mean']['fid']:.3f}); real digits {out['fid_real_at_n']:.3f}"
    )
    return out


def snr_recommendations(args: argparse.Namespace) -> dict[str, Any]:
    """``fasterdit snr --recipe <setting at ×1> --data <latents> --recommend`` for each timestep law of the
    std part, by the median (the tool's default) and by the mass-in-window method. Stored beside the runs."""
    from fasterdit.cli import main as cli
    from fasterdit.diffusion.recipe import get_preset

    out: dict[str, Any] = {}
    snr_dir = Path(args.work) / "snr"
    snr_dir.mkdir(parents=True, exist_ok=True)
    for law in STD_LAWS:
        recipe = get_preset("sit").updated(std_overrides(law, 1.0))
        yml = snr_dir / f"flow-{law}.yaml"
        recipe.to_yaml(yml)
        out[law] = {}
        for method in ("median", "mass"):
            argv = [
                "snr",
                "--recipe",
                str(yml),
                "--data",
                args.latents,
                "--recommend",
                "--method",
                method,
                "--mc",
                "0",
                "--json",
            ]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli(argv)
            if rc != 0:
                raise SystemExit(f"fasterdit {' '.join(argv)} failed ({rc})")
            d = json.loads(buf.getvalue())
            rec = d["curves"][0]["recommendation"]
            out[law][method] = {
                "k": rec["k"],
                "median_before_nats": rec["median_before_nats"],
                "median_after_nats": rec["median_after_nats"],
                "mass_in_window_before": rec.get("mass_in_window_before"),
                "mass_in_window_after": rec.get("mass_in_window_after"),
                "window_nats": rec.get("window_nats"),
                "data_std": rec["data_std"],
                "command": f"fasterdit snr --recipe flow-{law}.yaml --data <latents> --recommend "
                f"--method {method}",
            }
        out[law]["recipe_yaml"] = recipe.to_yaml()
    common.write_json(results_dir(args) / "snr_recommend.json", out)
    for law in STD_LAWS:
        common.log(
            f"snr --recommend, flow + {law}: k = {out[law]['median']['k']:.3g} (median), "
            f"{out[law]['mass']['k']:.3g} (mass)"
        )
    return out


def run_part(args: argparse.Namespace, part: str, latents: dict[str, Any]) -> None:
    jobs = plan(args, part)
    print_estimate(args, part, jobs)
    t0 = time.time()
    if jobs:
        ae_floor(args, jobs[0].sizes.num_samples)
    if part == "std":
        snr_recommendations(args)
    done: set[str] = set()
    while True:  # planned again after each round: the tuning sweep's stage 2 follows from stage 1's files
        ready = [j for j in jobs if not j.extra.get("pending") and j.name not in done]
        if not ready:
            break
        for j in ready:
            run_job(args, j, latents)
            done.add(j.name)
        jobs = plan(args, part)
    common.log(f"part {part}: done in {(time.time() - t0) / 60:.1f} min")
    pending = [j for j in jobs if j.extra.get("pending")]
    if pending:
        names = ", ".join(j.name for j in pending)
        raise SystemExit(f"part {part}: not run, {names}: {pending[0].extra['pending']}")
