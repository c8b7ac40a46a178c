"""What a run shows besides its checkpoints: EMA sample grids, the ``eval.every`` evaluation, the SNR
plot, and the final loss/FID curves.

None of it may stop training: a grid or an evaluation gives way to a stop signal (the caller runs them
through :func:`~fasterdit.train.signals.unless_stopped`), a VAE that cannot be loaded turns the grids off
with a warning, and a plot that cannot be drawn is a warning.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from fasterdit.diffusion.snr import default_window, placement, snr_distribution
from fasterdit.errors import UserError
from fasterdit.eval import evaluate
from fasterdit.generate.decode import decoder_for
from fasterdit.generate.defaults import BATCH_SIZE, SamplingFlags, grid_classes, resolve_sampling
from fasterdit.generate.grid import write_grid
from fasterdit.generate.job import Decode, SampleSettings, resolve_precision
from fasterdit.generate.loading import LoadedModel
from fasterdit.run.description import DataDescription
from fasterdit.runtime.files import atomic_write_text
from fasterdit.train.logging import MetricsLogger, plot_eval_curve, plot_loss_curve
from fasterdit.train.parts import TrainParts
from fasterdit.train.signals import StopRequested
from fasterdit.train.state import RunContext
from fasterdit.viz.snr import save_snr_plot

__all__ = ["Outputs"]


class Outputs:
    """Grids and evaluations of the EMA weights, sampled exactly as ``fasterdit sample`` and ``fasterdit
    eval`` sample the checkpoint of the same step with default flags (:mod:`fasterdit.generate`)."""

    def __init__(self, ctx: RunContext, parts: TrainParts, logger: MetricsLogger):
        self.ctx = ctx
        self.parts = parts
        self.logger = logger
        src = ctx.source
        self.data = DataDescription.of_source(src, ctx.cfg.data.source)
        self.grid_enabled = ctx.dist.is_main and (not src.is_latent or bool(src.vae))
        self._decoder: Decode | None = None  # a latent run's VAE, loaded on first use
        self._no_decoder = False  # the VAE could not be loaded: no grids, no evaluation, training goes on

    def grid_path(self, step: int) -> Path:
        return self.ctx.run_dir / "samples" / f"step-{step:09d}.png"

    def _model(self, step: int) -> LoadedModel:
        """The EMA weights as this run's model at ``step``: what the checkpoint of ``step`` loads."""
        ctx = self.ctx
        return LoadedModel(
            self.parts.ema.model, ctx.recipe, ctx.cfg, None, self.data, step, "fasterdit", ctx.run_dir
        )

    def _decode(self) -> tuple[bool, Decode | None]:
        """(usable, decoder): the decoder of a latent run (None for pixels); not usable when the VAE cannot
        be loaded (a warning once; training goes on without grids and evaluations)."""
        if not self.data.is_latent:
            return True, None
        if self._no_decoder:
            return False, None
        if self._decoder is None:
            try:
                self._decoder = decoder_for(self.data, self.parts.device)
            except UserError as err:  # no diffusers / offline: training goes on without pictures
                self.ctx.console.say(
                    f"warning: cannot decode latents with VAE {self.data.vae!r} ({err}); "
                    "no sample grids or evaluations"
                )
                self._no_decoder = True
                return False, None
        return True, self._decoder

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path | None:
        """EMA samples, one row per class: ``fasterdit sample --ckpt RUN/checkpoints/step-k --out X.png``."""
        lm, device = self._model(0), self.parts.device
        usable, decode = self._decode()
        if not usable:
            return None
        resolved = resolve_sampling("sample", lm, SamplingFlags())
        classes = tuple(grid_classes(lm.cfg, self.data.num_classes)) if self.data.num_classes > 0 else None
        settings = SampleSettings.from_resolved(
            resolved,
            label_mode="given" if classes else "uniform",
            labels=classes,
            precision=resolve_precision("auto", device, lm.cfg.train),
        )
        return write_grid(
            lm.model, lm.recipe, settings, path, batch_size=BATCH_SIZE, device=device, decode=decode
        )

    def evaluate(self, step: int) -> None:
        """``eval.every``: FID (and class accuracy) of the EMA model, logged as an ``eval`` record; every
        rank samples its share, rank 0 scores and logs. The number equals ``fasterdit eval`` on the
        checkpoint of ``step`` with default flags, whatever the number of processes."""
        ctx = self.ctx
        t0 = time.time()
        origin = self.data.origin
        assert origin is not None  # check_config refuses eval.every without one
        usable, decode = self._decode()
        if not usable:
            return
        lm = self._model(step)
        resolved = resolve_sampling("eval", lm, SamplingFlags())
        settings = SampleSettings.from_resolved(
            resolved,
            label_mode="balanced",
            precision=resolve_precision("auto", self.parts.device, lm.cfg.train),
        )
        res = evaluate(
            lm.model, lm.recipe, settings, dataset=origin.dataset, dist=ctx.dist, decode=decode,
            abort=StopRequested,
        )  # fmt: skip
        if res is None:  # ranks > 0 sampled their share; rank 0 scores and logs
            return
        vals = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
        vals["resize"] = res["resize"]  # how the images met the feature network (eval/resize.py)
        vals["eval_seconds"] = round(time.time() - t0, 2)
        self.logger.log("eval", step, vals)
        if "fid" in vals:
            ctx.console.say(
                f"step {step}: FID {vals['fid']:.2f}"
                + (f", class accuracy {vals['class_accuracy']:.3f}" if "class_accuracy" in vals else "")
            )

    def final_grid_missing(self, step: int) -> bool:
        """Whether the end of the run still has to draw its final grid."""
        return self.grid_enabled and not self.grid_path(step).exists()

    def finish(self, step: int) -> None:
        """Rank 0, after a run that trained to the end: ``samples.png`` and the loss and FID curves."""
        run_dir = self.ctx.run_dir
        final = self.grid_path(step)
        if final.exists():
            shutil.copyfile(final, run_dir / "samples.png")
        plot_loss_curve(run_dir)
        plot_eval_curve(run_dir)

    def write_snr_plot(self) -> None:
        """snr_pdf.png: the log-SNR density this run's recipe trains on, at the data's std, and snr.json: its
        summary and where it sits (:func:`~fasterdit.diffusion.snr.placement`), once."""
        ctx = self.ctx
        path = ctx.run_dir / "snr_pdf.png"
        if path.exists():
            return
        dist = snr_distribution(ctx.recipe, ctx.source.stats)
        record = {
            "placement": placement(ctx.recipe, ctx.source.stats).to_dict(),
            "summary": dist.summary(default_window()).to_dict("nats"),
        }
        atomic_write_text(ctx.run_dir / "snr.json", json.dumps(record, indent=2) + "\n")
        try:
            save_snr_plot(
                [ctx.recipe],
                ctx.source.stats,
                path,
                dpi=120,
                title=f"log-SNR density of this run's recipe ({ctx.cfg.recipe}) on {ctx.cfg.data.source}",
            )
        except (OSError, ValueError, RuntimeError) as err:  # cannot write it, or no law for this recipe: a
            # plot must never stop training
            ctx.console.say(f"warning: no SNR-PDF plot ({type(err).__name__}: {err})")
