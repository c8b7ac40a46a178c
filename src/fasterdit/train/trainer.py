"""The training loop: recipe + DiT + data -> a run directory, single process or under torchrun.

The loop (:meth:`Trainer._loop`) reads like DiT's ``train.py``: take a step, count it, log, checkpoint,
draw a grid, evaluate. The pieces it calls each have one job:

- :mod:`~fasterdit.train.parts` builds the device settings, model, EMA, optimizer, DDP and the loss;
- :mod:`~fasterdit.train.step` is one optimizer step (draws, forward/backward, non-finite skip on the
  device), returning its stats on the device;
- :mod:`~fasterdit.train.monitor` reads those stats a step later (losses, the non-finite streak, DDP's
  agreed stop);
- :mod:`~fasterdit.train.resume` saves and resumes; :mod:`~fasterdit.train.outputs` draws grids, runs
  the ``eval.every`` evaluation and the plots; :mod:`~fasterdit.train.signals` turns SIGINT/SIGTERM into
  a stop that leaves a checkpoint.

Reliability (docs/training.md, "Guarantees"): rank 0 holds an exclusive lock on the run directory for the
whole job; a checkpoint is written only from finite weights and never prunes during a non-finite streak;
resume verifies checksums and falls back to the previous intact checkpoint; a stop signal is honoured
within one step, a grid's sampling step or an evaluation batch. With ``train.on_nonfinite: rollback`` a
non-finite streak reloads the last intact checkpoint and moves past the data that failed
(:meth:`Trainer._roll_back`) instead of stopping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fasterdit.codec import load_yaml_file
from fasterdit.diffusion.snr import placement
from fasterdit.run import checkpoint as ckpt_mod
from fasterdit.run.config import RunConfig, config_from_dict
from fasterdit.runtime.distributed import DistInfo, barrier, broadcast_object, init_distributed
from fasterdit.runtime.files import atomic_write_text
from fasterdit.train.build import check_config, model_kwargs
from fasterdit.train.init import init_weights
from fasterdit.train.logging import Console, MetricsLogger, Progress
from fasterdit.train.monitor import Monitor, Streak, StreakLimit
from fasterdit.train.outputs import Outputs
from fasterdit.train.parts import TrainParts, build_parts
from fasterdit.train.preflight import check_memory
from fasterdit.train.result import TrainingAborted, TrainingInterrupted, TrainResult
from fasterdit.train.resume import Checkpointer
from fasterdit.train.runlock import hold_run_lock
from fasterdit.train.signals import StopRequest, unless_stopped
from fasterdit.train.state import RunContext, TrainState
from fasterdit.train.step import Draws, LossHook, lr_at, train_step

__all__ = ["Draws", "TrainResult", "Trainer", "TrainingAborted", "TrainingInterrupted", "train"]


@dataclass
class _Tally:
    """Seconds and images of the training steps: the whole run's (samples/s) and the log interval's.

    Why an object: the loop restarts after a rollback and these survive it.
    """

    train_time: float = 0.0
    train_images: int = 0
    interval_time: float = 0.0
    interval_images: int = 0

    def add(self, seconds: float, images: int) -> None:
        self.train_time += seconds
        self.train_images += images
        self.interval_time += seconds
        self.interval_images += images

    def new_interval(self) -> None:
        self.interval_time, self.interval_images = 0.0, 0


class Trainer:
    """Train one run directory. ``Trainer(cfg, run_dir).run()``; resumes automatically.

    After :meth:`run` has built them, ``parts`` holds the model, EMA and optimizer and ``state`` the
    counters. Test hooks (not part of the CLI): ``loss_hook(step, terms) -> terms`` may replace the loss
    terms (e.g. inject a NaN); ``after_step_hook(trainer, step)`` runs after every optimizer step;
    ``stop.request("SIGTERM")`` does what a stop signal does.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        dist_info: DistInfo | None = None,
        *,
        resume: bool = True,
        show_progress: bool | None = None,
        install_signal_handlers: bool = True,
        allow_config_change: bool = False,
    ):
        dist = dist_info or init_distributed(cfg.train.device)
        # every config check before any work (raises ConfigError/DataError naming the field)
        recipe, source = check_config(cfg, dist.world_size)
        kwargs = model_kwargs(cfg, source, recipe)
        check_memory(cfg, kwargs, dist)
        self.ctx = RunContext(cfg, dist, Path(run_dir), recipe, source, kwargs, Console(dist.is_main))
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.show_progress = cfg.log.progress if show_progress is None else show_progress
        self.install_signal_handlers = install_signal_handlers
        self.state = TrainState()
        self.stop = StopRequest(self.ctx.console.say)
        self.parts: TrainParts | None = None  # built by run() (or _setup()), once the run dir is locked
        self.loss_hook: LossHook | None = None
        self.after_step_hook: Callable[[Trainer, int], None] | None = None

    def _setup(self) -> TrainParts:
        """Build the run's parts and a fresh state (resume fills it in)."""
        self.parts = build_parts(self.ctx)
        self.state = TrainState()
        return self.parts

    def run(self) -> TrainResult:
        """Train to ``train.steps`` holding the run-directory lock; resumes from the latest checkpoint.

        A second Ctrl-C raises TrainingInterrupted (a UserError: a message, no traceback).
        """
        with hold_run_lock(self.ctx.run_dir, self.ctx.dist.is_main):
            try:
                return self._run()
            except KeyboardInterrupt:
                last = self.state.last_ckpt
                raise TrainingInterrupted(
                    f"interrupted by a second Ctrl-C at step {self.state.step}, without saving; "
                    + (
                        f"the last checkpoint {last} is untouched"
                        if last
                        else "no checkpoint had been written"
                    )
                    + ". Run the same command to resume."
                ) from None

    def _run(self) -> TrainResult:
        t_start = time.time()
        ctx, d = self.ctx, self.ctx.dist
        cfg, say = ctx.cfg, ctx.console.say
        if d.is_main:
            for p in ckpt_mod.remove_stale_temps(ctx.run_dir):
                say(f"removed {p}, left by an interrupted write or prune")
        barrier()
        parts = self._setup()
        checkpointer = Checkpointer(ctx, parts, self.state, self.allow_config_change)
        resumed = checkpointer.resume() if self.resume else None
        if resumed is None and cfg.train.init is not None:  # a fresh run only: a checkpoint wins
            self.state.init = init_weights(ctx, parts)
        if d.is_main:
            atomic_write_text(ctx.run_dir / "config.yaml", _yaml(cfg.to_dict()))
            atomic_write_text(ctx.run_dir / "recipe.yaml", _yaml(ctx.recipe.to_dict()))
        wandb_config = cfg.to_dict() if cfg.log.wandb else None
        logger = MetricsLogger(ctx.run_dir, cfg.log.tensorboard, enabled=d.is_main, wandb_config=wandb_config)
        # drop what a previous attempt logged after the state we start from (all of it on a fresh start: a
        # run killed before its first checkpoint must not leave its steps in the log twice)
        logger.truncate_after(self.state.step)
        if d.is_main:
            ctx.console.progress = Progress(cfg.train.steps, self.state.step, enabled=self.show_progress)
        outputs = Outputs(ctx, parts, logger)
        if d.is_main:
            self._announce(parts, resumed)
            outputs.write_snr_plot()
        monitor = Monitor(ctx, self.state, parts.is_cuda)
        try:
            with self.stop.handlers(self.install_signal_handlers):
                stopped_by, train_time, train_images = self._loop(
                    parts, monitor, checkpointer, outputs, logger
                )
                self._finish(parts, monitor, checkpointer, outputs, stopped_by, trained=train_images > 0)
        finally:
            parts.close()  # the batch-reading thread (data.prefetch), however the loop ended
            if ctx.console.progress is not None:
                ctx.console.progress.close()
            logger.close()
        barrier()
        st = self.state
        sps = train_images / train_time if train_time > 0 else float("nan")
        if d.is_main and stopped_by is None and train_images == 0:
            say(
                f"the run is already at step {st.step} of {cfg.train.steps}: nothing to do (raise "
                f"train.steps with --set train.steps=N to train further); outputs in {ctx.run_dir}"
            )
        elif d.is_main and stopped_by is None:
            rolled = f", {st.rollbacks} rollback(s)" if st.rollbacks else ""
            say(
                f"done: step {st.step}, {st.images_seen} images, {sps:.1f} samples/s (training steps "
                f"only), {st.skipped_total} skipped steps{rolled}, {time.time() - t_start:.0f} s; "
                f"outputs in {ctx.run_dir}"
            )
        return TrainResult(ctx.run_dir, st.step, st.images_seen, st.last_ckpt, list(monitor.losses),
                           st.skipped_total, stopped_by, sps, time.time() - t_start,
                           rollbacks=st.rollbacks)  # fmt: skip

    def _loop(
        self, parts: TrainParts, monitor: Monitor, checkpointer: Checkpointer, outputs: Outputs, logger
    ) -> tuple[str | None, float, int]:
        """Train until ``train.steps`` or a stop, starting over from a rollback when the monitor asks for
        one (``train.on_nonfinite: rollback``); (the stop's signal name or None, seconds, images)."""
        tally = _Tally()
        while True:
            try:
                stopped_by = self._train(parts, monitor, checkpointer, outputs, logger, tally)
            except StreakLimit as limit:
                self._roll_back(limit.streak, monitor, checkpointer, logger)
                tally.new_interval()
                continue
            return stopped_by, tally.train_time, tally.train_images

    def _train(
        self,
        parts: TrainParts,
        monitor: Monitor,
        checkpointer: Checkpointer,
        outputs: Outputs,
        logger: MetricsLogger,
        tally: _Tally,
    ) -> str | None:
        """The steps from the current state to ``train.steps`` or a stop (its signal name, else None)."""
        cfg, d, st = self.ctx.cfg, self.ctx.dist, self.state
        lg, total, batch = cfg.log, cfg.train.steps, cfg.train.batch_size
        progress = self.ctx.console.progress
        ckpt_due, stopped_by = False, None
        while st.step < total:
            # stop requests: one process reads its flag; DDP ranks agree through the lagged stats
            if d.distributed and monitor.agreed_stop is not None and monitor.agreed_stop <= st.step:
                stopped_by = self.stop.signal or "signal"
                break
            if not d.distributed and self.stop.signal:
                stopped_by = self.stop.signal
                break
            t0 = time.time()
            queued = train_step(
                self.ctx, parts, st.step, st.images_seen, self.stop, self.loss_hook, st.lr_scale
            )
            st.images_seen += batch
            st.step += 1
            monitor.post(queued)
            monitor.drain(keep=1)
            tally.add(time.time() - t0, batch)
            if progress is not None:
                progress.update(1)
            s = st.step
            if s % lg.log_every == 0 or s == total:
                monitor.drain(0)
                if d.is_main:
                    self._log_interval(monitor, logger, s, tally.interval_time, tally.interval_images)
                tally.new_interval()
            if lg.ckpt_every and s % lg.ckpt_every == 0:
                ckpt_due = True
            if ckpt_due and s < total:
                monitor.drain(0)
                if monitor.streak == 0:  # never checkpoint in the middle of a non-finite streak
                    checkpointer.save()
                    ckpt_due = False
            if outputs.grid_enabled and lg.sample_every and s % lg.sample_every == 0 and s < total:
                self._unless_stopped(
                    parts, f"the sample grid of step {s}", outputs.sample_grid, outputs.grid_path(s)
                )
            if cfg.eval.every and s % cfg.eval.every == 0:  # every rank samples a share
                self._unless_stopped(parts, f"the evaluation of step {s}", outputs.evaluate, s)
            if self.after_step_hook is not None:
                self.after_step_hook(self, s)
        monitor.drain(0)
        return stopped_by

    def _roll_back(
        self, streak: Streak, monitor: Monitor, checkpointer: Checkpointer, logger: MetricsLogger
    ) -> None:
        """Undo a non-finite streak: back to the newest intact checkpoint, past the data that failed.

        The data position becomes the end of the failing step's batch, so the images from the checkpoint's
        position up to and including that batch are skipped (the failed window is never replayed), and the
        lr scale is multiplied by ``train.rollback_lr_scale``. The log loses the undone steps, as on a
        resume, and gains a ``rollback`` record. Every rank runs this at the same step (the streak is
        agreed), and the reload is collective.
        """
        cfg, st, console = self.ctx.cfg, self.state, self.ctx.console
        failing = streak.last + 1  # 1-based, as the messages count steps
        past = streak.last_position + cfg.train.batch_size  # the end of the failing step's batch
        done = checkpointer.roll_back(past, cfg.train.rollback_lr_scale)
        if done is None:
            raise TrainingAborted(
                f"training aborted at step {failing}: {streak.length} non-finite steps in a row and no "
                f"checkpoint left in {self.ctx.run_dir} to roll back to"
            )
        path, skipped = done
        monitor.rewind(st.step)
        logger.truncate_after(st.step)
        logger.log(
            "rollback",
            st.step,
            {"from_step": failing, "to_step": st.step, "checkpoint": str(path),
             "nonfinite_steps": [streak.first + 1, failing], "skipped_images": skipped,
             "images_seen": st.images_seen, "lr_scale": st.lr_scale, "rollbacks": st.rollbacks},
        )  # fmt: skip
        console.say(
            f"step {failing}: {streak.length} non-finite steps in a row "
            f"(steps {streak.first + 1}..{failing}); "
            f"rolled back to {path} (step {st.step}), skipping {skipped} images (data positions "
            f"{st.images_seen - skipped}..{st.images_seen - 1}, through step {failing}'s batch); lr scale "
            f"{st.lr_scale:g}; rollback {st.rollbacks} of {cfg.train.max_rollbacks}"
        )
        if console.progress is not None:  # the bar counts the steps again from the checkpoint's
            console.progress.close()
            console.progress = Progress(cfg.train.steps, st.step, enabled=self.show_progress)

    def _finish(self, parts, monitor, checkpointer, outputs, stopped_by: str | None, trained: bool) -> None:
        """The last checkpoint; after a run that reached its end, the final evaluation, grid and curves."""
        cfg, d, st = self.ctx.cfg, self.ctx.dist, self.state
        if stopped_by is not None:
            checkpointer.save(prune=monitor.streak == 0)
            self.ctx.console.say(
                f"stopped by {stopped_by} at step {st.step}; checkpoint {st.last_ckpt}. "
                "Run the same command to resume."
            )
            return
        if st.step < cfg.train.steps:
            return
        if st.last_ckpt is None or ckpt_mod.checkpoint_step(st.last_ckpt) != st.step:
            checkpointer.save(prune=monitor.streak == 0)
        draw = d.is_main and (trained or not (self.ctx.run_dir / "samples.png").exists())
        if not broadcast_object(draw):  # rank 0 decides: the ranks evaluate together
            return
        if cfg.eval.every and st.step % cfg.eval.every:
            self._unless_stopped(parts, "the final evaluation", outputs.evaluate, st.step)
        if d.is_main:
            if outputs.final_grid_missing(st.step):
                self._unless_stopped(
                    parts, "the final sample grid", outputs.sample_grid, outputs.grid_path(st.step)
                )
            outputs.finish(st.step)

    def _unless_stopped(self, parts: TrainParts, what: str, fn: Callable[..., Any], *args: Any) -> None:
        unless_stopped(parts.ema.model, self.stop, self.ctx.console.say, what, fn, *args)

    def _log_interval(
        self, monitor: Monitor, logger: MetricsLogger, step: int, dt: float, images: int
    ) -> None:
        vals = monitor.take_interval(lr_at(self.ctx.cfg.optim, step - 1) * self.state.lr_scale, dt, images)
        logger.log("train", step, vals)
        progress = self.ctx.console.progress
        if progress is not None:
            progress.set(
                loss=f"{vals['loss']:.4f}",
                img_s=f"{vals['samples_per_sec']:.0f}",
                kimg=f"{self.state.images_seen / 1000:.1f}",
            )

    def _describe_align(self, parts: TrainParts) -> str:
        """The REPA term of the run summary (docs/repa.md), or "" without one."""
        a, align = self.ctx.recipe.align, parts.align
        if align is None:
            return ""
        where = "stored in the prepared set" if align.encoder is None else "the encoder on the batch's images"
        n = sum(p.numel() for p in align.projector.parameters())
        return (
            f" + {a.weight:g}·REPA alignment [mean −cos(projector(tokens after block {a.depth}), {a.encoder} "
            f"patch features); features: {where}; projector {n / 1e6:.2f}M params, training state only]"
        )

    def _announce(self, parts: TrainParts, resumed: Path | None) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        n_params = sum(p.numel() for p in parts.model.parameters())
        where = f"resuming from {resumed} (step {self.state.step})" if resumed else "starting fresh"
        init = self.state.init
        if resumed and cfg.train.init is not None:
            where += f"; train.init ({cfg.train.init}) ignored: the run's own checkpoint wins on a resume"
        elif init is not None:
            step = f" step {init.step}" if init.step is not None else ""
            where += (
                f" from train.init {init.loaded} ({init.source}{step}, weights SHA-256 "
                f"{init.weights_sha256[:16]}…, into the model and its EMA)"
            )
        ctx.console.say(
            f"fasterdit train: {cfg.model.name} ({n_params / 1e6:.2f}M params), recipe {cfg.recipe}, "
            f"data {cfg.data.source} ({len(ctx.source)} items), {ctx.dist.world_size} process(es) on "
            f"{parts.device}, "
            f"global batch {cfg.train.batch_size} (accum {cfg.train.grad_accum}), "
            f"{'bf16 autocast' if parts.amp_dtype else 'fp32'}; {where}; run dir {ctx.run_dir}\n"
            f"  loss: {ctx.recipe.loss.describe(ctx.source.channels)}"
            + (" + VB (learned variance, iDDPM's hybrid loss)" if ctx.recipe.learn_sigma else "")
            + self._describe_align(parts)
            + "".join(f"\n  schedule: {line}" for line in ctx.recipe.describe_stages())
        )
        if cfg.train.snr_warning:
            where_lam = placement(ctx.recipe, ctx.source.stats)
            if where_lam.far:
                ctx.console.say(where_lam.warning())


def _yaml(d: dict[str, Any]) -> str:
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None)


def train(
    cfg: RunConfig, run_dir: str | Path, dist_info: DistInfo | None = None, **kwargs: Any
) -> TrainResult:
    """Convenience: ``Trainer(cfg, run_dir, dist_info, **kwargs).run()``."""
    return Trainer(cfg, run_dir, dist_info, **kwargs).run()


def load_run_config(run_dir: str | Path) -> RunConfig | None:
    """The config.yaml a run directory was started with (None when absent)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    return config_from_dict(load_yaml_file(path, "config") or {})
