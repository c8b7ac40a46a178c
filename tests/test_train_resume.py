"""Resume exactness, signal stops, crash safety of checkpoint writes, and the non-finite guard.

Reference: an uninterrupted run of the same config in the same process setup (CPU, fp32). A stopped
and resumed run must end with bit-identical weights, EMA and optimizer state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.trainer import Trainer, TrainingAborted
from tiny_run import TINY_RUN, train_cli

BASE = [*TINY_RUN, "log.keep_last=2"]


def cfg_for(steps: int, *extra: str):
    return load_config("demo", [*BASE, f"train.steps={steps}", *extra])


def run(run_dir: Path, steps: int, *extra: str, stop_at: int | None = None, **kw):
    tr = Trainer(cfg_for(steps, *extra), run_dir, install_signal_handlers=False, **kw)
    if stop_at is not None:

        def hook(t: Trainer, step: int) -> None:
            if step == stop_at:
                t.stop.request("SIGTERM")  # what the handler does on a real signal

        tr.after_step_hook = hook
    return tr, tr.run()


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    path = ck.latest_checkpoint(run_dir)
    out = {f"model.{k}": v for k, v in ck.load_tensors(path, "model").items()}
    out.update({f"ema.{k}": v for k, v in ck.load_tensors(path, "ema").items()})
    opt = ck.load_train_state(path)["optimizer"]["state"]
    for i, st in opt.items():
        out[f"opt.{i}.exp_avg"] = st["exp_avg"]
        out[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"]
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max {float((a[k] - b[k]).abs().max()):.3g})"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 6 steps without interruption (also crosses an epoch? no: 96 of 1621 images)."""
    d = tmp_path_factory.mktemp("straight")
    _, res = run(d, 6, "log.ckpt_every=3")
    return d, res


def test_stop_and_resume_is_exact(tmp_path, straight):
    ref_dir, ref = straight
    _tr, first = run(tmp_path, 6, "log.ckpt_every=100", stop_at=3)
    assert first.stopped_by == "SIGTERM" and first.step == 3
    assert ck.checkpoint_step(ck.latest_checkpoint(tmp_path)) == 3
    _tr, second = run(tmp_path, 6, "log.ckpt_every=100")
    assert second.step == 6 and second.stopped_by is None
    assert_identical(final_state(tmp_path), final_state(ref_dir))
    # the per-step losses of the two halves are the straight run's losses, exactly
    assert first.losses + second.losses == ref.losses
    # the metrics log of the resumed run holds each step once
    from fasterdit.train.logging import read_metrics

    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]


def test_epoch_boundary_and_world_size_independent_data_order():
    from fasterdit.train.data_order import IndexStream

    s = IndexStream(10, seed=3)
    seq = s.take(0, 25)
    assert sorted(seq[:10].tolist()) == list(range(10)) and sorted(seq[10:20].tolist()) == list(range(10))
    assert torch.equal(torch.cat([s.take(0, 7), s.take(7, 9), s.take(16, 9)]), seq)


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from fasterdit.run import checkpoint as ck
    from fasterdit.run.config import load_config
    from fasterdit.train.trainer import Trainer

    real = ck.write_torch
    calls = {"n": 0}

    def dying(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:          # the second checkpoint: write half of state.pt, then die hard
            real(obj, path)
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, path)

    ck.write_torch = dying
    cfg = load_config("demo", sys.argv[2:])
    Trainer(cfg, sys.argv[1], install_signal_handlers=False).run()
    """
)


def test_sigkill_during_checkpoint_write_keeps_previous_and_resumes_exactly(tmp_path, straight):
    ref_dir, _ = straight
    args = [*BASE, "train.steps=6", "log.ckpt_every=3"]
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = run_dir / ck.CKPT_SUBDIR
    assert any(p.name.startswith(".tmp-") for p in root.iterdir()), "the partial write should be left behind"
    latest = ck.latest_checkpoint(run_dir)
    assert latest is not None and ck.checkpoint_step(latest) == 3
    from fasterdit.generate.loading import load_model

    model, _recipe, _cfg = load_model(run_dir)  # the previous checkpoint loads
    assert sum(p.numel() for p in model.parameters()) > 0
    _tr, res = run(run_dir, 6, "log.ckpt_every=3")  # resumes from step 3, cleans the temp dir
    assert res.step == 6
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
    assert_identical(final_state(run_dir), final_state(ref_dir))


def test_truncated_checkpoint_is_never_resumed_from(tmp_path):
    run(tmp_path, 4, "log.ckpt_every=2")
    newest = ck.latest_checkpoint(tmp_path)
    assert ck.checkpoint_step(newest) == 4
    with open(newest / "model.safetensors", "r+b") as f:  # e.g. a half-finished copy of the run dir
        f.truncate(100)
    assert ck.checkpoint_step(ck.latest_checkpoint(tmp_path)) == 2


def test_disk_full_while_saving_names_the_problem_and_keeps_previous(tmp_path, monkeypatch):
    run(tmp_path, 2, "log.ckpt_every=2")
    before = {p.name: p.read_bytes() for p in ck.latest_checkpoint(tmp_path).iterdir()}

    def full(obj, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ck, "write_torch", full)
    full_msg = r"no space left on .* writing \S*step-000000004/state\.pt: [\d.]+ MB needed, [\d.]+ MB free"
    with pytest.raises(ck.CheckpointError, match=full_msg + r".*step-000000002 is intact"):
        run(tmp_path, 4, "log.ckpt_every=2")
    latest = ck.latest_checkpoint(tmp_path)
    assert ck.checkpoint_step(latest) == 2
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == before
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / ck.CKPT_SUBDIR).iterdir())


def test_nan_loss_is_skipped_and_counted(tmp_path):
    snapshots = {}
    tr = Trainer(cfg_for(4, "log.ckpt_every=0"), tmp_path, install_signal_handlers=False)

    def nan_at_3(step, terms):
        if step == 2:  # 0-based: the third step
            terms = dict(terms, loss=terms["loss"] * float("nan"))
        return terms

    def snap(t, step):
        snapshots[step] = (
            {k: v.clone() for k, v in t.parts.model.state_dict().items()},
            {k: v.clone() for k, v in t.parts.ema.state_dict().items()},
        )

    tr.loss_hook, tr.after_step_hook = nan_at_3, snap
    res = tr.run()
    assert res.step == 4 and res.skipped_steps == 1
    for part in (0, 1):  # weights and EMA untouched by the skipped step, changed by the others
        assert all(torch.equal(snapshots[3][part][k], snapshots[2][part][k]) for k in snapshots[2][part])
        assert not all(torch.equal(snapshots[4][part][k], snapshots[3][part][k]) for k in snapshots[3][part])
    # AdamW's bias-correction count skipped it too
    assert tr.parts.opt.state[tr.parts.params[0]]["step"].item() == 3
    from fasterdit.train.logging import read_metrics

    assert sum(r["skipped"] for r in read_metrics(tmp_path, "train")) == 1


def test_stream_of_nans_aborts_naming_step_and_last_good_checkpoint(tmp_path):
    tr = Trainer(
        cfg_for(20, "log.ckpt_every=2", "train.max_nonfinite=3"), tmp_path, install_signal_handlers=False
    )
    tr.loss_hook = lambda step, terms: dict(terms, loss=terms["loss"] * float("inf")) if step >= 4 else terms
    with pytest.raises(TrainingAborted) as info:
        tr.run()
    msg = str(info.value)
    assert "aborted at step 7" in msg and "3 consecutive steps (steps 5..7" in msg
    assert "step-000000004" in msg and "intact" in msg
    latest = ck.latest_checkpoint(tmp_path)
    assert ck.checkpoint_step(latest) == 4 and ck.is_complete(latest)
    from fasterdit.generate.loading import load_model

    model, _, _ = load_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = train_cli(
        [sys.executable, "-m", "fasterdit"], run_dir, [*BASE, "train.steps=100000", "log.ckpt_every=0"]
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by SIGTERM" in out
    latest = ck.latest_checkpoint(run_dir)
    step = ck.checkpoint_step(latest)
    assert latest is not None and 1 <= step < 100000 and ck.is_complete(latest)
    assert ck.load_train_state(latest)["step"] == step
