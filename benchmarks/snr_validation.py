"""Does ``fasterdit snr --recommend`` pick the data scale where training is best, on data where ×1 is wrong?
(issue #26)

FasterDiT's first claim: a strategy fails on new data because the data's std moves the PDF of the extended
log-SNR, and the scale should put the PDF where training is efficient. ``snr --recommend`` implements that
choice; on the scaled ``mnist-ae`` latents (std 1) it says ×1, its default. Here it is tested on data whose
raw std is far from 1, by training.

Protocol (written before any run of it):

* **Data** (``DATASETS``): (a) ``latents-raw``: the ``mnist-ae`` latents without ``scaling_factor`` (raw std
  ~1.65; the prepared latents × 1/scaling_factor); (b) ``latents16-raw``: the latents of a second
  autoencoder, ``mnist-ae16`` (16 channels, weak KL; built by ``scripts/train_autoencoder.py --variant
  mnist-ae16`` after this protocol was written), whose raw std is far from 1, × 1/scaling_factor; (c)
  ``pixels``: the MNIST digits in [-1, 1] (std ~0.62, mean ~-0.74). The raw data is what a user has; every
  run multiplies it by ``k``.
* **Laws**: rectified flow, velocity target (the ``sit`` preset), timesteps lognorm(0, 1) and uniform.
* **Model and training**: as ``latent_convergence``'s std part: DiT-Ti/2 on the 8×8×4 latents (DiT-Ti/4 on
  28×28 pixels, the pixel demo's model), batch 64, AdamW lr 3e-3 (the best lr of ``latent_convergence``'s lr
  sweep for ``sit``, tuned on the scaled latents and kept for every data set), warm-up 100, grad clip 1,
  EMA 0.999 with warm-up, **1,050 steps** (the committed 2,100-step std sweep ranks its five lognorm scales
  the same at 1,050 and at 2,100 steps; ``--report`` checks it again on its own runs).
* **Evaluation**: FID-clf of N = 1,000 decoded EMA samples (Euler, 25 NFE, cfg 1) against the held-out
  digits, in pixel space, at steps 525 and 1,050; the reading is the final FID.
* **Sweep**: k ∈ {0.25, 0.5, 1, 2, 4} × the raw data, seed 0. **Best** = the sweep's lowest final FID.
  *Amendment (2026-12-05 13:16, after (b)'s first two sweep points, before its others):* when the lowest
  FID of the finished grid sits at an edge, the grid grows by one ×2 step beyond that edge, at most twice
  each way (×1/16 … ×16), so that the best is interior; the extra points are reported with the sweep.
* **Recommendation**: ``fasterdit snr --recipe <the law on the raw data> --data <the data> --recommend``
  (median at the window's centre, the tool's default), the real command; its k need not be a grid point.
* **Seeds**: 3 seeds (0, 1, 2) at the best k and at the recommended k. ``seed_spread`` = max − min of the
  final FID over the seeds at the best k.
* **Verdict per case**: the goal is ``fid_recommended − fid_best ≤ seed_spread`` (the recommendation is as
  good as the best within the noise), and, where the raw std is far from 1 (≥ 3 or ≤ 1/3, as the issue
  sets it), ``fid_default − fid_recommended >
  seed_spread`` (it beats ×1 beyond the noise). ``fid_default`` is the sweep's k = 1 run (raw data, no
  modulation). A miss is reported as a miss.
* *Amendment (2026-12-05 15:25, after (a)'s and (b)'s sweeps, before any run of (c)'s):* **(d)**
  ``latents-x5``, the issue's classic mistake (the scaled latents × 5, std ≈ 5), enters the cases as a
  *relabelling* of (a): a run of (d) at k is the run of (a) at the same multiplier on what the trainer reads
  (k × 5 / 1.6487), so (d) adds no training evidence of its own; it shows what the tool answers on data
  scaled far from 1, and its one new run is its ×1 (``--part sweep --data latents-x5``: (a) at ×3.03). The
  verdicts of (d) follow from (a)'s runs; the independent evidence for data far from 1 is (b) alone.
* **Scale against shift** (``shift`` part): on (a) with lognorm, data × k against timestep shift s = 1/k (the
  same PDF of λ on the linear flow path: λ moves by −2·ln s), k ∈ {0.5, 2}, 3 seeds each: does the PDF alone
  predict the outcome?

Calibration protocol (item 4 of the issue; written 2026-12-05, after (a)'s sweep and seeds showed the
median rule missing on (a) with uniform, before any run of (b) or (c)):

* **Why a new rule is needed.** The rule "put the median of λ_data at the window's centre (0 nats)" puts
  both laws at the same median, so it gives both the same k. On (a) the best medians differ by law: about
  +1.0 nats for lognorm (×1) and +1.0 … +2.4 for uniform (×1 ≈ ×2), and the committed 2,100-step std sweep
  of ``latent_convergence`` on the same latents agrees (+0.7 and +1.75 nats). The uniform law's λ is wider
  (logistic, std 3.6 nats, against lognorm's N(·, 2²)), and the wider law wants the data larger.
* **The rule family, in λ terms (a target PDF).** "At most a fraction ``q`` of the λ_data PDF below
  ``λ_lo``": k puts the ``q``-quantile of λ_data at ``λ_lo`` (``2·ln k = λ_lo − Q_law(q; data)``). Two
  parameters, a position (``λ_lo``, nats) and a width (``q``); the old rule is the member ``q = 0.5,
  λ_lo = 0``. It reads: the noise-dominated tail of training (λ below ``λ_lo``) gets at most ``q`` of the
  steps, whatever the law's spread.
* **Fit.** The best point of each (data, law) is the vertex of a parabola through the sweep's final log FID
  against ln k at the lowest grid point and its two neighbours (the grid point itself when it is at an
  edge), turned into the best λ_data quantiles by the real ``snr`` law. ``(λ_lo, q)`` minimise the squared
  error in ``2·ln k`` over the four (data, law) cases of **(a) and (b)**, q on a grid of 0.01 … 0.99 with
  λ_lo in closed form.
* **Test on the held-out third, (c) pixels**: 3 seeds at the new rule's k for each law, and the verdict of
  the main protocol (within the seed spread of the best; better than ×1 beyond it where the raw std is far
  from 1). The report shows the old and the new rule side by side for every case, with the fitted values and
  the fit's residuals; a leave-one-out fit (each data set held out in turn) is reported from the sweeps,
  without new runs, as a reading of stability. If the new rule fails on (c), that is reported as a failure
  and the shipped default stays the old rule.

Parts, each resumable from its committed per-run metrics files
(``benchmarks/results/snr_validation/<part>/<name>.json``), as ``latent_convergence``:

    python benchmarks/snr_validation.py --part sweep --data latents-raw --law lognorm   # 5 runs, ~25 min
    python benchmarks/snr_validation.py --part seeds --data latents-raw --law lognorm   # best + rec, 3 seeds
    python benchmarks/snr_validation.py --part shift                                    # 12 runs
    python benchmarks/snr_validation.py --part calibrated   # after (a)'s and (b)'s sweeps: (c) at the fit
    python benchmarks/snr_validation.py --part sweep --data latents-x5   # (d) = (a) rescaled: its ×1, 2 runs
    python benchmarks/snr_validation.py --report        # docs/benchmarks/snr_validation.{md,json,png}
    python benchmarks/snr_validation.py --quick         # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from latent_convergence_plan import CONVERGED, Job, Sizes, std_overrides
from latent_convergence_runs import prepare_latents, run_job

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "snr_validation"
DOCS = ROOT / "docs" / "benchmarks"
LR = 3e-3
LR_SOURCE = "latent_convergence lr sweep: sit's best on the scaled mnist-ae latents (3e-3), kept for all data"
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
LAWS = ("lognorm", "uniform")
SEEDS = (0, 1, 2)
SHIFT_KS = (0.5, 2.0)
MAX_EXTENSIONS = 2  # the sweep's grid grows at most to ×1/16 or ×16 of the raw data
SIZES = Sizes(1050, 525)
QUICK_SIZES = Sizes(2, 2, (), "DiT-Mi/2", 8, 50, 4, 1)


@dataclasses.dataclass(frozen=True)
class DataSet:
    """A data set of the protocol and the DiT that trains on it (``source_of``: what the trainer reads)."""

    name: str
    label: str
    model: str
    #: a data set that is another one rescaled: it trains nothing of its own, its runs are that set's runs
    #: at the same multiplier on what the trainer reads (k here = k there × raw there / raw here)
    relabels: str | None = None


DATASETS = {
    "latents-raw": DataSet("latents-raw", "(a) mnist-ae latents without scaling_factor", "DiT-Ti/2"),
    "latents16-raw": DataSet(
        "latents16-raw", "(b) mnist-ae16 latents (16 channels) without scaling_factor", "DiT-Ti/2"
    ),
    "pixels": DataSet("pixels", "(c) MNIST pixels in [-1, 1]", "DiT-Ti/4"),
    "latents-x5": DataSet(
        "latents-x5",
        "(d) mnist-ae latents × scaling_factor × 5 (the classic mistake: scaled twice)",
        "DiT-Ti/2",
        relabels="latents-raw",
    ),
}
#: the data sets that train (the others are relabellings of them)
MEASURED = tuple(name for name, ds in DATASETS.items() if ds.relabels is None)


def source_of(args: argparse.Namespace, data: str) -> tuple[str, float, str]:
    """(what the trainer reads, the multiplier from it to the raw data, a description of the data)."""
    if data == "latents-raw":
        lat = prepare_latents(args)
        return args.latents, 1.0 / float(lat["scaling_factor"]), "mnist-ae latents × 1/scaling_factor"
    if data == "latents16-raw":
        out = Path(args.work) / "mnist-latent16"
        lat = prepare_latents(args, vae="mnist-ae16", out=str(out))
        return str(out), 1.0 / float(lat["scaling_factor"]), "mnist-ae16 latents × 1/scaling_factor"
    if data == "pixels":
        return ("digits" if args.quick else "mnist"), 1.0, "embedded MNIST training digits in [-1, 1]"
    if data == "latents-x5":
        prepare_latents(args)
        return args.latents, 5.0, "mnist-ae latents × 5 (std ≈ 5)"
    raise SystemExit(f"unknown data set {data!r} (one of {', '.join(DATASETS)})")


def recommendation(
    args: argparse.Namespace, data: str, law: str, tail: tuple[float, float] | None = None
) -> dict[str, Any]:
    """``fasterdit snr --recommend`` for the law on the raw data (the real command), cached in the results:
    the shipped median rule, or with ``tail`` the calibrated rule (``--method tail --tail λ_lo,q``)."""
    from fasterdit.cli import main as cli
    from fasterdit.diffusion.recipe import get_preset

    path = Path(args.results) / "recommend.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{data}/{law}" if tail is None else f"{data}/{law}/tail({tail[0]:.6g},{tail[1]:.6g})"
    if key in saved:
        return saved[key]
    source, raw, _ = source_of(args, data)
    yml = Path(args.work) / f"{data}-{law}-raw.yaml"
    yml.parent.mkdir(parents=True, exist_ok=True)
    get_preset("sit").updated(std_overrides(law, raw)).to_yaml(yml)
    argv = ["snr", "--recipe", str(yml), "--data", source, "--recommend", "--mc", "0", "--json"]
    if tail is not None:
        argv += ["--method", "tail", f"--tail={tail[0]:.6g},{tail[1]:.6g}"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if cli(argv) != 0:
            raise SystemExit(f"fasterdit {' '.join(argv)} failed")
    rec = json.loads(buf.getvalue())["curves"][0]["recommendation"]
    saved[key] = {
        "k": rec["k"],
        "time_shift": rec["time_shift"],
        "raw_std": rec["effective_std_before"],  # the measured std x the multiplier to the raw data
        "median_before_nats": rec["median_before_nats"],
        "command": f"fasterdit snr --recipe <sit + {law}, data x {raw:.4g}> --data {data} --recommend"
        + ("" if tail is None else f" --method tail --tail={tail[0]:.6g},{tail[1]:.6g}"),
    }
    common.write_json(path, saved)
    return saved[key]


def job_for(args, data: str, law: str, k: float, seed: int, part: str, time_shift: float = 1.0) -> Job:
    source, raw, desc = source_of(args, data)
    ov = std_overrides(law, raw * k)
    tag = f"k{k:.4g}" if time_shift == 1.0 else f"shift{time_shift:.4g}"
    if time_shift != 1.0:
        ov.update(time_shift=time_shift, name=f"{ov['name']}-shift{time_shift:g}")
    sizes = QUICK_SIZES if args.quick else dataclasses.replace(SIZES, model=DATASETS[data].model)
    job = Job(part, f"{data}-{law}-{tag}-s{seed}", f"flow-{law}", "sit", ov, seed, LR, LR_SOURCE, sizes)
    job.extra.update(law=law, k=k, time_shift=time_shift, source=source, data=f"{data}: {desc}")
    job.extra["converged"] = CONVERGED["flow"]
    return job


def finished(args: argparse.Namespace, part: str) -> list[dict[str, Any]]:
    d = Path(args.results) / part
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def final_fid(m: dict[str, Any]) -> float:
    return float(m["evals"][-1]["fid"]) if m["status"] == "ok" and m["evals"] else math.inf


def relabel_factor(args: argparse.Namespace, data: str) -> float:
    """k on ``data`` per k on the set it relabels (the same multiplier on what the trainer reads)."""
    source = DATASETS[data].relabels
    assert source is not None, f"{data} is measured, not relabelled"
    return source_of(args, source)[1] / source_of(args, data)[1]


def sweep_of(args: argparse.Namespace, data: str, law: str) -> dict[float, dict[str, Any]]:
    """The sweep's runs by k on ``data`` (for a relabelled set, its source's runs at the same multiplier)."""
    source = DATASETS[data].relabels
    if source is not None:
        f = relabel_factor(args, data)
        return {k * f: m for k, m in sweep_of(args, source, law).items()}
    runs = [m for m in finished(args, "sweep") if m["name"].startswith(f"{data}-{law}-")]
    return {float(m["settings"]["k"]): m for m in runs}


def sweep_scales(args: argparse.Namespace, data: str, law: str) -> list[float]:
    """The sweep's grid: ``SCALES``, extended by one ×2 step beyond an edge while the finished grid's lowest
    FID sits at that edge (at most ``MAX_EXTENSIONS`` steps each way), so that the best is interior."""
    ks = list(SCALES[1:4:2] if args.quick else SCALES)
    if args.quick:
        return ks
    done = sweep_of(args, data, law)
    lo = hi = 0
    while all(k in done for k in ks):
        best = min(ks, key=lambda k: final_fid(done[k]))
        if best == ks[0] and lo < MAX_EXTENSIONS:
            ks.insert(0, ks[0] / 2)
            lo += 1
        elif best == ks[-1] and hi < MAX_EXTENSIONS:
            ks.append(ks[-1] * 2)
            hi += 1
        else:
            break
    return ks


def plan(args: argparse.Namespace, part: str, data: str, law: str) -> list[Job]:
    source = DATASETS[data].relabels
    if source is not None:  # its runs are its source's: the one it adds is its ×1 (the source at 1 / f)
        if part != "sweep":
            raise SystemExit(
                f"{data} is {source} rescaled: its {part} runs are {source}'s, which --report reads "
                "at the same multiplier; only its sweep adds a run (its ×1)"
            )
        return [job_for(args, source, law, 1.0 / relabel_factor(args, data), 0, part)]
    if part == "sweep":
        return [job_for(args, data, law, k, 0, part) for k in sweep_scales(args, data, law)]
    if part == "seeds":
        sweep = sweep_of(args, data, law)
        if len(sweep) < (2 if args.quick else len(SCALES)):
            raise SystemExit(f"{data}/{law}: run --part sweep first ({len(sweep)} of {len(SCALES)} done)")
        best = min(sweep, key=lambda k: final_fid(sweep[k]))
        rec = recommendation(args, data, law)["k"]
        seeds = SEEDS[:2] if args.quick else SEEDS
        ks = [best] + ([rec] if abs(math.log(rec / best)) > 1e-9 else [])
        # seed 0 of the best point is its sweep run
        return [
            job_for(args, data, law, k, s, "sweep" if (s, k) == (0, best) else part)
            for k in ks
            for s in seeds
        ]
    if part == "calibrated":  # the held-out data set at the calibrated rule's k (item 4)
        import snr_validation_calibrate as cal

        fitted = cal.calibration(args)
        if fitted["status"] != "fitted":
            raise SystemExit(f"calibration: {fitted['status']}")
        rec = recommendation(args, data, law, tail=(fitted["lam_lo"], fitted["q"]))["k"]
        return [job_for(args, data, law, rec, s, part) for s in (SEEDS[:1] if args.quick else SEEDS)]
    # shift: data x k against time shift 1/k, on (a) with lognorm
    seeds = SEEDS[:1] if args.quick else SEEDS
    jobs = []
    for k in SHIFT_KS:
        for s in seeds:
            # data × k at seed 0 is the sweep's run (k is a sweep scale): the same settings, the same run
            reuse = s == 0 and k in SCALES and not args.quick
            jobs.append(job_for(args, "latents-raw", "lognorm", k, s, "sweep" if reuse else "shift"))
            jobs.append(job_for(args, "latents-raw", "lognorm", 1.0, s, "shift", time_shift=1.0 / k))
    return jobs


def run(args: argparse.Namespace) -> None:
    import snr_validation_report as report

    datas = args.data.split(",") if args.data else list(MEASURED)
    laws = args.law.split(",") if args.law else list(LAWS)
    for part in args.part.split(","):
        if part == "shift":
            pairs = [("latents-raw", "lognorm")]
        elif part == "calibrated":
            import snr_validation_calibrate as cal

            pairs = [(cal.HELD_OUT, w) for w in laws]
        else:
            pairs = [(d, w) for d in datas for w in laws]
        for data, law in pairs:
            planned: set[str] = set()
            while True:  # a sweep's grid grows while its best sits at an edge: plan again after each pass
                jobs = plan(args, part, data, law)
                if {j.name for j in jobs} <= planned:
                    break
                planned |= {j.name for j in jobs}
                for job in jobs:
                    run_job(args, job, {"source": job.extra["source"]})
    report.write(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", help="sweep, seeds, shift, calibrated (comma-separated, in that order)")
    p.add_argument("--data", help=f"data sets ({', '.join(DATASETS)}; default: all)")
    p.add_argument("--law", help="lognorm, uniform (default both)")
    p.add_argument("--report", action="store_true", help="assemble the report from the metrics files")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every part; temp dirs")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose metrics file exists")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint of a run")
    p.add_argument("--work", default="/tmp/snr_validation", help="run dirs and latents (outside the repo)")
    p.add_argument("--latents", default=None, help="prepared mnist-ae latents (default WORK/mnist-latent)")
    p.add_argument("--results", default=str(RESULTS), help="metrics files")
    p.add_argument("--docs", default=str(DOCS), help="where the report goes")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine OpenMP threads spin against each other)",
    )
    args = p.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="snr_validation_quick_"))
        args.work, args.results, args.docs = str(tmp / "work"), str(tmp / "results"), str(tmp / "docs")
        args.part = args.part or "sweep,seeds,shift,calibrated"
    args.latents = args.latents or str(Path(args.work) / "mnist-latent")
    if not (args.part or args.report):
        p.error("give --part, --report or --quick")
    return args


def main(argv: list[str] | None = None) -> int:
    common.set_argv(argv)
    args = parse_args(argv)
    common.setup_torch(args.threads)
    if args.part:
        run(args)
    else:
        import snr_validation_report as report

        report.write(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
