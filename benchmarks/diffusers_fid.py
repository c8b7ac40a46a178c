"""What FID does a diffusers user get from a fasterdit export, against fasterdit's sampler? (issue #28 item 2)

diffusers' ``DiTTransformer2DModel`` embeds the timestep with ``downscale_freq_shift=1`` where DiT uses 0,
so the stock ``DiTPipeline`` does not compute the network it was given (relative output error 4e-2 on a
tiny run: docs/benchmarks/diffusers_parity.md). This benchmark measures what that, and the rest of the
stock pipeline, does to sample quality.

Protocol (written before any run of it):

* **Model**: one latent test-bed run, trained with the real CLI exactly as ``scripts/demo.sh`` trains
  it: ``fasterdit prepare --images mnist --vae mnist-ae --resolution 32 --small pad`` (4,500 training
  digits -> 8x8x4 latents), ``fasterdit train --config mnist-latent`` (DiT-Ti/2, the ``fasterdit``
  recipe, batch 64, lr 2e-3) for its **1,200 steps** (~8 min with 1 thread at load 4 on this 2-core CPU),
  with ``log.sample_every=0`` and no TensorBoard (neither touches the weights), ``train.threads`` =
  ``--threads``. Or an existing latent run given with ``--run``. Exported (EMA weights) with
  ``fasterdit export --format diffusers``.
* **Sampling**: N = 1,000 per arm and seed, balanced labels (sample i asks for class i mod 10, as
  ``fasterdit eval`` does), the run's resolved evaluation steps S and guidance c (``fasterdit eval``'s
  precedence: for ``mnist-latent`` Euler, 30 steps, cfg 4). Two sampling seeds, 0 and 1, per arm.
* **Arms**:
  1. ``fasterdit``: ``fasterdit eval --ckpt RUN --seed s``: its default sampler, S steps, cfg c;
  2. ``shipped``: the exported ``FasterDiTPipeline`` (``custom_pipeline="pipeline_fasterdit"``,
     ``trust_remote_code=True``) at S steps, guidance c, started from fasterdit's own per-sample noise of
     seed s (``latents=`` = ``fasterdit.generate.seeds.initial_noise``): the same noise as arm 1;
  3. ``stock-shift1``: the stock ``DiTPipeline.from_pretrained(EXPORT)`` as a diffusers user gets it
     (frequencies ``downscale_freq_shift=1``, the export's scheduler: first-order DPM-Solver++ on flow
     sigmas = Euler from t = 0.999 with integer model times), S steps, **unguided** (its null class is
     hard-coded to 1000, so a 10-class model cannot be guided);
  4. ``stock-shift0``: arm 3 with every block's ``time_proj.downscale_freq_shift`` set to 0 (DiT's
     frequencies), the same generators as arm 3: the pair isolates the frequency effect, same noise;
  5. ``fasterdit-cfg1``: ``fasterdit eval --ckpt RUN --seed s --cfg-scale 1``: the fair reference for 3
     and 4 (arm 4 - arm 5 = the stock scheduler's start at 0.999 and integer times, plus other noise).
* **Noise of the stock arms**: ``DiTPipeline`` takes no ``latents``, only a generator, so it cannot use
  fasterdit's per-sample seeds: batch b (samples 250b .. 250b+249) is drawn from
  ``torch.Generator().manual_seed(index_seed(s, "diffusers-batch", b))`` (``fasterdit.generate.seeds``).
* **Images**: the stock pipeline returns ``(decoded / 2 + 0.5).clamp(0, 1)`` on the autoencoder's 32x32
  canvas; it is centre-cropped to 28x28 by fasterdit's own ``center_crop_images`` (what fasterdit's
  decoder does) and, as the shipped pipeline's [0, 1] output, turned into 8-bit pixels by fasterdit's
  ``to_uint8(2p - 1)`` (= ``round(255 p)``, clamped: fasterdit's conversion).
* **Scoring**: fasterdit's evaluator, ``evaluate_samples(uint8, labels, "mnist")`` (arms 1 and 5 through
  ``fasterdit eval``, which calls it): FID in the shipped MNIST classifier's features against the 500
  held-out digits, class accuracy, precision/recall.
* **Reading**: frequency effect = FID(3) - FID(4) per seed (paired noise); scheduler effect = FID(4) -
  FID(5); sampling spread = the largest |FID(seed 0) - FID(seed 1)| over the arms. The frequency shift
  matters for FID if |FID(3) - FID(4)| exceeds the sampling spread at both seeds. Also reported: the
  mean |difference| in 8-bit levels of the paired images (1 vs 2, 3 vs 4).

Each arm and seed is one metrics file, ``benchmarks/results/diffusers_fid/<arm>-s<seed>.json``, kept
when its weights hash, N and steps match, so an interrupted run resumes. Report:
``docs/benchmarks/diffusers_fid.{md,json}`` and the table in docs/diffusers.md between its markers.

    python benchmarks/diffusers_fid.py                  # train 1,200 steps + 5 arms x 2 seeds (~30 min)
    python benchmarks/diffusers_fid.py --run runs/demo-latent   # reuse a trained latent run
    python benchmarks/diffusers_fid.py --estimate       # the plan and a timed estimate, no runs
    python benchmarks/diffusers_fid.py --report         # rewrite the report from the metrics files
    python benchmarks/diffusers_fid.py --quick          # 2-step run, N = 20, all in a temp dir
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "diffusers_fid"
DOCS = ROOT / "docs"
START, END = "<!-- diffusers-fid:start -->", "<!-- diffusers-fid:end -->"
SEEDS = (0, 1)
N, QUICK_N = 1000, 20
BATCH, QUICK_BATCH = 250, 10
TRAIN_STEPS = 1200  # the mnist-latent config's own budget (the demo's)
#: the tiny run of --quick (as tests/diffusers_runs.py): DiT-Mi/2, 2 steps, 2 sampling steps
QUICK_SETS = ["model.name=DiT-Mi/2", "train.batch_size=8", "optim.warmup_steps=1", "train.ema_decay=0.5",
              "sample.steps=2"]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    label: str
    kind: str  # fasterdit | shipped | stock
    guided: bool
    shift: int | None = None  # the stock arms' downscale_freq_shift


ARMS = (
    Arm("fasterdit", "(1) fasterdit eval, default sampler", "fasterdit", True),
    Arm("shipped", "(2) FasterDiTPipeline (shipped), fasterdit's noise", "shipped", True),
    Arm("stock-shift1", "(3) stock DiTPipeline, shift 1 (diffusers' frequencies)", "stock", False, 1),
    Arm("stock-shift0", "(4) stock DiTPipeline, shift 0 (DiT's frequencies)", "stock", False, 0),
    Arm("fasterdit-cfg1", "(5) fasterdit eval, cfg 1", "fasterdit", False),
)
BY_NAME = {a.name: a for a in ARMS}


def cli(argv: list[str]) -> None:
    from fasterdit.cli import main

    if main([str(a) for a in argv]) != 0:
        raise SystemExit(f"fasterdit {' '.join(map(str, argv))} failed")


# ---------------------------------------------------------------------------------------------- the model


def trained_run(args: argparse.Namespace) -> Path:
    """The run to export: ``--run``, or the demo's run trained (or resumed) under ``--work``."""
    from fasterdit.generate.loading import load_trained

    if args.run:
        return Path(args.run)
    run = Path(args.work) / "run"
    with contextlib.suppress(Exception):  # a finished run is reused as it is
        if load_trained(run).step == args.train_steps:
            return run
    latents = Path(args.work) / "latents"
    if not (latents / "manifest.json").is_file():
        split = ["--split", "heldout"] if args.quick else []
        prep = ["prepare", "--images", "mnist", *split, "--vae", "mnist-ae", "--resolution", "32"]
        cli([*prep, "--small", "pad", "--out", latents, "--no-progress", "--workers", "0"])
    sets = [f"data.source={latents}", f"train.steps={args.train_steps}", f"train.threads={args.threads}",
            "log.sample_every=0", "log.tensorboard=false", "log.progress=false",
            f"log.ckpt_every={min(400, args.train_steps)}", *(QUICK_SETS if args.quick else [])]  # fmt: skip
    common.log(f"training {run} ({args.train_steps} steps)")
    with common.Timer("train", common.log):
        cli(["train", "--config", "mnist-latent", "--run-dir", run, "--no-progress",
             *[a for s in sets for a in ("--set", s)]])  # fmt: skip
    common.setup_torch(args.threads)  # the trainer sets its own thread count
    return run


def model_facts(run: Path) -> dict[str, Any]:
    """What identifies the exported weights, and the run's resolved evaluation settings."""
    from fasterdit.generate.defaults import SamplingFlags, resolve_sampling
    from fasterdit.generate.loading import load_trained
    from fasterdit.generate.provenance import weights_sha256

    lm = load_trained(run)
    r = resolve_sampling("eval", lm, SamplingFlags())
    origin = lm.data.origin
    return {
        "run": common.shown_path(run), "step": lm.step, "weights_sha256": weights_sha256(lm, True),
        "model": lm.cfg.model.name, "recipe": lm.recipe.name, "num_classes": lm.model.num_classes,
        "latent_shape": [lm.model.in_channels, *lm.model.input_size], "vae": lm.data.vae,
        "dataset": origin.dataset if origin is not None else "mnist",
        "crop": origin.resolution if origin is not None else None,
        "sampler": r.sampler, "steps": r.steps, "cfg_scale": r.cfg_scale,
        "sources": {k: r.sources[k] for k in ("sampler", "steps", "cfg_scale")},
    }  # fmt: skip


def exported(args: argparse.Namespace, run: Path, facts: dict[str, Any]) -> Path:
    """``fasterdit export --format diffusers`` of the run's EMA weights (kept while the weights match)."""
    out = Path(args.work) / "export"
    meta = out / "fasterdit.json"
    if meta.is_file() and json.loads(meta.read_text()).get("weights_sha256") == facts["weights_sha256"]:
        return out
    shutil.rmtree(out, ignore_errors=True)
    cli(["export", "--ckpt", run, "--format", "diffusers", "--out", out])
    return out


# ---------------------------------------------------------------------------------------------- the arms


def balanced(start: int, end: int, k: int) -> list[int]:
    return [i % k for i in range(start, end)]


def pipeline(arm: Arm, export: Path):
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    if arm.kind == "shipped":
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(export), custom_pipeline="pipeline_fasterdit", trust_remote_code=True
        )
    else:
        pipe = diffusers.DiTPipeline.from_pretrained(str(export))
        for block in pipe.transformer.transformer_blocks:
            proj = block.norm1.emb.time_proj
            assert proj.downscale_freq_shift == 1, "the stock transformer should load with diffusers' shift 1"
            proj.downscale_freq_shift = arm.shift
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def diffusers_samples(arm: Arm, export: Path, facts: dict[str, Any], seed: int, n: int, batch: int):
    """(uint8 (n, 28, 28, 1), labels) of a diffusers arm, by the protocol's noise and image conversion."""
    from fasterdit.data.embedded import center_crop_images
    from fasterdit.generate import seeds
    from fasterdit.viz import to_uint8

    pipe = pipeline(arm, export)
    images, labels = [], []
    for b, start in enumerate(range(0, n, batch)):
        end = min(n, start + batch)
        y = balanced(start, end, facts["num_classes"])
        if arm.kind == "shipped":  # fasterdit's per-sample noise of (seed, i)
            noise = seeds.initial_noise(seed, start, end, tuple(facts["latent_shape"]))
            scale = facts["cfg_scale"] if arm.guided else 1.0
            out = pipe(
                class_labels=y,
                guidance_scale=scale,
                num_inference_steps=facts["steps"],
                latents=noise,
                output_type="pt",
            ).images
        else:  # one generator per batch: the stock pipeline draws its own noise
            g = torch.Generator().manual_seed(seeds.index_seed(seed, "diffusers-batch", b))
            out = pipe(
                class_labels=y,
                guidance_scale=1.0,
                num_inference_steps=facts["steps"],
                generator=g,
                output_type="pt",
            ).images
            if facts["crop"] is not None:
                out = center_crop_images(out, facts["crop"])
        images.append(to_uint8(out.float() * 2 - 1))
        labels += y
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def fasterdit_eval(arm: Arm, run: Path, seed: int, n: int, batch: int, npz: Path) -> dict[str, Any]:
    """The arm through the real ``fasterdit eval`` (its samples kept in ``npz`` for the paired reading)."""
    out = npz.with_suffix(".eval.json")
    for p in (npz, out, npz.with_suffix(".json")):
        p.unlink(missing_ok=True)
    cfg = [] if arm.guided else ["--cfg-scale", "1"]
    cli(["eval", "--ckpt", run, "--num-samples", n, "--seed", seed, "--batch-size", batch, *cfg,
         "--save-samples", npz, "--out", out, "--no-progress"])  # fmt: skip
    return json.loads(out.read_text())


def run_arm(args, arm: Arm, seed: int, run: Path, export: Path, facts: dict[str, Any]) -> dict[str, Any]:
    from fasterdit.eval import evaluate_samples

    npz = Path(args.work) / "samples" / f"{arm.name}-s{seed}.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    load0, t0 = common.loadavg(), time.perf_counter()
    if arm.kind == "fasterdit":
        m = fasterdit_eval(arm, run, seed, args.n, args.batch, npz)
        noise = "fasterdit per-sample noise of (seed, i)"
    else:
        images, labels = diffusers_samples(arm, export, facts, seed, args.n, args.batch)
        np.savez(npz, arr_0=images, arr_1=labels)
        m = evaluate_samples(images, labels, facts["dataset"])
        per_batch = f"one generator per batch of {args.batch}: index_seed(seed, 'diffusers-batch', b)"
        noise = "fasterdit per-sample noise of (seed, i), as latents" if arm.kind == "shipped" else per_batch
    keep = ("fid", "class_accuracy", "precision", "recall", "classifier_score", "fid_real_at_n")
    keep += ("num_samples", "reference", "reference_n", "feature_network", "summary")
    guided = arm.guided
    return {
        "arm": arm.name, "label": arm.label, "seed": seed, "n": args.n, "batch": args.batch,
        "steps": facts["steps"], "cfg_scale": facts["cfg_scale"] if guided else 1.0,
        "nfe": facts["steps"], "guided": guided and facts["cfg_scale"] != 1,  # NFE: a guided pair counts once
        "downscale_freq_shift": 0 if arm.kind != "stock" else arm.shift, "noise": noise,
        "weights_sha256": facts["weights_sha256"], "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(), "loadavg_start": load0, "loadavg_end": common.loadavg(),
        **{k: m.get(k) for k in keep},
    }  # fmt: skip


def result_path(args, arm: str, seed: int) -> Path:
    return Path(args.results) / f"{arm}-s{seed}.json"


def current(args, arm: str, seed: int, facts: dict[str, Any]) -> dict[str, Any] | None:
    """The arm's saved metrics when they belong to these weights, N and steps."""
    p = result_path(args, arm, seed)
    if not p.is_file():
        return None
    r = json.loads(p.read_text())
    same = (r.get("weights_sha256"), r.get("n"), r.get("steps")) == (facts["weights_sha256"], args.n,
                                                                       facts["steps"])  # fmt: skip
    return r if same else None


def paired(args, a: str, b: str, seed: int) -> dict[str, Any] | None:
    """Mean / max |difference| in 8-bit levels of two arms' images from the same noise (None: not kept)."""
    pa, pb = (Path(args.work) / "samples" / f"{x}-s{seed}.npz" for x in (a, b))
    if not (pa.is_file() and pb.is_file()):
        return None
    with np.load(pa) as fa, np.load(pb) as fb:
        x, y = fa["arr_0"].astype(np.int16), fb["arr_0"].astype(np.int16)
        same_labels = bool(np.array_equal(fa["arr_1"], fb["arr_1"]))
    d = np.abs(x - y)
    return {"arms": [a, b], "seed": seed, "n": len(x), "same_labels": same_labels,
            "mean_abs_levels": float(d.mean()), "max_abs_levels": int(d.max()),
            "share_pixels_differing": float((d > 0).mean())}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the report


def readings(rows: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    def fid(arm: str, s: int) -> float:
        r = rows.get((arm, s))
        return float(r["fid"]) if r and r.get("fid") is not None else math.nan

    spread = {a.name: abs(fid(a.name, SEEDS[0]) - fid(a.name, SEEDS[1])) for a in ARMS}
    finite = [v for v in spread.values() if math.isfinite(v)]
    freq = [fid("stock-shift1", s) - fid("stock-shift0", s) for s in SEEDS]
    mean = {a.name: common.mean_std([fid(a.name, s) for s in SEEDS])[0] for a in ARMS}
    out = {
        "frequency_effect": freq, "scheduler_effect": mean["stock-shift0"] - mean["fasterdit-cfg1"],
        "shipped_minus_fasterdit": [fid("shipped", s) - fid("fasterdit", s) for s in SEEDS],
        "stock_minus_fasterdit_default": mean["stock-shift1"] - mean["fasterdit"],
        "sampling_spread": max(finite) if finite else math.nan, "spread_per_arm": spread, "mean_fid": mean,
    }  # fmt: skip
    ok = all(math.isfinite(v) for v in freq) and math.isfinite(out["sampling_spread"])
    out["frequency_matters"] = (all(abs(v) > out["sampling_spread"] for v in freq)) if ok else None
    return out


def plain_reading(rd: dict[str, Any]) -> str:
    f, sp = rd["frequency_effect"], rd["sampling_spread"]
    if rd["frequency_matters"] is None:
        return "Not all arms have run yet."
    verdict = "beyond" if rd["frequency_matters"] else "within"
    return (
        f"The frequency shift changes FID by {f[0]:+.3f} / {f[1]:+.3f} (seeds {SEEDS[0]} / {SEEDS[1]}, "
        f"stock shift 1 minus shift 0, same noise), {verdict} the sampling spread of {sp:.3f} (the largest "
        f"seed-to-seed FID difference of an arm); the stock scheduler adds {rd['scheduler_effect']:+.3f} "
        f"(shift 0 against fasterdit at cfg 1), and a diffusers user of the stock pipeline gets "
        f"{rd['stock_minus_fasterdit_default']:+.3f} against fasterdit's guided default."
    )


def table(rows: dict[tuple[str, int], dict[str, Any]]) -> str:
    head = ["arm", "cfg", "NFE", *[f"FID seed {s}" for s in SEEDS], "mean FID",
            *[f"class acc seed {s}" for s in SEEDS]]  # fmt: skip
    body = []
    for a in ARMS:
        rs = [rows.get((a.name, s)) for s in SEEDS]
        first = next((r for r in rs if r), None)
        fids = [float(r["fid"]) if r else math.nan for r in rs]
        body.append([a.label, first["cfg_scale"] if first else None, first["nfe"] if first else None,
                     *fids, common.mean_std(fids)[0],
                     *[float(r["class_accuracy"]) if r else math.nan for r in rs]])  # fmt: skip
    return common.md_table(head, body)


def write_report(args, facts: dict[str, Any], model: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    rows = {(a.name, s): r for a in ARMS for s in SEEDS if (r := current(args, a.name, s, model))}
    pairs = [p for s in SEEDS for ab in (("fasterdit", "shipped"), ("stock-shift1", "stock-shift0"))
             if (p := paired(args, *ab, s))]  # fmt: skip
    pair_file = Path(args.results) / "paired.json"
    if pairs:
        common.write_json(pair_file, pairs)
    elif pair_file.is_file():
        pairs = json.loads(pair_file.read_text())
    rd = readings(rows)
    floor = next((r["fid_real_at_n"] for r in rows.values() if r.get("fid_real_at_n") is not None), None)
    lines = common.report_header("diffusers FID: the stock DiTPipeline against fasterdit's sampler",
                                 Path(__file__), facts, seconds)  # fmt: skip
    lines += [
        "## Protocol", "",
        "The module docstring of `benchmarks/diffusers_fid.py` (written before the run). In short: "
        f"the latent test bed (`mnist-latent`, {model['model']}, recipe `{model['recipe']}`), "
        f"{model['step']} steps, run `{model['run']}`, EMA weights `{model['weights_sha256'][:12]}`, "
        f"exported with `fasterdit export --format diffusers`; N = {args.n} per arm and seed, balanced "
        f"labels, {model['sampler']} {model['steps']} steps ({model['sources']['steps']}), guidance "
        f"{model['cfg_scale']:g} ({model['sources']['cfg_scale']}) where the arm guides; seeds "
        f"{', '.join(map(str, SEEDS))}. FID-clf against `mnist/heldout` (500 digits) in the shipped "
        f"classifier's features; real digits score {floor if floor is None else f'{floor:.3f}'} at this N.",
        "",
        "Images: the stock pipeline's `(x/2 + 0.5).clamp(0, 1)` on the 32x32 canvas, centre-cropped to 28x28 "
        "(`center_crop_images`, fasterdit's crop), 8-bit by `to_uint8(2p - 1)` (fasterdit's conversion). The "
        "stock pipeline cannot take fasterdit's per-sample noise (no `latents` argument): its batches of "
        f"{args.batch} are drawn from one generator each, seeded `index_seed(seed, 'diffusers-batch', b)`; "
        "arms 3 and 4 share those generators, arm 2 starts from arm 1's noise.", "",
        "## Results", "", table(rows), "", plain_reading(rd), "",
    ]  # fmt: skip
    if pairs:
        body = [
            [" vs ".join(p["arms"]), p["seed"], p["mean_abs_levels"], p["max_abs_levels"],
             f"{100 * p['share_pixels_differing']:.2f}%"]
            for p in pairs
        ]  # fmt: skip
        head = ["arms", "seed", "mean", "max", "pixels differing"]
        lines += [
            "Paired images (same noise), |difference| in 8-bit levels:",
            "",
            common.md_table(head, body),
            "",
        ]
    lines += ["Per arm and seed: " + ", ".join(f"{a}-s{s} {r['seconds']:.0f} s (load "
              f"{r['loadavg_start'][0]:.1f})" for (a, s), r in rows.items()) + "."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    docs = Path(args.docs)
    (docs / "benchmarks").mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks" / "diffusers_fid.md").write_text(text)
    data = {"command": common.command_line(Path(__file__)), "machine": facts, "model": model,
            "arms": [rows[k] for k in sorted(rows, key=lambda k: ([a.name for a in ARMS].index(k[0]), k[1]))],
            "paired": pairs, "readings": rd}  # fmt: skip
    common.write_json(docs / "benchmarks" / "diffusers_fid.json", data)
    doc = docs / "diffusers.md"
    head, rest = doc.read_text().split(START, 1)
    section = f"{table(rows)}\n\n{plain_reading(rd)}"
    doc.write_text(f"{head}{START}\n{section}\n{END}{rest.split(END, 1)[1]}")
    print(text)
    return data


# ---------------------------------------------------------------------------------------------- estimate


def estimate(args: argparse.Namespace) -> None:
    """The plan and a timed guess: a few training steps and sampling forwards of the model, on this CPU."""
    from fasterdit.models import create_model

    model_name = "DiT-Mi/2" if args.quick else "DiT-Ti/2"
    m = create_model(model_name, input_size=8, in_channels=4, num_classes=10)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, y, t = torch.randn(64, 4, 8, 8), torch.randint(0, 10, (64,)), torch.rand(64) * 1000
    t0 = time.perf_counter()
    for _ in range(3):
        opt.zero_grad()
        m(x, t, y).float().pow(2).mean().backward()
        opt.step()
    step = (time.perf_counter() - t0) / 3
    xb, yb, tb = torch.randn(args.batch, 4, 8, 8), torch.randint(0, 10, (args.batch,)), torch.rand(args.batch)
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(3):
            m(xb, tb * 1000, yb)
        fwd = (time.perf_counter() - t0) / 3 / args.batch  # per sample and NFE
    steps, cfg = (2, 4.0) if args.quick else (30, 4.0)
    nfe = {a.name: steps * (2 if a.guided and cfg != 1 else 1) for a in ARMS}  # model rows per sample
    sample_s = {k: v * args.n * len(SEEDS) * fwd for k, v in nfe.items()}
    train_s = 0 if args.run else args.train_steps * step
    what = f"reuse {args.run}" if args.run else f"train {args.train_steps} steps"
    print(
        f"plan: {what}, export, {len(ARMS)} arms x {len(SEEDS)} seeds x N = {args.n} (assuming the "
        f"mnist-latent defaults: {steps} steps, cfg {cfg:g}); threads {torch.get_num_threads()}, "
        f"load {common.loadavg()[0]:.2f}"
    )
    print(f"  measured: {step * 1e3:.0f} ms per training step (batch 64), {fwd * 1e6:.0f} us per sample-NFE")
    for k, v in sample_s.items():
        print(f"  {k:15s} {nfe[k]:3d} forwards/sample  ~{v / 60:.1f} min (model only; + decoding, scoring)")
    total = train_s + sum(sample_s.values())
    print(
        f"  training ~{train_s / 60:.1f} min; total ~{total / 60:.0f} min of model time (when this script "
        "was written, at load ~4, 1 thread: the trainer 0.41 s/step, fasterdit eval ~150 s per guided 1,000)"
    )


# ---------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2-step run, N = 20, everything in a temp dir")
    p.add_argument("--run", help="an existing latent run (dir) to export instead of training one")
    p.add_argument("--work", help="scratch: latents, run, export, samples (default /tmp/diffusers_fid)")
    p.add_argument("--results", help="per-arm metrics (default benchmarks/results/diffusers_fid)")
    p.add_argument("--arms", help=f"comma-separated subset of {', '.join(BY_NAME)} (default: all)")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the metrics files")
    p.add_argument("--estimate", action="store_true", help="print the plan and a timed estimate, run nothing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.quick:
        args.work = args.work or tempfile.mkdtemp(prefix="fasterdit-dfid-quick-")
        args.results = args.results or str(Path(args.work) / "results")
        args.docs = str(Path(args.work) / "docs")  # a copy: --quick never writes the repository's docs
        args.n, args.batch, args.train_steps = QUICK_N, QUICK_BATCH, 2
    else:
        args.work = args.work or "/tmp/diffusers_fid"
        args.results = args.results or str(RESULTS)
        args.docs = str(DOCS)
        args.n, args.batch, args.train_steps = N, BATCH, TRAIN_STEPS
    return args


def main(argv: list[str] | None = None) -> int:
    common.set_argv(argv)
    args = parse(argv)
    common.setup_torch(args.threads)
    if args.estimate:
        estimate(args)
        return 0
    facts = common.machine_facts()
    if args.quick:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOCS / "diffusers.md", docs / "diffusers.md")
    t0 = time.perf_counter()
    run = trained_run(args)
    model = model_facts(run)
    if not args.report:
        export = exported(args, run, model)
        arms = [BY_NAME[a] for a in args.arms.split(",")] if args.arms else list(ARMS)
        for arm in arms:
            for seed in SEEDS:
                if current(args, arm.name, seed, model):
                    common.log(f"{arm.name} seed {seed}: done, kept")
                    continue
                with common.Timer(f"{arm.name} seed {seed}", common.log):
                    hush = args.quick
                    with contextlib.redirect_stdout(io.StringIO()) if hush else contextlib.nullcontext():
                        r = run_arm(args, arm, seed, run, export, model)
                common.write_json(result_path(args, arm.name, seed), r)
                common.log(f"{arm.name} seed {seed}: FID {r['fid']:.3f}, class acc {r['class_accuracy']:.3f}")
                common.setup_torch(args.threads)
    write_report(args, facts, model, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
