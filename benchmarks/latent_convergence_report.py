"""``latent_convergence.py --report``: docs/benchmarks/latent_convergence.md + .json + PNGs, assembled from
the metrics files that exist, with the commands that rerun everything, where the runs ran and the setup.

Why a module of its own: the report is rebuilt from the committed metrics files alone, in any session and
without training anything, so it depends on the readings and sections but never on the running code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import common
from latent_convergence_analysis import real_floor
from latent_convergence_headline import headline_section
from latent_convergence_plan import (
    CONVERGED,
    EMA_DECAY,
    EXTRA_PARTS,
    GRAD_CLIP,
    PARTS,
    RESOLUTION,
    load_part,
    results_dir,
)
from latent_convergence_repa_report import repa_section
from latent_convergence_sweeps import ablations_section, lr_section, std_section


def setup_section(
    all_ms: list[dict[str, Any]], floors: dict[str, Any] | None, real: float | None
) -> list[str]:
    L = ["## Where the runs ran\n"]
    machines: dict[tuple[str, str], dict[str, Any]] = {}
    for m in all_ms:
        mf = m["machine"]
        key = (f"{mf['cpu']}, {mf['logical_cores']} cores, torch {mf['torch']}", m["part"])
        e = machines.setdefault(key, {"runs": 0, "dates": []})
        e["runs"] += 1
        e["dates"].append(m["date"])
    if machines:
        rows = [
            [k[0], k[1], v["runs"], f"{min(v['dates'])} … {max(v['dates'])}"] for k, v in machines.items()
        ]
        L += [common.md_table(["machine", "part", "runs", "dates"], rows), ""]
    else:
        L.append("No run has finished yet.\n")
    L.append("## Setup\n")
    lat = next((m["latents"] for m in all_ms), None)
    if lat:
        chans = ", ".join(f"{v:.3f}" for v in lat["channel_std"])
        split = {"train": "training"}.get((lat.get("origin") or {}).get("split"), "held-out (--quick only)")
        L.append(
            f"* data: the {lat['num_items']} MNIST {split} digits, padded to {RESOLUTION}×{RESOLUTION} and "
            f"encoded by the shipped autoencoder `{lat['vae']}` to {lat['channels']}×{lat['resolution']}×"
            f"{lat['resolution']} latents; the shards hold the posterior, each batch draws a latent and "
            f"multiplies it by the autoencoder's `scaling_factor` {lat['scaling_factor']:.4g} (pooled std "
            f"{lat['std']:.3f}, per channel {chans})."
        )
    conv = CONVERGED
    L.append(
        "* one DiT, batch, optimizer (AdamW, no weight decay, linear warm-up then constant lr, gradient clip "
        f"{GRAD_CLIP:g}), EMA {EMA_DECAY:g} with the (1+n)/(10+n) ramp, label dropout 0.1, fp32, for every "
        "run of a part; only the recipe (and, in the lr part, the lr) changes. The seed sets the "
        "initialisation, data order, noise and timesteps.\n"
        "* evaluation: samples of the EMA weights decoded by the autoencoder, cropped to 28×28, scored "
        "by the shipped MNIST classifier against the held-out digits (`mnist/heldout`): FID in its "
        "feature space (not comparable with Inception FIDs), class accuracy of the class-conditional "
        "samples (balanced labels), precision/recall (k = 3). No guidance (cfg 1), as the paper's FID "
        "without guidance. The same noise at every evaluation of a run.\n"
        "* equal NFE (in training): `dit` DDPM ancestral sampling on the respaced chain with its learned "
        "variance, flow recipes Euler on the probability-flow ODE, with the NFE stated per part. Converged "
        f"NFE (after training): `dit` DDPM {conv['ddpm']['steps']} steps; flow recipes dopri5 (rtol = atol "
        f"= {conv['flow']['kwargs']['rtol']:g}).\n"
        "* floors at N: "
        + ("the real-data floor, " if real is not None else "")
        + "FID of N real training digits against the same reference (what a perfect model scores), and the "
        "autoencoder's reconstruction floor, FID of the same N digits after encoding (a posterior draw, as "
        "the DiT trains on) and decoding: no latent model can be expected below it.\n"
    )
    if floors:
        rows = [["real digits (other split)", floors.get("fid_real_at_n"), None, None, None]]
        for k in ("posterior_sample", "posterior_mean"):
            f = floors[k]
            name = f"reconstructions ({k.replace('_', ' ')})"
            rows.append([name, f["fid"], f.get("class_accuracy"), f.get("precision"), f.get("recall")])
        head = [f"floor at N = {floors['num_samples']}", "FID", "class acc", "precision", "recall"]
        L += [common.md_table(head, rows), ""]
    return L


def rerun_commands(args: argparse.Namespace) -> list[str]:
    """The report's opening: the commands that rerun the whole benchmark, part by part (each fits the
    100-min budget of one unattended run; --seeds/--only split a part further), then rebuild the report."""
    script = "python benchmarks/latent_convergence.py"
    if args.quick:
        cmds = [f"{script} --quick"]
    else:
        cmds = [f"{script} --part {p}" for p in (*PARTS, *EXTRA_PARTS)] + [f"{script} --report"]
    return [
        "Command (from the repository root), one per part, that reruns every figure and table below; a run "
        "whose metrics file exists is skipped, so each part can be split with `--seeds` / `--only` across "
        "sessions:\n",
        "```bash",
        *cmds,
        "```\n",
        "The report is assembled from the committed per-run metrics files "
        f"(`{common.shown_path(results_dir(args))}`); each part's section names the commands that made its "
        "runs, and every metrics file holds the exact command, machine and date of its run.\n",
    ]


def report(args: argparse.Namespace, out: Path) -> Path:
    """docs/benchmarks/latent_convergence.md + .json + PNGs from the metrics files that exist."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {p: load_part(args, p) for p in (*PARTS, *EXTRA_PARTS)}
    fpath = results_dir(args) / "floors.json"
    floors_all = json.loads(fpath.read_text()) if fpath.is_file() else {}
    rpath = results_dir(args) / "snr_recommend.json"
    recs = json.loads(rpath.read_text()) if rpath.is_file() else None
    facts = common.machine_facts()
    all_ms = [m for p in (*PARTS, *EXTRA_PARTS) for m in parts[p]]
    epath = results_dir(args) / "repa_encoder_cost.json"
    enc = json.loads(epath.read_text()) if epath.is_file() else None
    n = next((m["settings"]["num_samples"] for m in parts["headline"] + all_ms), None)
    floors = floors_all.get(f"mnist-ae/N={n}") if n else None
    real = real_floor(parts["headline"] or all_ms) or (floors or {}).get("fid_real_at_n")
    res: dict[str, Any] = {"floors": floors, "real_floor": real}
    title = "Convergence on latents: dit vs sit vs fasterdit, tuned baselines, data std on latents"
    L = [f"# {title}\n", *rerun_commands(args), "## Report assembled on\n", common.facts_markdown(facts), ""]
    L += setup_section(all_ms, floors, real)
    composed = parts["repa"] + parts["repa-off"]
    L += headline_section("headline", parts["headline"], floors, real, out, res, composed)
    L += headline_section("long", parts["long"], floors, real, out, res)
    L += lr_section(parts["lr"], out, res)
    L += ablations_section(parts["ablations"], parts["headline"], floors, real, out, res)
    L += std_section(parts["std"], parts["headline"], recs, floors_all, out, res)
    L += repa_section(args, parts, res, enc, floors, real, out)
    md = out / "latent_convergence.md"
    md.write_text("\n".join(L) + "\n")
    keys = (
        "part",
        "name",
        "variant",
        "seed",
        "lr",
        "lr_source",
        "status",
        "evals",
        "converged",
        "train",
        "wall_seconds",
        "date",
    )
    runs = [{**{k: m[k] for k in keys}, "cpu": m["machine"]["cpu"]} for m in all_ms]
    common.write_json(out / "latent_convergence.json", {"facts": facts, "analysis": res, "runs": runs})
    return md
