"""`eval.every` under torchrun (2 processes, gloo): the ranks share the sampling, rank 0 scores.

Reference: the same samples drawn in this process (world size 1) from the run's final EMA weights
and scored by evaluate_samples. Sample i depends only on (seed, i), so the logged numbers must be
the ones of the single-process samples, exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from fasterdit.eval import evaluate_samples
from fasterdit.generate.job import SampleSettings, sample_shared
from fasterdit.generate.loading import load_trained
from fasterdit.runtime.distributed import DistInfo
from fasterdit.train.data_order import derive_seed
from fasterdit.train.logging import read_metrics
from fasterdit.train.trainer import EVAL_TAG
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

    lm = load_trained(run)  # the EMA weights of step 2, which the evaluation used
    seed = derive_seed(lm.cfg.seed, EVAL_TAG) % (2**31)
    settings = SampleSettings(12, seed, "euler", 2, 1.0, label_mode="balanced")
    # the ranks ran with train.threads=1; one thread here too, so that no float32 reduction is split
    # differently (the same batch grid of 250 makes rank 0 sample these 12 in one batch, as here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, labels, _ = sample_shared(lm.model, lm.recipe, settings, batch_size=250, dist=DistInfo())
        ref = evaluate_samples(images, labels, "digits")
    finally:
        torch.set_num_threads(threads)
    assert logged["fid"] == ref["fid"] and logged["class_accuracy"] == ref["class_accuracy"]
