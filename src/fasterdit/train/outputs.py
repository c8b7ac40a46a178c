"""What a run shows besides its checkpoints: EMA sample grids, the ``eval.every`` evaluation, the SNR
plot, and the final loss/FID curves.

None of it may stop training: a grid or an evaluation gives way to a stop signal (the caller runs them
through :func:`~fasterdit.train.signals.unless_stopped`), a VAE that cannot be loaded turns the grids off
with a warning, and a plot that cannot be drawn is a warning.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fasterdit.data.vae import latent_decoder
from fasterdit.diffusion.sampling import sample
from fasterdit.errors import UserError
from fasterdit.eval import evaluate, evaluate_samples
from fasterdit.generate.job import SampleSettings, sample_shared
from fasterdit.train.data_order import SAMPLE_TAG, derive_seed
from fasterdit.train.logging import MetricsLogger, plot_eval_curve, plot_loss_curve
from fasterdit.train.parts import TrainParts
from fasterdit.train.signals import StopRequested
from fasterdit.train.state import RunContext
from fasterdit.viz import save_image_grid
from fasterdit.viz.snr import save_snr_plot

__all__ = ["EVAL_TAG", "Outputs"]

#: derive_seed purpose tag of the ``eval.every`` evaluation's sampling
EVAL_TAG = 6


class Outputs:
    """Grids from a fixed noise and label set (one row per class), evaluations, plots."""

    def __init__(self, ctx: RunContext, parts: TrainParts, logger: MetricsLogger):
        self.ctx = ctx
        self.parts = parts
        self.logger = logger
        cfg, src = ctx.cfg, ctx.source
        self.grid_enabled = ctx.dist.is_main and (not src.is_latent or bool(src.vae))
        s = cfg.sample
        classes = s.classes if s.classes else list(range(min(src.num_classes, 10)))
        if src.num_classes <= 0:
            classes = [0]
        labels = torch.tensor([c for c in classes for _ in range(s.per_class)], dtype=torch.long)
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, SAMPLE_TAG))
        shape = (len(labels), src.channels, src.resolution, src.resolution)
        self.grid_noise = torch.randn(shape, generator=g).to(parts.device)
        self.grid_labels = labels.to(parts.device) if src.num_classes > 0 else None
        self._vae: Any = None  # the decoder of a latent run: None until loaded, False when it cannot be

    def grid_path(self, step: int) -> Path:
        return self.ctx.run_dir / "samples" / f"step-{step:09d}.png"

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path | None:
        """EMA samples from the fixed noise and labels: one row per class."""
        ctx, parts = self.ctx, self.parts
        s, src = ctx.cfg.sample, ctx.source
        g = torch.Generator(device=parts.device).manual_seed(derive_seed(ctx.cfg.seed, SAMPLE_TAG, 1))
        with parts.autocast():
            res = sample(
                parts.ema.model,
                ctx.recipe,
                self.grid_noise.clone(),
                y=self.grid_labels,
                sampler=s.sampler or ctx.recipe.sampler.name,
                steps=s.steps,
                cfg_scale=s.cfg_scale,
                generator=g,
            )
        x = res.x.float()
        if src.is_latent:
            x = self._decode(x)
            if x is None:
                return None
        scale = max(1, 128 // max(1, src.resolution)) if not src.is_latent else 1
        return save_image_grid(x.cpu(), path, nrow=s.per_class, scale=min(scale, 4))

    def _decode(self, z: torch.Tensor) -> torch.Tensor | None:
        """Latent samples -> images with the data's VAE (cropped back to the embedded digits' size when
        the autoencoder saw them padded); None when the VAE cannot be loaded (no grids, training goes on)."""
        if self._vae is False:
            return None
        if self._vae is None:
            vae, origin = self.ctx.source.vae, self.ctx.source.origin
            try:
                self._vae = latent_decoder(
                    vae, self.parts.device, crop=origin.resolution if origin else None, batch_size=16
                )
            except UserError as err:  # no diffusers / offline: training goes on without pictures
                self.ctx.console.say(
                    f"warning: cannot decode latents with VAE {vae!r} ({err}); no sample grids"
                )
                self._vae = False
                return None
        return self._vae(z)

    def evaluate(self, step: int) -> None:
        """``eval.every``: FID (and class accuracy) of the EMA model, logged as an ``eval`` record."""
        ctx = self.ctx
        e, s = ctx.cfg.eval, ctx.cfg.sample
        t0 = time.time()
        origin = ctx.source.origin
        assert origin is not None  # check_config refuses eval.every without one
        kwargs = dict(
            dataset=origin.dataset,
            num_samples=e.num_samples,
            sampler=e.sampler or s.sampler or ctx.recipe.sampler.name,
            steps=e.steps or s.steps,
            cfg_scale=s.cfg_scale if e.cfg_scale is None else e.cfg_scale,
            seed=derive_seed(ctx.cfg.seed, EVAL_TAG) % (2**31),
        )
        if ctx.dist.distributed:
            res = self._evaluate_shared(**kwargs)
            if res is None:  # ranks > 0 sampled their share; rank 0 scores and logs
                return
        else:
            decode = self._decode if ctx.source.is_latent else None
            model, device = self.parts.ema.model, self.parts.device
            res = evaluate(model, ctx.recipe, device=device, decode=decode, **kwargs)
        vals = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
        vals.setdefault("num_samples", e.num_samples)
        vals["eval_seconds"] = round(time.time() - t0, 2)
        self.logger.log("eval", step, vals)
        if "fid" in vals:
            ctx.console.say(
                f"step {step}: FID {vals['fid']:.2f}"
                + (f", class accuracy {vals['class_accuracy']:.3f}" if "class_accuracy" in vals else "")
            )

    def _evaluate_shared(
        self, *, dataset: str, num_samples: int, sampler: str, steps: int, cfg_scale: float, seed: int
    ) -> dict[str, Any] | None:
        """``eval.every`` under DDP: every rank samples its share of the batches (per-index noise, balanced
        labels, as ``fasterdit eval``), rank 0 scores them; None on the other ranks."""
        dist = self.ctx.dist
        settings = SampleSettings(num_samples, seed, sampler, steps, float(cfg_scale), label_mode="balanced")
        t0 = time.time()
        decode = self._decode if self.ctx.source.is_latent else None
        got = sample_shared(self.parts.ema.model, self.ctx.recipe, settings, batch_size=250, dist=dist,
                            decode=decode, abort=StopRequested)  # fmt: skip
        if got is None:
            return None
        images, labels, nfe = got
        res = evaluate_samples(images, labels, dataset, device=self.parts.device)
        res.update(nfe=nfe, sampler=sampler, steps=steps, cfg_scale=float(cfg_scale), seed=seed,
                   sample_seconds=round(time.time() - t0, 3), world_size=dist.world_size)  # fmt: skip
        return res

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
        """snr_pdf.png: the log-SNR density this run's recipe trains on, at the data's std (once)."""
        ctx = self.ctx
        path = ctx.run_dir / "snr_pdf.png"
        if path.exists():
            return
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
