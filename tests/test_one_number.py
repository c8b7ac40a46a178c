"""One checkpoint, one number: the FID training logs at step k, ``fasterdit eval`` on the checkpoint of step
k with default flags, and the same under 2 ``torchrun`` processes agree; the training grid of step k is
``fasterdit sample``'s grid of that checkpoint; DiT's ``sample_ddp.py`` flag names give the same bytes.

Everything runs through the real command lines (``python -m fasterdit``, ``python -m torch.distributed.run``)
with one thread per process, so that no float32 reduction is split differently between the runs compared.
The references are independent of the code under test in the way that matters here: each number is
produced by a different entry point (the trainer's loop, the eval command, a 2-process job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fasterdit.errors import ConfigError
from fasterdit.generate.defaults import (
    PAPER_FID_CFG,
    SamplingFlags,
    parse_sampler_opts,
    resolve_sampling,
)
from fasterdit.generate.loading import DIT_SAMPLE, load_trained
from fasterdit.train.logging import read_metrics
from tiny_run import TINY_RUN, train_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FASTERDIT = [sys.executable, "-m", "fasterdit"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "fasterdit"]  # fmt: skip
STEP2 = "checkpoints/step-000000002"
# the eval section gives steps, the sample section the rest: the precedence is part of what is compared
RUN = [*TINY_RUN, "train.steps=2", "log.ckpt_every=2", "log.sample_every=2", "eval.every=2",
       "eval.num_samples=20", "eval.steps=2", "sample.steps=3", "sample.cfg_scale=2.0", "sample.per_class=2",
       "sample.seed=4"]  # fmt: skip


def _run(cmd: list[str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one-number") / "run"
    _run(train_cli(FASTERDIT, run, RUN))
    return run


def _fid(path: Path) -> float:
    return float(json.loads(path.read_text())["fid"])


def test_logged_fid_equals_eval_with_defaults_on_one_and_two_processes(run_dir, tmp_path):
    (logged,) = [r for r in read_metrics(run_dir, "eval") if r["step"] == 2]
    assert logged["steps"] == 2 and logged["cfg_scale"] == 2.0 and logged["seed"] == 4  # eval > sample
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _run([*FASTERDIT, "eval", "--ckpt", str(run_dir / STEP2), "--out", str(one)])
    _run([*TORCHRUN, "eval", "--ckpt", str(run_dir / STEP2), "--out", str(two)])
    assert json.loads(two.read_text())["world_size"] == 2
    assert abs(_fid(one) - logged["fid"]) <= 1e-6
    assert abs(_fid(two) - logged["fid"]) <= 1e-6
    assert json.loads(one.read_text())["class_accuracy"] == logged["class_accuracy"]


def test_training_grid_is_the_sample_commands_grid(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    _run([*FASTERDIT, "sample", "--ckpt", str(run_dir / STEP2), "--out", str(out), "--no-progress"])
    assert out.read_bytes() == (run_dir / "samples" / "step-000000002.png").read_bytes()


def test_sample_ddp_flag_names_give_the_same_bytes_under_torchrun_too(run_dir, tmp_path):
    ckpt = str(run_dir / STEP2)
    ours = ["--num-samples", "10", "--steps", "2", "--cfg-scale", "1.5", "--batch-size", "3", "--seed", "5"]
    dit = ["--num-fid-samples", "10", "--num-sampling-steps", "2", "--cfg-scale", "1.5",
           "--per-proc-batch-size", "3", "--global-seed", "5"]  # fmt: skip
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    _run([*FASTERDIT, "sample", "--ckpt", ckpt, *ours, "--out", str(a), "--no-progress"])
    _run([*FASTERDIT, "sample", "--ckpt", ckpt, *dit, "--out", str(b), "--no-progress"])
    _run([*TORCHRUN, "sample", "--ckpt", ckpt, *dit, "--out", str(c), "--no-progress"])
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


def test_help_after_ckpt_prints_the_resolved_defaults(run_dir):
    out = _run([*FASTERDIT, "eval", "--ckpt", str(run_dir), "--help"])
    assert "cfg_scale         2.0  (sample.cfg_scale)" in out
    assert "steps             2  (eval.steps)" in out
    assert "num_samples       20  (eval.num_samples)" in out


# --- the precedence itself ------------------------------------------------------------------------------


def test_precedence_flag_then_eval_then_sample_then_recipe(run_dir):
    lm = load_trained(run_dir)
    ev = resolve_sampling("eval", lm, SamplingFlags())
    assert (ev.steps, ev.sources["steps"]) == (2, "eval.steps")
    assert (ev.cfg_scale, ev.sources["cfg_scale"]) == (2.0, "sample.cfg_scale")
    assert (ev.seed, ev.num_samples) == (4, 20)
    sa = resolve_sampling("sample", lm, SamplingFlags())  # sampling ignores the eval section
    assert (sa.steps, sa.sources["steps"]) == (3, "sample.steps")
    assert (sa.num_samples, sa.sources["num_samples"]) == (10 * 2, "sample.classes x sample.per_class")
    flagged = resolve_sampling("eval", lm, SamplingFlags(steps=7, cfg_scale=1.0, seed=9))
    assert (flagged.steps, flagged.cfg_scale, flagged.seed) == (7, 1.0, 9)
    assert {flagged.sources[k] for k in ("steps", "cfg_scale", "seed")} == {"flag"}
    if lm.cfg.sample.sampler is None:
        assert ev.sampler == lm.recipe.sampler.name and ev.sources["sampler"] == "recipe sampler.name"


def test_official_family_defaults_and_the_papers_fid_guidance(run_dir):
    from dataclasses import replace

    lm = replace(load_trained(run_dir), family=DIT_SAMPLE, source="official-dit")
    ev = resolve_sampling("eval", lm, SamplingFlags())
    sa = resolve_sampling("sample", lm, SamplingFlags())
    assert (ev.sampler, ev.steps, ev.guide_channels) == ("ddpm", 250, 3)
    assert ev.cfg_scale == PAPER_FID_CFG and sa.cfg_scale == DIT_SAMPLE.cfg_scale


def test_sampler_opts_are_checked_against_the_sampler(run_dir):
    lm = load_trained(run_dir)
    opts = parse_sampler_opts(["atol=1e-5", "rtol=0.001", "shift=3"])
    assert opts == {"atol": 1e-5, "rtol": 1e-3, "shift": 3}
    res = resolve_sampling("sample", lm, SamplingFlags(sampler="dopri5", sampler_opts=opts))
    assert res.sampler_kwargs == opts and res.sources["sampler_opts"] == "flag"
    with pytest.raises(ConfigError, match="does not take 'eta'"):
        resolve_sampling("sample", lm, SamplingFlags(sampler="euler", sampler_opts={"eta": 0.5}))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sampler_opts(["atol"])


def test_auto_precision_is_the_runs_own_on_cuda():
    """#30 item 7: the trainer's evaluation and `fasterdit eval` sample in the run's training precision."""
    import torch

    from fasterdit.generate.job import resolve_precision
    from fasterdit.run.config import TrainConfig

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_precision("auto", cuda, TrainConfig(precision="bf16")) == "bf16"
    assert resolve_precision("auto", cuda, TrainConfig(precision="auto")) == "bf16"
    assert resolve_precision("auto", cuda, TrainConfig(precision="fp32", tf32=True)) == "tf32"
    assert resolve_precision("auto", cuda, TrainConfig(precision="fp32", tf32=False)) == "fp32"
    assert resolve_precision("auto", cuda, None) == "bf16"  # an official checkpoint
    assert resolve_precision("auto", cpu, TrainConfig(precision="bf16")) == "fp32"
    assert resolve_precision("fp64", cuda, TrainConfig()) == "fp64"  # a flag wins
