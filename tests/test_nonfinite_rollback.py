"""``train.on_nonfinite: rollback`` (issue 27, item 9): a streak of ``train.max_nonfinite`` non-finite steps
reloads the last intact checkpoint, moves past the data that failed and scales the lr, instead of stopping.

Every test drives the real trainer with an injected fault: poisoned images at known data positions (what a
bad shard does), an infinite gradient for a window of steps (an overflowing backward pass), a loss that is
NaN for good (a diverged run, which must still stop). The default ``stop`` is covered by the existing
tests of tests/test_train_resume.py and tests/test_reliability.py.

The tiny run: batch 16, a checkpoint every 4 steps (data position 64 at step 4), ``max_nonfinite`` 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fasterdit.errors import ConfigError
from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.data_order import IndexStream
from fasterdit.train.logging import read_metrics
from fasterdit.train.trainer import Trainer, TrainingAborted
from tiny_run import TINY_RUN

B = 16  # TINY_RUN's batch
ROLLBACK = [
    *TINY_RUN,
    "log.keep_last=3",
    "log.ckpt_every=4",
    "train.max_nonfinite=2",
    "train.on_nonfinite=rollback",
    "train.rollback_lr_scale=0.5",
]
#: data positions 80..111 are the batches of steps 6 and 7 (1-based): the streak reaches the limit at step
#: 7, the run rolls back to step 4 (position 64) and continues at position 112, past step 7's batch
POISONED = (80, 112)


def trainer(run_dir: Path, steps: int, *extra: str) -> Trainer:
    cfg = load_config("demo", [*ROLLBACK, f"train.steps={steps}", *extra])
    return Trainer(cfg, run_dir, install_signal_handlers=False)


def poison(tr: Trainer, start: int, stop: int) -> None:
    """Make the images at data positions ``start..stop-1`` NaN, in this trainer's own copy of the data."""
    src = tr.ctx.source
    idx = IndexStream(len(src), tr.ctx.cfg.seed).take(start, stop - start)
    src.images = src.images.clone()  # the embedded tensors are shared by every source of this process
    src.images[idx] = float("nan")


def stop_after_rollback_at(step: int):
    """An after_step_hook that asks for a stop (as SIGTERM does) at ``step`` once the run has rolled back."""

    def hook(t: Trainer, s: int) -> None:
        if s == step and t.state.rollbacks == 1:
            t.stop.request("SIGTERM")

    return hook


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    path = ck.latest_checkpoint(run_dir)
    out = {f"model.{k}": v for k, v in ck.load_tensors(path, "model").items()}
    out.update({f"ema.{k}": v for k, v in ck.load_tensors(path, "ema").items()})
    for i, st in ck.load_train_state(path)["optimizer"]["state"].items():
        out[f"opt.{i}.exp_avg"], out[f"opt.{i}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
    return out


class InfGrad(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: an overflowing backward with a finite loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g * float("inf")


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory):
    """12 steps through the poisoned window, uninterrupted: (run dir, result, trainer)."""
    d = tmp_path_factory.mktemp("poisoned") / "run"
    tr = trainer(d, 12)
    poison(tr, *POISONED)
    return d, tr.run(), tr


def test_poisoned_data_rolls_back_past_the_window_and_finishes(poisoned_run):
    run_dir, res, tr = poisoned_run
    assert res.step == 12 and res.rollbacks == 1 and res.stopped_by is None
    # skipped: positions 64..111, from the checkpoint's position through the failing step 7's batch
    (rec,) = read_metrics(run_dir, "rollback")
    assert rec["from_step"] == 7 and rec["to_step"] == 4 and rec["step"] == 4
    assert rec["nonfinite_steps"] == [6, 7] and rec["skipped_images"] == 48 and rec["images_seen"] == 112
    assert rec["lr_scale"] == 0.5 and rec["rollbacks"] == 1
    assert rec["checkpoint"].endswith("step-000000004")
    assert res.images_seen == 12 * B + 48
    # the log holds each step once (the undone steps 5..7 were dropped) and the scaled lr after step 4
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all(r["lr"] == pytest.approx(5e-4) for r in train if r["step"] > 4)
    assert len(res.losses) == 12 and all(torch.isfinite(torch.tensor(res.losses)))
    assert tr.parts.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert all(torch.isfinite(v).all() for v in final_state(run_dir).values())
    saved = ck.load_train_state(ck.latest_checkpoint(run_dir))
    assert (saved["lr_scale"], saved["rollbacks"], saved["images_seen"]) == (0.5, 1, 12 * B + 48)


def test_an_infinite_gradient_window_rolls_back(tmp_path, capsys):
    tr = trainer(tmp_path, 10, "train.rollback_lr_scale=1.0")

    def overflow(step: int, terms: dict) -> dict:
        if 4 <= step <= 5 and tr.state.rollbacks == 0:  # steps 5 and 6, the first time only
            terms = dict(terms, loss=InfGrad.apply(terms["loss"]))
        return terms

    tr.loss_hook = overflow
    res = tr.run()
    assert res.step == 10 and res.rollbacks == 1
    (rec,) = read_metrics(tmp_path, "rollback")
    assert rec["nonfinite_steps"] == [5, 6] and rec["to_step"] == 4
    assert rec["skipped_images"] == 32 and rec["lr_scale"] == 1.0  # positions 64..95: steps 5..6's data
    out = capsys.readouterr().err  # the console writes through the (disabled) progress bar: stderr
    assert "step 5: non-finite loss or gradient" in out and "grad norm=" in out
    assert "rolled back to" in out and "skipping 32 images" in out
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path).values())


def test_too_many_rollbacks_stop_naming_the_last_good_checkpoint(tmp_path):
    tr = trainer(tmp_path, 20, "train.max_rollbacks=2")
    tr.loss_hook = lambda step, terms: dict(terms, loss=terms["loss"] * float("nan")) if step >= 4 else terms
    with pytest.raises(TrainingAborted) as info:
        tr.run()
    msg = str(info.value)
    assert "training aborted at step 6" in msg and "2 consecutive steps (steps 5..6" in msg
    assert "No rollback left (2 taken of train.max_rollbacks=2, lr scale now 0.25" in msg
    assert "step-000000004" in msg and "intact (checksums ok, weights finite)" in msg
    assert [r["to_step"] for r in read_metrics(tmp_path, "rollback")] == [4, 4]
    assert ck.checkpoint_step(ck.latest_checkpoint(tmp_path)) == 4


def test_a_streak_before_the_first_checkpoint_stops(tmp_path):
    tr = trainer(tmp_path, 6)
    tr.loss_hook = lambda step, terms: dict(terms, loss=terms["loss"] * float("nan"))
    with pytest.raises(TrainingAborted, match="cannot roll back: no checkpoint had been written yet"):
        tr.run()


def test_resume_after_a_rollback_continues_exactly(tmp_path, poisoned_run):
    ref_dir, ref, _ = poisoned_run
    first = trainer(tmp_path, 12)
    poison(first, *POISONED)
    first.after_step_hook = stop_after_rollback_at(6)
    res1 = first.run()
    assert res1.stopped_by == "SIGTERM" and res1.step == 6 and res1.rollbacks == 1
    saved = ck.load_train_state(ck.latest_checkpoint(tmp_path))
    assert (saved["step"], saved["images_seen"], saved["lr_scale"]) == (6, 112 + 2 * B, 0.5)
    second = trainer(tmp_path, 12)
    poison(second, *POISONED)
    res2 = second.run()
    assert res2.step == 12 and res2.rollbacks == 1 and res2.images_seen == ref.images_seen
    fa, fb = final_state(tmp_path), final_state(ref_dir)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert res1.losses + res2.losses == ref.losses
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == list(range(1, 13))
    assert len(read_metrics(tmp_path, "rollback")) == 1


def test_a_stop_right_after_a_rollback_saves_the_new_position(tmp_path):
    """The checkpoint rolled back to has the same step but an older position: a stop there writes anew."""
    tr = trainer(tmp_path, 12)
    poison(tr, *POISONED)

    def stop_in_the_streak(step: int, terms: dict) -> dict:
        if step == 6:  # the failing step 7: the stop is seen after the rollback, at step 4
            tr.stop.request("SIGTERM")
        return terms

    tr.loss_hook = stop_in_the_streak
    res = tr.run()
    assert res.stopped_by == "SIGTERM" and res.step == 4 and res.rollbacks == 1
    saved = ck.load_train_state(ck.latest_checkpoint(tmp_path))
    assert (saved["step"], saved["images_seen"], saved["lr_scale"], saved["rollbacks"]) == (4, 112, 0.5, 1)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.on_nonfinite=retry", "train.on_nonfinite"),
        ("train.rollback_lr_scale=0", "train.rollback_lr_scale"),
        ("train.rollback_lr_scale=2", "train.rollback_lr_scale"),
        ("train.max_rollbacks=-1", "train.max_rollbacks"),
    ],
)
def test_rollback_settings_are_checked(override, field):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    assert info.value.field == field


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from fasterdit.run.config import load_config
    from fasterdit.train.data_order import IndexStream
    from fasterdit.train.trainer import Trainer

    tr = Trainer(load_config("demo", sys.argv[2:]), sys.argv[1], install_signal_handlers=False)
    src = tr.ctx.source
    idx = IndexStream(len(src), tr.ctx.cfg.seed).take(88, 8)  # rank 1's half of step 6's batch only
    src.images = src.images.clone()
    src.images[idx] = float("nan")
    res = tr.run()
    # one write per line (< PIPE_BUF): the two ranks share torchrun's stdout, and print's separate writes of
    # its arguments interleave ("result result 0 ...")
    line = f"result {tr.ctx.dist.rank} {res.step} {res.rollbacks} {res.images_seen}\\n"
    sys.stdout.write(line)
    sys.stdout.flush()
    """
)


def test_ddp_ranks_roll_back_together(tmp_path):
    """Two gloo ranks, only rank 1's rows poisoned: the all-reduced streak makes both roll back."""
    script = tmp_path / "ddp_rollback.py"
    script.write_text(DDP_SCRIPT)
    args = [*ROLLBACK, "train.steps=8", "train.max_nonfinite=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "run"), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # both ranks: 8 steps, 1 rollback (steps 5..6 undone, positions 64..95 skipped), the same position
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("result")) == [
        f"result 0 8 1 {8 * B + 32}",
        f"result 1 8 1 {8 * B + 32}",
    ]
    (rec,) = read_metrics(tmp_path / "run", "rollback")
    assert rec["from_step"] == 6 and rec["to_step"] == 4 and rec["skipped_images"] == 32
