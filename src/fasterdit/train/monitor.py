"""The host side of the step stats: the lagged read, the log interval's sums and the non-finite streak.

Why lagged: a step's stats (:class:`~fasterdit.train.step.QueuedStats`) leave the device by a
non-blocking copy into pinned memory; the host reads them one step later, when the copy has long
finished, so it never waits for the GPU's queue. What the host learns there: the per-step loss, whether
the update was skipped (the streak that aborts a diverged run), and under DDP whether some rank asked to
stop (every rank sees the same all-reduced flag at the same step, so they stop together).

A streak of ``train.max_nonfinite`` ends the run (TrainingAborted) or, with ``train.on_nonfinite:
rollback`` and rollbacks left, raises :class:`StreakLimit` for the trainer to roll back. The flags are
all-reduced and the rollback count is saved state, so every DDP rank takes the same branch at the same step.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

import torch

from fasterdit.train.result import TrainingAborted
from fasterdit.train.resume import describe_last_good
from fasterdit.train.state import RunContext, TrainState
from fasterdit.train.step import QueuedStats
from fasterdit.train.step_stats import StepStats

__all__ = ["Monitor", "Streak", "StreakLimit"]


@dataclass(frozen=True)
class Streak:
    """A run of consecutive non-finite steps that reached ``train.max_nonfinite`` (0-based steps)."""

    first: int  # its first step
    last: int  # the step that reached the limit
    last_position: int  # the data position of that step's batch

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class StreakLimit(Exception):
    """A streak reached ``train.max_nonfinite`` and the run may roll back (the trainer catches it)."""

    def __init__(self, streak: Streak):
        super().__init__(f"non-finite steps {streak.first + 1}..{streak.last + 1}")
        self.streak = streak


@dataclass
class _Interval:
    """Sums over the steps since the last log record."""

    loss: float = 0.0
    n: int = 0  # finite steps
    terms: dict[str, float] = field(default_factory=dict)
    grad_norm_max: float = 0.0
    skipped: int = 0


class Monitor:
    """Reads queued step stats on the host and keeps the per-step losses, the log interval, the streak."""

    def __init__(self, ctx: RunContext, state: TrainState, is_cuda: bool):
        self.ctx = ctx
        self.state = state
        self.is_cuda = is_cuda
        self.losses = array("d")  # per-step global mean loss of this process's steps (not those undone)
        self.streak = 0  # consecutive non-finite steps so far
        self.streak_start = -1  # 0-based first step of the current streak
        self.agreed_stop: int | None = None  # DDP: the step at which every rank stops
        self.first_step = state.step  # the step ``losses`` starts after (the resumed one)
        self._pending: list[tuple[QueuedStats, torch.cuda.Event | None]] = []
        self._interval = _Interval()

    def post(self, queued: QueuedStats) -> None:
        """Queue a step's stats for the host without waiting (CUDA: pinned buffer + event)."""
        if self.is_cuda:
            vec = queued.values
            buf = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            buf.copy_(vec, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            self._pending.append((QueuedStats(queued.step, queued.position, queued.layout, buf), ev))
        else:
            self._pending.append((queued, None))

    def drain(self, keep: int = 0) -> None:
        """Consume queued stats, leaving the newest ``keep`` (1 = the lagged read, 0 = a full flush)."""
        while len(self._pending) > keep:
            queued, ev = self._pending.pop(0)
            if ev is not None:
                ev.synchronize()
            self._consume(queued, queued.layout.read(queued.values.tolist()))

    def rewind(self, to_step: int) -> None:
        """Forget the steps after ``to_step``, which a rollback undid: their queued stats, losses, streak and
        log interval. A stop the ranks agreed on during them happens at once."""
        self._pending.clear()
        del self.losses[max(to_step - self.first_step, 0) :]
        self.first_step = min(self.first_step, to_step)  # a fallback past a damaged checkpoint goes further
        self.streak, self.streak_start = 0, -1
        self._interval = _Interval()
        if self.agreed_stop is not None:
            self.agreed_stop = min(self.agreed_stop, to_step)

    def _consume(self, queued: QueuedStats, st: StepStats) -> None:
        step = queued.step
        loss, gnorm = st.loss, st.grad_norm
        self.losses.append(loss)
        if st.stop and self.agreed_stop is None:
            self.agreed_stop = step + 1  # every rank sees the same all-reduced flag at the same step
        iv = self._interval
        if st.ok:
            self.streak = 0
            iv.loss += loss
            iv.n += 1
            for k, v in st.terms.items():
                iv.terms[k] = iv.terms.get(k, 0.0) + v
            iv.grad_norm_max = max(iv.grad_norm_max, gnorm)
            return
        self.state.skipped_total += 1
        iv.skipped += 1
        if self.streak == 0:
            self.streak_start = step
        self.streak += 1
        self.ctx.console.say(
            f"step {step + 1}: non-finite loss or gradient (loss={loss}, grad norm={gnorm}); "
            f"step skipped ({self.state.skipped_total} so far)"
        )
        if self.streak >= self.ctx.cfg.train.max_nonfinite:
            streak = Streak(self.streak_start, step, queued.position)
            if self._may_roll_back():
                raise StreakLimit(streak)
            raise TrainingAborted(self._abort_message(streak))

    def _may_roll_back(self) -> bool:
        """Whether a streak at the limit rolls back: asked for, rollbacks left, and a checkpoint to go to."""
        t = self.ctx.cfg.train
        return (
            t.on_nonfinite == "rollback"
            and self.state.rollbacks < t.max_rollbacks
            and self.state.last_ckpt is not None
        )

    def _abort_message(self, streak: Streak) -> str:
        """The TrainingAborted message: the streak, the last good checkpoint, and why no rollback."""
        return (
            f"training aborted at step {streak.last + 1}: the loss or gradient was non-finite for "
            f"{streak.length} consecutive steps (steps {streak.first + 1}..{streak.last + 1}; "
            f"{self.state.skipped_total} skipped in all); no weights were updated by them. "
            f"{self._rollback_note()}{describe_last_good(self.state.last_ckpt)}. "
            "Lower optim.lr, set optim.grad_clip, or check the data; then resume with the same command."
        )

    def _rollback_note(self) -> str:
        """Why train.on_nonfinite=rollback did not roll back (empty with ``stop``: today's message)."""
        t, st = self.ctx.cfg.train, self.state
        if t.on_nonfinite != "rollback":
            return ""
        if st.last_ckpt is None:
            return "train.on_nonfinite=rollback cannot roll back: "
        return (
            f"No rollback left ({st.rollbacks} taken of train.max_rollbacks={t.max_rollbacks}, lr scale "
            f"now {st.lr_scale:g}; raise train.max_rollbacks to allow more); "
        )

    def take_interval(self, lr: float, seconds: float, images: int) -> dict[str, Any]:
        """The ``train`` log record of the interval that ends now (drain first), and start a new one."""
        iv = self._interval
        n = max(iv.n, 1)
        vals: dict[str, Any] = {"loss": iv.loss / n if iv.n else float("nan")}
        for k, v in iv.terms.items():
            vals[f"loss_{k}" if not k.startswith("loss") else k] = v / n
        vals.update(
            lr=lr,
            grad_norm_max=iv.grad_norm_max,
            samples_per_sec=images / seconds if seconds > 0 else float("nan"),
            images_seen=self.state.images_seen,
            skipped=iv.skipped,
            skipped_total=self.state.skipped_total,
        )
        self._interval = _Interval()
        return vals
