"""A held-out test of the within-element-std hypothesis (issue #26, after ``snr_validation_posthoc``).

Protocol (written 2026-12-05, committed 22:11 UTC before any run of it; the predictions are frozen in
``benchmarks/results/snr_validation_within/predictions-<law>.json``, committed before the law's first run):

* **What is tested.** ``snr_validation_posthoc`` found, after the fact, that the best scales of the three
  data sets line up when the λ law is placed with the *within-element* std (around the per-element mean over
  the data set) rather than the pooled std the tool measures. A hypothesis formed on the data it explains
  needs data it has not seen, chosen so that the two stds disagree.
* **The held-out data set, (e) ``latents16-chan``**: the ``mnist-ae16`` latents of (b), normalised per
  channel by the recipe (``scaling.mode: channel``, LightningDiT's latent normalisation: x' = (x − μ_c)/s_c ·
  t, with ``t`` the ``scaling.target_std``). The same autoencoder and images as (b); what changes is that the
  channel offsets, most of (b)'s mean image, are gone: the pooled std of (e) is ``t`` exactly, its
  within-element std 0.653·``t`` (float64, below), against 5.49 and 1.48 on raw (b). Carried over from
  (b)'s best, the two stds put (e)'s best at t ≈ 0.40 (within) and ≈ 0.97 (pooled), 1.8 nats apart in λ;
  the law is lognorm, where (b)'s FID changes most with the scale (20 → 48 over ×2 on its sweep). (e) holds
  no new images: it tests what the hypothesis says about the mean image, not a new content's statistics.
* **Predictions** of the best ``t``, each from the sweeps of (a)–(c) only:
  ``within rule``: the within-element median of λ_data at the mean of the three data sets' best within
  medians (posthoc's target, lognorm), ``t = exp(target/2) / within(e)``;
  ``shipped rule``: ``fasterdit snr --recommend`` on the channel-mode recipe (the real command; the pooled
  median at the window's centre), ``t ≈ 1``;
  ``within, from (b)``: (b)'s own best within std carried over, ``t = best_k_b · within(b) / within(e)``
  (the controlled reading: same images, only the normalisation differs);
  ``pooled, from (b)``: (b)'s best pooled std carried over, ``t = best_k_b · pooled(b) / 1`` (within 0.04
  nats of the shipped rule's 1 [corrected after the runs: 0.07 nats, as the frozen predictions say]: the
  shipped run stands for it; not trained separately).
* **Runs** (the model, batch, optimizer, lr, 1,050 steps and evaluation of ``snr_validation``; seeds 0–2):
  the within rule's ``t`` and the shipped rule's ``t``, 3 seeds each; the within-from-(b) ``t``, seed 0.
* **Verdict** (decided now): with the mean final FID over 3 seeds and the spread (max − min) of each,
  the within rule is *better* if mean(shipped) − mean(within) > the larger of the two spreads, *worse* if
  mean(within) − mean(shipped) > it, else *no difference beyond the seed noise*. Better → the
  hypothesis survives its first held-out test (and becomes a candidate default, to be tested on the issue's
  cases); worse → it is refuted and reported so; no difference → undecided, reported so.
* *Amendment (committed 22:44 UTC, after lognorm's seed 0 of the within and shipped rules, 15.3 against
  25.7, and before any uniform run of (e)):* the same test with **uniform** timesteps, the issue's second
  law (its predictions from the uniform sweeps of (a)–(c), frozen in ``predictions-uniform.json`` before
  its first run; the same runs and verdict, plus seed 0 at the pooled std's carried-over best, t ≈ 3.9,
  which the shipped rule's t = 1 does not stand for under this law). The within and shipped rules sit
  closer there (0.68 nats against 1.22), so a "no difference" is more likely and would say less.

Re-check (``--recheck``; the sample fixed at 22:30, when one run had finished, by position not by result:
the seed-0 run of each trained prediction, per law): the final FID again by ``fasterdit eval`` in a fresh
process (round-off only), the per-channel mean and std the run normalised by (its ``recipe.yaml``)
against numpy's float64 statistics of the scaled latents from the shard (posterior means and variances),
and the std it recorded (``snr.json``) against ``t``.

Usage::

    python benchmarks/snr_validation_within.py --run [--law lognorm] [--seeds 0,1]   # 7 runs a law, ~7 min
    python benchmarks/snr_validation_within.py --report   # docs/benchmarks/snr_validation_within.*
    python benchmarks/snr_validation_within.py --recheck  # docs/benchmarks/snr_validation_within_recheck.*
    python benchmarks/snr_validation_within.py --quick    # tiny smoke run (tests)
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
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import snr_validation as sv
import snr_validation_posthoc as ph
from latent_convergence_plan import Job, std_overrides
from latent_convergence_runs import run_job

RESULTS = sv.ROOT / "benchmarks" / "results" / "snr_validation_within"
DATA = "latents16-chan"
SOURCE = "latents16-raw"
LAWS = ("lognorm", "uniform")  # uniform: the amendment committed 22:44, before any uniform run of (e)
#: the trained predictions per law: (name, seeds); under lognorm ``pooled_from_b`` is within 0.07 nats of the
#: shipped rule, whose runs stand for it
TRAINED = {
    "lognorm": (("within_rule", sv.SEEDS), ("shipped_rule", sv.SEEDS), ("within_from_b", sv.SEEDS[:1])),
    # uniform: the shipped rule's t is not the pooled std's carried-over best (3.9), so that one runs too
    "uniform": (("within_rule", sv.SEEDS), ("shipped_rule", sv.SEEDS), ("within_from_b", sv.SEEDS[:1]),
                ("pooled_from_b", sv.SEEDS[:1])),
}  # fmt: skip


def _channels(folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(posterior means, variances) of a prepared latent folder as (item, channel, position), and its
    manifest."""
    values, extra = ph.latent_elements(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    c = int(manifest["channels"])
    return values.reshape(len(values), c, -1), extra.reshape(len(extra), c, -1), manifest


def channel_moments(folder: Path) -> dict[str, float]:
    """Pooled and within-element std of a latent folder's latents normalised per channel to std 1 (float64
    numpy from the shards' posterior means and variances: per channel Var = Var[mean] + E[σ²], as
    ``fasterdit prepare`` measures it)."""
    x, e, _ = _channels(folder)
    mean_c = x.mean(axis=(0, 2))
    var_c = ((x - mean_c[None, :, None]) ** 2).mean(axis=(0, 2)) + e.mean(axis=(0, 2))
    z = (x - mean_c[None, :, None]) / np.sqrt(var_c)[None, :, None]
    ze = e / var_c[None, :, None]
    pooled = math.sqrt((z**2).mean() + ze.mean() - z.mean() ** 2)
    within = math.sqrt(((z - z.mean(axis=0)) ** 2).mean() + ze.mean())
    return {"pooled": pooled, "within": within}


def channel_stats(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of a latent folder's latents as the trainer reads them (× ``scaling_factor``),
    float64 numpy from the shards (Var = Var[posterior mean] + E[posterior variance])."""
    x, e, manifest = _channels(folder)
    f = float(manifest["scaling_factor"])
    mean = x.mean(axis=(0, 2)) * f
    var = ((x * f - mean[None, :, None]) ** 2).mean(axis=(0, 2)) + e.mean(axis=(0, 2)) * f * f
    return mean, np.sqrt(var)


def overrides(law: str, t: float) -> dict[str, Any]:
    """The ``sit`` preset with the timestep law ``law``, the data normalised per channel to std ``t``."""
    ov = std_overrides(law, 1.0)
    del ov["scaling.multiplier"]
    ov.update({"name": f"flow-{law}-chan{t:.4g}", "scaling.mode": "channel", "scaling.target_std": float(t)})
    return ov


def shipped_rule(args: argparse.Namespace, law: str, source: str) -> float:
    """``fasterdit snr --recommend`` on the channel-mode recipe at t = 1 (the real command): its t."""
    from fasterdit.cli import main as cli
    from fasterdit.diffusion.recipe import get_preset

    yml = Path(args.work) / f"{DATA}-{law}.yaml"
    yml.parent.mkdir(parents=True, exist_ok=True)
    get_preset("sit").updated(overrides(law, 1.0)).to_yaml(yml)
    argv = ["snr", "--recipe", str(yml), "--data", source, "--recommend", "--mc", "0", "--json"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if cli(argv) != 0:
            raise SystemExit(f"fasterdit {' '.join(argv)} failed")
    return float(json.loads(buf.getvalue())["curves"][0]["recommendation"]["k"])


def predictions(args: argparse.Namespace, law: str) -> dict[str, Any]:
    """The frozen predictions for ``law`` (computed once from the sweeps of (a)–(c), then read back)."""
    path = Path(args.results) / f"predictions-{law}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.quick:  # no sweeps to read: made-up numbers, the code paths only
        return {
            "t": {"within_rule": 0.5, "shipped_rule": 1.0, "within_from_b": 0.4, "pooled_from_b": 2.0},
            "target_within_median_nats": 0.0,
            "best_medians": {},
            "best_k_b": 1.0,
            "moments_b": {"pooled": 1.0, "within": 1.0},
            "moments_e": {"pooled": 1.0, "within": 1.0},
            "date": "quick",
        }
    sv_args = sv.parse_args(["--report", "--work", args.work])
    for data in sv.MEASURED:
        sv.source_of(sv_args, data)  # prepares the latents where they are missing (seeded: the same ones)
    rows = [r for r in ph.best_medians(sv_args, Path(args.work)) if r["law"] == law]
    if any(r["status"] != "measured" for r in rows):
        raise SystemExit(f"the {law} sweeps of (a)-(c) are not all finished")
    source = sv.source_of(sv_args, SOURCE)[0]
    e = channel_moments(Path(source))
    target = float(np.mean([r["median_within"] for r in rows]))
    b = next(r for r in rows if r["data"] == SOURCE)
    t = {
        "within_rule": math.exp(target / 2) / e["within"],
        "shipped_rule": shipped_rule(args, law, source),
        "within_from_b": b["best_k"] * b["moments"]["within"] / e["within"],
        "pooled_from_b": b["best_k"] * b["moments"]["pooled"] / e["pooled"],
    }
    frozen = {
        "t": t,
        "target_within_median_nats": target,
        "best_medians": {r["data"]: r["median_within"] for r in rows},
        "best_k_b": b["best_k"],
        "moments_b": b["moments"],
        "moments_e": e,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    common.write_json(path, frozen)
    return frozen


def source_folder(args: argparse.Namespace) -> str:
    """The prepared latents (e) is made of: (b)'s, or with ``--quick`` the smoke run's own."""
    return args.latents if args.quick else sv.source_of(args, SOURCE)[0]


def run_name(law: str, t: float, seed: int) -> str:
    return f"{DATA}-{law}-t{t:.4g}-s{seed}"


def job_for(args: argparse.Namespace, law: str, rule: str, t: float, seed: int) -> Job:
    source = source_folder(args)
    sizes = sv.QUICK_SIZES if args.quick else dataclasses.replace(sv.SIZES, model=sv.DATASETS[SOURCE].model)
    job = Job("within", run_name(law, t, seed), f"flow-{law}", "sit", overrides(law, t), seed, sv.LR,
              sv.LR_SOURCE, sizes)  # fmt: skip
    job.extra.update(law=law, k=t, rule=rule, time_shift=1.0, source=source,
                     data=f"{DATA}: (b)'s latents normalised per channel to std t")  # fmt: skip
    job.extra["converged"] = sv.CONVERGED["flow"]
    return job


def plan(args: argparse.Namespace) -> list[Job]:
    """Law by law; within a law seed-major (every prediction's seed 0 first), so that a session cut short
    still compares like with like."""
    jobs = []
    for law in args.laws:
        t = predictions(args, law)["t"]
        for seed in sv.SEEDS:
            for rule, seeds in TRAINED[law]:
                if seed in seeds and seed in args.seeds and not (args.quick and seed > 0):
                    jobs.append(job_for(args, law, rule, t[rule], seed))
    return jobs


def recheck(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The seed-0 run of each trained prediction, checked by other paths (see the module docstring)."""
    import yaml

    from snr_validation_recheck import FID_TOLERANCE, STD_TOLERANCE, eval_again

    mean, std = channel_stats(Path(source_folder(args)))
    rows = []
    sample = [(law, rule, predictions(args, law)["t"][rule]) for law in args.laws for rule, _ in TRAINED[law]]
    with tempfile.TemporaryDirectory() as tmp:
        for law, rule, t in sample:
            name = run_name(law, t, 0)
            metrics = Path(args.results) / "within" / f"{name}.json"
            run_dir = Path(args.work) / "runs" / "within" / name
            if not (metrics.is_file() and run_dir.is_dir()):
                rows.append({"run": name, "rule": rule, "status": "not run yet"})
                continue
            final = json.loads(metrics.read_text())["evals"][-1]
            again = eval_again(run_dir, Path(tmp) / f"{name}.json")
            scaling = yaml.safe_load((run_dir / "recipe.yaml").read_text())["scaling"]
            seen = json.loads((run_dir / "snr.json").read_text())["placement"]["effective_std"]
            rel = max(np.max(np.abs(np.array(scaling["std"]) / std - 1.0)),
                      np.max(np.abs(np.array(scaling["mean"]) - mean)) / float(np.min(std)))  # fmt: skip
            rows.append({
                "run": name,
                "rule": rule,
                "status": "checked",
                "fid_metrics_file": final["fid"],
                "fid_eval_cli": again["fid"],
                "fid_agree": abs(again["fid"] - final["fid"]) <= FID_TOLERANCE * max(1.0, final["fid"]),
                "channel_stats_max_rel_error": float(rel),
                "channel_stats_agree": bool(rel <= STD_TOLERANCE),
                "std_recorded": seen,
                "t": t,
                "std_agree": abs(seen / t - 1.0) <= STD_TOLERANCE,
            })  # fmt: skip
    return rows


HEADERS = ("run", "status", "FID (metrics file)", "FID (fasterdit eval)", "agree",
           "channel stats: max rel. error", "agree", "std recorded", "= t")  # fmt: skip


def recheck_markdown(rows: list[dict[str, Any]], machine: dict) -> str:
    table = [
        [r["run"], r["status"], r.get("fid_metrics_file"), r.get("fid_eval_cli"), r.get("fid_agree"),
         r.get("channel_stats_max_rel_error"), r.get("channel_stats_agree"), r.get("std_recorded"),
         r.get("std_agree")]
        for r in rows
    ]  # fmt: skip
    lines = [
        "# Re-check of the within-element-std test's runs (issue #26)",
        "",
        "Command: `python benchmarks/snr_validation_within.py --recheck` (after the runs; their run dirs in "
        "`--work`).",
        "",
        "## Machine",
        "",
        common.facts_markdown(machine),
        "",
        "## What is checked",
        "",
        "Re-check (" + __doc__.split("Re-check (")[1].split("Usage::")[0].strip(),
        "",
        common.md_table(HEADERS, table),
    ]
    return "\n".join(lines) + "\n"


def results(args: argparse.Namespace, law: str) -> dict[str, Any]:
    """Per trained prediction for ``law``: its t, the final FID per seed, mean and spread; and the verdict."""
    t = predictions(args, law)["t"]
    folder = Path(args.results) / "within"
    rows = []
    for rule, seeds in TRAINED[law]:
        paths = [folder / f"{run_name(law, t[rule], s)}.json" for s in seeds]
        mine = [json.loads(p.read_text()) for p in paths if p.is_file()]
        fids = {int(m["seed"]): sv.final_fid(m) for m in mine}
        done = [fids[s] for s in sorted(fids)]
        rows.append({
            "rule": rule,
            "t": t[rule],
            "fids": fids,
            "mean": float(np.mean(done)) if done else None,
            "spread": (max(done) - min(done)) if len(done) > 1 else None,
            "seeds_planned": len(seeds),
        })  # fmt: skip
    by = {r["rule"]: r for r in rows}
    return {"rows": rows, "verdict": verdict(by["within_rule"], by["shipped_rule"])}


def verdict(within: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    """The protocol's verdict, only once both have all their seeds."""
    if len(within["fids"]) < within["seeds_planned"] or len(shipped["fids"]) < shipped["seeds_planned"]:
        return {"status": "not finished"}
    noise = max(within["spread"], shipped["spread"])
    gain = shipped["mean"] - within["mean"]
    status = "better" if gain > noise else "worse" if -gain > noise else "no difference beyond the seed noise"
    return {"status": status, "gain": gain, "noise": noise}


def plot(per_law: dict[str, dict[str, Any]], path: Path) -> Path | None:
    plt = common.pyplot()
    if plt is None or not any(r["fids"] for res in per_law.values() for r in res["rows"]):
        return None
    fig, axes = plt.subplots(1, len(per_law), figsize=(4.8 * len(per_law), 3.4), squeeze=False)
    for ax, (law, res) in zip(axes[0], per_law.items()):
        for r in res["rows"]:
            if r["fids"]:
                label = f"{r['rule']} (t={r['t']:.3g})"
                ax.plot([r["t"]] * len(r["fids"]), list(r["fids"].values()), "o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("target std t of the channel-normalised latents")
        ax.set_ylabel("final FID-clf (1,050 steps)")
        ax.set_title(f"(e) latents16-chan, flow + {law}")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def law_section(law: str, pred: dict[str, Any], res: dict[str, Any]) -> list[str]:
    t, e, b = pred["t"], pred["moments_e"], pred["moments_b"]
    medians = ", ".join(f"{d} {v:+.2f}" for d, v in pred["best_medians"].items())
    prediction_rows = [[k, v, 2 * math.log(v / t["shipped_rule"])] for k, v in t.items()]
    result_rows = [
        [r["rule"], r["t"], ", ".join(f"s{s} {f:.2f}" for s, f in sorted(r["fids"].items())) or "not run",
         r["mean"], r["spread"]]
        for r in res["rows"]
    ]  # fmt: skip
    v = res["verdict"]
    gain = ""
    if "gain" in v:
        gain = f" (the within rule's mean gain {v['gain']:+.2f} FID, seed noise {v['noise']:.2f})"
    return [
        f"## {law}",
        "",
        f"Predictions frozen {pred['date']}. (e)'s stds at t = 1: pooled {e['pooled']:.4f}, within "
        f"{e['within']:.4f}; (b)'s raw: pooled {b['pooled']:.4f}, within {b['within']:.4f}, best k "
        f"{pred['best_k_b']:.4g}. Best within medians of λ_data ({law}): {medians}; target "
        f"{pred['target_within_median_nats']:+.2f} nats.",
        "",
        common.md_table(["prediction", "t", "in nats from the shipped rule"], prediction_rows),
        "",
        common.md_table(["trained", "t", "final FID by seed", "mean", "spread"], result_rows),
        "",
        f"**Verdict ({law})**: {v['status']}{gain}",
        "",
    ]


def markdown(preds: dict[str, Any], per_law: dict[str, Any], png: Path | None, machine: dict) -> str:
    lines = [
        "# The within-element std on a held-out data set (issue #26)",
        "",
        "Command (from the repository root):",
        "",
        "```bash",
        "python benchmarks/snr_validation_within.py --run",
        "python benchmarks/snr_validation_within.py --report",
        "```",
        "",
        "## Machine",
        "",
        common.facts_markdown(machine),
        "",
        "## Protocol (written before any run)",
        "",
        __doc__.split("\n\n", 1)[1].split("Re-check (")[0].strip(),
        "",
    ]
    for law in per_law:
        lines += law_section(law, preds[law], per_law[law])
    if png is not None:
        lines += [f"![FID by t]({png.name})"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="store_true", help="train the planned runs (skips finished ones)")
    p.add_argument("--report", action="store_true", help="write the report from the metrics files")
    p.add_argument("--recheck", action="store_true", help="re-check a sample of the runs by other paths")
    p.add_argument("--quick", action="store_true", help="tiny smoke run; temp dirs")
    p.add_argument("--seeds", default="0,1,2", help="only these seeds (two lanes: split them)")
    p.add_argument("--law", default=",".join(LAWS), help=f"timestep laws ({', '.join(LAWS)}; default both)")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose metrics file exists")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint of a run")
    p.add_argument("--work", default="/tmp/snr_validation", help="snr_validation's --work (its latents)")
    p.add_argument("--latents", default=None, help="(quick) a prepared latent set to train on")
    p.add_argument("--results", default=str(RESULTS), help="metrics files and the frozen predictions")
    p.add_argument("--docs", default=str(sv.DOCS), help="where the report goes")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    args.laws = tuple(w for w in args.law.split(",") if w)
    if not set(args.laws) <= set(LAWS):
        p.error(f"--law: one of {', '.join(LAWS)}, got {args.law!r}")
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="snr_validation_within_quick_"))
        args.work, args.results, args.docs = str(tmp / "work"), str(tmp / "results"), str(tmp / "docs")
        args.run = args.report = args.recheck = True
    if not (args.run or args.report or args.recheck):
        p.error("give --run, --report, --recheck or --quick")
    return args


def main(argv: list[str] | None = None) -> int:
    common.set_argv(argv)
    args = parse_args(argv)
    common.setup_torch(args.threads)
    if args.quick and args.latents is None:
        from latent_convergence_runs import prepare_latents

        args.latents = str(Path(args.work) / "latents")
        prepare_latents(args, out=args.latents)
    if args.run:
        for job in plan(args):
            run_job(args, job, {"source": job.extra["source"]})
    if args.report:
        preds = {law: predictions(args, law) for law in args.laws}
        per_law = {law: results(args, law) for law in args.laws}
        docs = Path(args.docs)
        png = plot(per_law, docs / "snr_validation_within.png")
        machine = common.machine_facts()
        record = {"laws": {law: {"predictions": preds[law], **per_law[law]} for law in args.laws},
                  "machine": machine, "command": common.command_line(__file__)}  # fmt: skip
        common.write_json(docs / "snr_validation_within.json", record)
        (docs / "snr_validation_within.md").write_text(markdown(preds, per_law, png, machine))
        print(f"wrote {docs / 'snr_validation_within.md'}")
    if args.recheck:
        rows = recheck(args)
        docs, machine = Path(args.docs), common.machine_facts()
        record = {"rows": rows, "machine": machine, "command": common.command_line(__file__)}
        common.write_json(docs / "snr_validation_within_recheck.json", record)
        (docs / "snr_validation_within_recheck.md").write_text(recheck_markdown(rows, machine))
        print(f"wrote {docs / 'snr_validation_within_recheck.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
