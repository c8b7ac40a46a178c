"""Distributed, resumable sampling jobs (fasterdit.generate.job, `fasterdit sample --out x.npz`).

What is proven here, on a tiny trained DiT-Mi/2 (8×8 digits):

* the `.npz` is byte-identical for 1 and 2 processes (the real torchrun CLI, gloo) and for different
  per-process batch sizes, with a stochastic sampler (ddpm) and guidance, so the step noise is per sample;
* a job interrupted midway (an exception after K network calls, and a real SIGKILL of the CLI) and rerun
  gives the same bytes as an uninterrupted one, and the rerun never samples a finished index again
  (the test's own model wrapper counts the rows the network sees);
* the per-index labels: uniform random from the seed and independent of how the range is cut; balanced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fasterdit.cli import main
from fasterdit.generate import seeds as sample_seeds
from fasterdit.generate.job import SampleSettings, pending_ranges, run_sample_job, work_dir
from fasterdit.generate.loading import load_trained
from fasterdit.runtime.distributed import DistInfo
from tiny_run import TINY_RUN

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# fp64: the byte-identity across batch sizes must not depend on how a CPU's BLAS blocks float32 matmuls
# of different batch shapes (one flipped uint8 would fail the comparison on some machines)
JOB = ["--sampler", "ddpm", "--steps", "3", "--cfg-scale", "1.5", "--seed", "7", "--precision", "fp64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("job") / "run"
    args = ["train", "--config", "demo", "--run-dir", str(d), "--no-progress"]
    for s in [*TINY_RUN, "train.steps=3", "log.ckpt_every=3"]:
        args += ["--set", s]
    assert main(args) == 0
    return d


def _sample(run_dir, out, n, batch, *extra):
    assert main(["sample", "--ckpt", str(run_dir), "--num-samples", str(n), "--batch-size", str(batch),
                 *JOB, *extra, "--out", str(out)]) == 0  # fmt: skip


def test_npz_is_byte_identical_for_any_world_and_batch_size(run_dir, tmp_path):
    _sample(run_dir, tmp_path / "b3.npz", 10, 3)
    _sample(run_dir, tmp_path / "b10.npz", 10, 10)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fasterdit", "sample", "--ckpt", str(run_dir), "--num-samples", "10", "--batch-size", "2",
           *JOB, "--out", str(tmp_path / "w2.npz")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = (tmp_path / "b3.npz").read_bytes()
    assert (tmp_path / "b10.npz").read_bytes() == ref
    assert (tmp_path / "w2.npz").read_bytes() == ref
    with np.load(tmp_path / "w2.npz") as z:
        assert z["arr_0"].shape == (10, 8, 8, 1) and z["arr_0"].dtype == np.uint8
        assert z["arr_1"].dtype == np.int64
        assert z["arr_0"].std() > 0  # real images, not a constant
        np.testing.assert_array_equal(z["arr_1"], _uniform_labels(7, 10))
    side = json.loads((tmp_path / "w2.json").read_text())
    assert side["run"]["world_size"] == 2 and side["nfe"] == 3
    job = side["job"]
    assert (job["sampler"], job["steps"], job["cfg_scale"], job["seed"], job["num_samples"]) == (
        "ddpm",
        3,
        1.5,
        7,
        10,
    )
    assert job["label_mode"] == "uniform" and job["ema"] is True and len(job["checkpoint_sha256"]) == 64
    assert not work_dir(tmp_path / "w2.npz").exists()  # assembled and cleaned up


def _uniform_labels(seed, n):
    """label i = randint(10) from a generator seeded with index_seed(seed, 'label', i)."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(sample_seeds.index_seed(seed, "label", i))
        out.append(int(torch.randint(10, (1,), generator=g)))
    return np.asarray(out)


class _Killed(Exception):
    pass


class _Counting(torch.nn.Module):
    """The test's own wrapper: counts the rows the network sees and dies after ``die_after`` calls."""

    def __init__(self, net, die_after=None):
        super().__init__()
        self.net, self.die_after, self.calls, self.rows = net, die_after, 0, 0
        self.in_channels, self.input_size, self.num_classes = net.in_channels, net.input_size, net.num_classes

    def forward(self, x, t, y=None):
        if self.die_after is not None and self.calls >= self.die_after:
            raise _Killed
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, y)


def test_interrupted_job_resumes_and_never_samples_an_index_twice(run_dir, tmp_path):
    lm = load_trained(run_dir)
    n, batch, nfe = 11, 3, 3
    settings = SampleSettings(num_samples=n, seed=1, sampler="ddpm", steps=nfe, cfg_scale=1.0)

    def job(model, out):
        return run_sample_job(model, lm.recipe, settings, out, record={"checkpoint": "tiny"},
                              batch_size=batch, dist=DistInfo(), progress=False)  # fmt: skip

    whole = _Counting(lm.model)
    job(whole, tmp_path / "whole.npz")
    assert whole.rows == n * nfe

    first = _Counting(lm.model, die_after=2 * nfe + 1)  # dies inside the third batch
    with pytest.raises(_Killed):
        job(first, tmp_path / "resumed.npz")
    parts = sorted(p.name for p in work_dir(tmp_path / "resumed.npz").glob("part-*.npz"))
    assert parts == ["part-000000000-000000003.npz", "part-000000003-000000006.npz"]
    second = _Counting(lm.model)
    res = job(second, tmp_path / "resumed.npz")
    assert res.resumed == 6 and res.sampled == n - 6
    assert second.rows == (n - 6) * nfe  # only the unfinished indices are sampled again
    assert (tmp_path / "resumed.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    # a third run finds the job complete and samples nothing
    third = _Counting(lm.model)
    assert job(third, tmp_path / "resumed.npz").sampled == 0 and third.calls == 0


def test_sigkilled_cli_job_resumes_to_the_same_bytes(run_dir, tmp_path):
    n, args = (
        48,
        ["--sampler", "ddpm", "--steps", "60", "--seed", "3", "--cfg-scale", "1", "--precision", "fp64"],
    )
    out = tmp_path / "k.npz"
    cmd = [sys.executable, "-m", "fasterdit", "sample", "--ckpt", str(run_dir), "--num-samples", str(n),
           "--batch-size", "2", *args, "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    work, deadline = work_dir(out), time.time() + 120
    while time.time() < deadline and len(list(work.glob("part-*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(work.glob("part-*.npz"))
    assert 2 <= len(done) < n // 2 and not out.exists(), "the job was not killed midway"
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    assert main(["sample", "--ckpt", str(run_dir), "--num-samples", str(n), "--batch-size", "4", *args,
                 "--out", str(out)]) == 0  # fmt: skip
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["run"]["resumed_samples"] == 2 * len(stamps)  # the killed run's parts were kept...
    assert side["run"]["sampled_samples"] == n - 2 * len(stamps)  # ...and not sampled again
    _sample(run_dir, tmp_path / "ref.npz", n, 16, *args)
    assert out.read_bytes() == (tmp_path / "ref.npz").read_bytes()


def test_a_work_folder_of_another_job_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    work_dir(out).mkdir()
    (work_dir(out) / "job.json").write_text(json.dumps({"seed": 99}))
    assert main(["sample", "--ckpt", str(run_dir), "--num-samples", "4", *JOB, "--out", str(out)]) == 2
    assert "another job" in capsys.readouterr().err


def test_pending_ranges_cut_a_fixed_grid_minus_what_is_done():
    assert pending_ranges(10, 4, []) == [(0, 4), (4, 8), (8, 10)]
    assert pending_ranges(10, 4, [(0, 4), (8, 10)]) == [(4, 8)]
    # parts of an earlier run with another batch size: only the holes are sampled
    assert pending_ranges(10, 4, [(0, 3), (3, 6)]) == [(6, 8), (8, 10)]


def test_labels_depend_only_on_the_seed_and_the_index():
    whole = sample_seeds.labels_for(5, 0, 40, num_classes=10)
    pieces = torch.cat(
        [sample_seeds.labels_for(5, s, min(s + 7, 40), num_classes=10) for s in range(0, 40, 7)]
    )
    assert torch.equal(whole, pieces)
    np.testing.assert_array_equal(whole.numpy(), _uniform_labels(5, 40))
    assert len(set(whole.tolist())) > 5  # random classes, not a cycle
    balanced = sample_seeds.labels_for(5, 0, 50, num_classes=10, mode="balanced")
    assert torch.equal(torch.bincount(balanced), torch.full((10,), 5))
    noise = sample_seeds.initial_noise(5, 3, 6, (1, 2, 2))
    torch.testing.assert_close(noise[1], sample_seeds.initial_noise(5, 4, 5, (1, 2, 2))[0], rtol=0, atol=0)


def test_eval_under_torchrun_samples_what_sample_writes(run_dir, tmp_path):
    """`eval --ckpt` under torchrun: the same job (its kept samples are `sample`'s file), rank 0 scores."""
    _sample(run_dir, tmp_path / "ref.npz", 12, 5, "--balanced")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fasterdit", "eval", "--ckpt", str(run_dir), "--num-samples", "12", "--batch-size", "4",
           *JOB, "--balanced", "--save-samples", str(tmp_path / "kept.npz"),
           "--out", str(tmp_path / "m.json")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "kept.npz").read_bytes() == (tmp_path / "ref.npz").read_bytes()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["world_size"] == 2 and metrics["num_samples"] == 12 and metrics["label_mode"] == "balanced"
    assert metrics["nfe"] == 3 and isinstance(metrics["fid"], float)


@pytest.mark.parametrize("sampler", ["euler-maruyama", "ddpm"])
def test_stochastic_samplers_draw_their_step_noise_per_sample(run_dir, sampler):
    from fasterdit.diffusion.sampling import sample

    lm = load_trained(run_dir)
    x0, y = sample_seeds.initial_noise(0, 0, 4, (1, 8, 8)), torch.tensor([1, 5, 7, 2])

    def run(a, b, seed=0):
        return sample(lm.model, lm.recipe, x0[a:b], y=y[a:b], sampler=sampler, steps=4,
                      generator=sample_seeds.step_noise(seed, a, b)).x  # fmt: skip

    together = run(0, 4)
    apart = torch.cat([run(i, i + 1) for i in range(4)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-6)  # a sample's noise is its own
    assert (run(0, 4, seed=1) - together).abs().max() > 1e-3  # and the step noise is used
