"""Independent re-check of issue #29's composed runs, on a sample of them.

The report's numbers come from the in-training evaluations (``eval.every``) written into each run's metrics
file. This script takes a sample of the finished REPA runs and checks them by other paths:

* **The FID again, by ``fasterdit eval``** (the CLI, in a fresh process) on the run's final checkpoint with
  the run's own evaluation settings (N, sampler, NFE, seed, reference: all read from the run dir); the
  project's floor is one path and one number, so the FID must agree with the metrics file's to round-off.
* **The checkpoint is the official DiT**: the model and EMA tensors of the final checkpoint have exactly the
  names and shapes of a freshly built DiT of the same size (``create_model``), nothing of the projector.
* **The alignment was on where the recipe says**: the run's own ``metrics.jsonl`` has ``loss_align`` on
  every logged step before ``recipe.stages``' switch and none after (``repa-off``), or on every step.

Usage (after ``latent_convergence.py --part repa,repa-off`` have run; their run dirs are in ``--work``)::

    python benchmarks/repa_recheck.py            # docs/benchmarks/repa_recheck.{md,json}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

RESULTS = common.REPO / "benchmarks" / "results" / "latent_convergence"
#: the sample: seed 0 of each composed recipe (the first run of each, chosen before any was run)
SAMPLE = (("repa", "sit+repa-s0"), ("repa", "fasterdit+repa-s0"), ("repa-off", "fasterdit+repa-off-s0"))
TOLERANCE = 1e-6  # FID: the same samples through the same code in another process (float round-off only)


def eval_again(run_dir: Path, out: Path) -> dict[str, Any]:
    """``fasterdit eval`` on the run's final checkpoint, every setting from the run dir."""
    cmd = [sys.executable, "-m", "fasterdit.cli", "eval", "--ckpt", str(run_dir), "--no-progress"]
    cmd += ["--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def official_names(run_dir: Path) -> dict[str, Any]:
    """Whether the final checkpoint's model/EMA tensors are exactly a fresh DiT's (names and shapes)."""
    import torch

    from fasterdit.models import create_model
    from fasterdit.run import checkpoint as ck

    path = ck.latest_checkpoint(run_dir)
    kwargs = dict(ck.read_meta(path)["model"])  # the DiT the checkpoint says it holds
    with torch.device("meta"):
        model = create_model(kwargs.pop("name"), **kwargs)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict[str, Any] = {}
    for part in ("model", "ema"):
        got = {k: tuple(v.shape) for k, v in ck.load_tensors(path, part).items()}
        out[part] = {
            "same": got == want,
            "extra": sorted(set(got) - set(want)),
            "missing": sorted(set(want) - set(got)),
        }
    return out


def align_steps(run_dir: Path) -> dict[str, Any]:
    """The logged steps with and without the alignment term, against the recipe's switch."""
    from fasterdit.diffusion.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    rows = common.read_metrics(run_dir, "train")
    on = [r["step"] for r in rows if "loss_align" in r]
    off = [r["step"] for r in rows if "loss_align" not in r]
    switch = next((st.at for st in recipe.stages if st.set.get("align.weight") == 0), None)
    # a logged row at step s covers optimizer steps up to s (1-based): alignment in force at 0-based s - 1
    want_on = [r["step"] for r in rows if recipe.at(r["step"] - 1).align.enabled]
    return {"switch_at": switch, "steps_on": len(on), "steps_off": len(off), "as_recipe": on == want_on}


def check(kind: str, name: str, work: Path, tmp: Path) -> dict[str, Any]:
    metrics = RESULTS / kind / f"{name}.json"
    run_dir = work / "runs" / kind / name
    if not metrics.is_file() or not run_dir.is_dir():
        return {"run": f"{kind}/{name}", "status": "not run yet"}
    m = json.loads(metrics.read_text())
    final = m["evals"][-1]
    again = eval_again(run_dir, tmp / f"{name}.json")
    return {
        "run": f"{kind}/{name}",
        "status": "checked",
        "step": final["step"],
        "fid_metrics_file": final["fid"],
        "fid_eval_cli": again["fid"],
        "fid_agree": abs(again["fid"] - final["fid"]) <= TOLERANCE * max(1.0, final["fid"]),
        "eval_settings": {k: again.get(k) for k in ("sampler", "steps", "nfe", "num_samples", "reference")},
        "checkpoint": official_names(run_dir),
        "alignment": align_steps(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/latent_conv", help="latent_convergence's --work (its run dirs)")
    p.add_argument("--out", default=str(common.DOCS), help="where repa_recheck.{md,json} go")
    args = p.parse_args(argv)
    common.set_argv(argv)
    common.setup_torch(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(kind, name, Path(args.work), Path(tmp)) for kind, name in SAMPLE]
    data = {"checks": rows, "machine": common.machine_facts(), "command": common.command_line(__file__)}
    out = Path(args.out)
    common.write_json(out / "repa_recheck.json", data)
    table = []
    for r in rows:
        if r["status"] != "checked":
            table.append([r["run"], r["status"], "–", "–", "–", "–"])
            continue
        ck_ok = all(v["same"] for v in r["checkpoint"].values())
        al = r["alignment"]
        table.append([
            r["run"], r["step"], f"{r['fid_metrics_file']:.6f}", f"{r['fid_eval_cli']:.6f}",
            "exactly the DiT's" if ck_ok else f"DIFFERENT: {r['checkpoint']}",
            f"on {al['steps_on']} / off {al['steps_off']} logged steps"
            + (f" (switch at {al['switch_at']})" if al["switch_at"] is not None else "")
            + ("" if al["as_recipe"] else ": NOT as the recipe says"),
        ])  # fmt: skip
    lines = [
        *common.report_header("Re-check of the REPA runs (issue #29)", __file__, data["machine"]),
        __doc__.split("\n\n", 1)[1].split("Usage")[0].strip(),
        "",
        common.md_table(
            ["run", "step", "FID (metrics file)", "FID (`fasterdit eval`)", "checkpoint names", "alignment"],
            table,
        ),
        "",
        "Verdict: "
        + (
            "every sampled run agrees."
            if all(
                r["status"] == "checked"
                and r["fid_agree"]
                and all(v["same"] for v in r["checkpoint"].values())
                and r["alignment"]["as_recipe"]
                for r in rows
            )
            else "see the rows: a run not yet checked or a disagreement."
        ),
        "",
    ]
    (out / "repa_recheck.md").write_text("\n".join(lines))
    common.log(f"wrote {out / 'repa_recheck.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
