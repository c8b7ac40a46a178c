"""`eval.every` under torchrun (2 processes, gloo): the ranks share the sampling, rank 0 scores.

Reference: ``fasterdit eval`` with default flags, in one process, on the checkpoint of the evaluated step.
Sample i depends only on (seed, i), the defaults come from one function, and the samples are scored as
the 8-bit images an ``.npz`` holds, so the logged numbers must be the command's, exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fasterdit.train.logging import read_metrics
from tiny_run import TINY_RUN


def test_in_training_evaluation_is_shared_by_the_ranks(tmp_path):
    run = tmp_path / "ddp"
    sets = [*TINY_RUN, "train.steps=2", "log.ckpt_every=2", "eval.every=2", "eval.num_samples=12",
            "eval.steps=2", "eval.sampler=euler", "eval.cfg_scale=1.0"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "fasterdit", "train", "--config", "demo", "--run-dir", str(run), "--no-progress"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (logged,) = read_metrics(run, "eval")
    assert logged["world_size"] == 2 and logged["num_samples"] == 12 and logged["nfe"] == 2

    out = tmp_path / "eval.json"  # the EMA weights of step 2, which the evaluation used
    ckpt = run / "checkpoints" / "step-000000002"
    cmd = [sys.executable, "-m", "fasterdit", "eval", "--ckpt", str(ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = json.loads(out.read_text())
    assert ref["world_size"] == 1 and ref["num_samples"] == 12
    assert logged["fid"] == ref["fid"] and logged["class_accuracy"] == ref["class_accuracy"]
