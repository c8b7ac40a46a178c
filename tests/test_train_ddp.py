"""Two processes under torchrun (gloo) with global batch B train exactly like one process with batch B.

Reference: the same config run in this process with world size 1. Per-sample randomness (t, noise,
label dropout) is drawn for the global batch and sliced per rank, so the only difference is the
order of floating-point sums (DDP averages two half-batch gradients), hence float tolerances.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.logging import read_metrics
from fasterdit.train.trainer import Trainer

ARGS = [
    "data.source=digits",
    "model.name=DiT-Mi/2",
    "train.batch_size=16",
    "train.steps=4",
    "train.threads=1",
    "optim.lr=1e-3",
    "optim.grad_clip=1.0",
    "train.ema_decay=0.9",
    "log.log_every=1",
    "log.ckpt_every=0",
    "log.sample_every=0",
    "sample.steps=2",
    "sample.per_class=1",
    "log.tensorboard=false",
    "log.progress=false",
]


def _two_processes(run_dir, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``fasterdit train`` on the demo config with ``args`` under torchrun, 2 processes (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "fasterdit", "train", "--config", "demo", "--run-dir", str(run_dir), "--no-progress"]
    for a in args:
        cmd += ["--set", a]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_ddp_matches_one_process(tmp_path):
    single = tmp_path / "single"
    Trainer(load_config("demo", ARGS), single, install_signal_handlers=False).run()

    ddp = tmp_path / "ddp"
    proc = _two_processes(ddp, ARGS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr

    la = [r["loss"] for r in read_metrics(single, "train")]
    lb = [r["loss"] for r in read_metrics(ddp, "train")]
    assert len(la) == len(lb) == 4
    assert lb == pytest.approx(la, rel=1e-5, abs=1e-6)

    a, b = ck.latest_checkpoint(single), ck.latest_checkpoint(ddp)
    assert ck.checkpoint_step(a) == ck.checkpoint_step(b) == 4
    assert ck.read_meta(b)["world_size"] == 2
    for which in ("model", "ema"):
        sa, sb = ck.load_tensors(a, which), ck.load_tensors(b, which)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=f"{which}.{k}")
    # and training did move the weights (the comparison is not between two initialisations)
    init = Trainer(load_config("demo", ARGS), tmp_path / "init", install_signal_handlers=False)
    w0 = init._setup().model.state_dict()["final_layer.linear.weight"]
    assert float((ck.load_tensors(b, "model")["final_layer.linear.weight"] - w0).abs().max()) > 1e-6


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = Trainer(load_config("demo", ARGS), tmp_path / "a1", install_signal_handlers=False).run()
    acc = Trainer(
        load_config("demo", [*ARGS, "train.grad_accum=4"]), tmp_path / "a4", install_signal_handlers=False
    ).run()
    assert acc.losses == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    sa = ck.load_tensors(ck.latest_checkpoint(tmp_path / "a1"), "model")
    sb = ck.load_tensors(ck.latest_checkpoint(tmp_path / "a4"), "model")
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_two_process_ddp_compiled_with_grad_checkpointing_matches_one_process(tmp_path):
    """``train.compile`` + ``model.grad_checkpointing`` under DDP: the DDP module is compiled, and dynamo's
    DDP optimizer splits its graph at the gradient buckets, through checkpointed blocks (higher-order ops,
    which some PyTorch versions rejected there). ``aot_eager`` runs that splitter as inductor would (it
    splits before any backend compiles) without code generation; 2 steps keep the compile short."""
    args = [*ARGS, "train.steps=2"]
    single = Trainer(load_config("demo", args), tmp_path / "single", install_signal_handlers=False).run()
    ddp = tmp_path / "ddp"
    sets = [*args, "train.compile=true", "train.compile_backend=aot_eager", "model.grad_checkpointing=true"]
    proc = _two_processes(ddp, sets, TORCH_LOGS="ddp_graphs")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "2 process(es)" in out
    assert "---split graph---" in out and "tag_activation_checkpoint" in out, "the graph was not split"
    losses = [r["loss"] for r in read_metrics(ddp, "train")]
    assert losses == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    a, b = ck.latest_checkpoint(tmp_path / "single"), ck.latest_checkpoint(ddp)
    assert ck.checkpoint_step(a) == ck.checkpoint_step(b) == 2
    sa, sb = ck.load_tensors(a, "model"), ck.load_tensors(b, "model")
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=k)
