"""``FasterDiTPipeline``: a diffusers pipeline that samples a fasterdit export as fasterdit does.

This file is not imported by fasterdit: ``fasterdit export --format diffusers`` copies it into the export
folder, where diffusers loads it as a custom pipeline, offline and with no fasterdit installed::

    pipe = DiffusionPipeline.from_pretrained(
        DIR, custom_pipeline="pipeline_fasterdit", trust_remote_code=True
    )

Why a pipeline of its own: the stock ``DiTPipeline`` loads the same folder and samples it, but

* it hard-codes the null class 1000, so a model of another class count cannot be guided;
* its transformer embeds the timestep with ``downscale_freq_shift=1`` where DiT used 0 (frequencies
  ``10000^(-i/127)`` instead of ``10000^(-i/128)``): this pipeline sets 0 on every block, which makes the
  transformer compute DiT's function (docs/diffusers.md measures both);
* it drops DiT's learned variance before the scheduler, and its flow scheduler starts at
  ``t = 1 - 1/1000``; here DDPM uses the learned range and a flow model steps fasterdit's Euler grid
  (``FlowMatchEulerDiscreteScheduler`` with ``t_k = shift(1 - k/N)``), from pure noise at ``t = 1``;
* it does not crop the decoded images back to the dataset's size (``crop``: MNIST's 28 of the
  autoencoder's 32).

Guidance is ``uncond + s·(cond − uncond)`` on the first ``guide_channels`` channels (default: all
prediction channels, as fasterdit samples its own runs), the learned-variance channels taken from the
conditional half; ``guidance_scale == 1`` runs the conditional model alone.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor


class FasterDiTPipeline(DiffusionPipeline):
    """DiT sampling with fasterdit's conventions (see the module docstring).

    Args:
        transformer, vae, scheduler: the export's components; the scheduler says which sampler runs:
            a flow scheduler (``use_flow_sigmas``/``FlowMatchEulerDiscreteScheduler``) steps Euler on the
            flow-linear path, a ``DDPMScheduler`` steps DDPM (learned range when the transformer
            predicts a variance).
        num_classes: the model's class count; its null (guidance) label is ``num_classes``.
        crop: side of the images the autoencoder saw padded (decoded images are centre-cropped to it).
        guide_channels: guide only the first channels (3 reproduces the official DiT sampler).
        default_steps, default_guidance_scale: the run's own sampling defaults.
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: DPMSolverMultistepScheduler | DDPMScheduler | FlowMatchEulerDiscreteScheduler,
        num_classes: int = 1000,
        crop: int | None = None,
        guide_channels: int | None = None,
        default_steps: int = 250,
        default_guidance_scale: float = 1.0,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        self.register_to_config(
            num_classes=num_classes, crop=crop, guide_channels=guide_channels, default_steps=default_steps,
            default_guidance_scale=default_guidance_scale,
        )  # fmt: skip
        for block in transformer.transformer_blocks:  # DiT's timestep frequencies, 10000^(-i/128)
            block.norm1.emb.time_proj.downscale_freq_shift = 0

    # --- the sampler --------------------------------------------------------------------------------
    def _is_flow(self) -> bool:
        cfg = self.scheduler.config
        return isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler) or bool(
            cfg.get("use_flow_sigmas", False)
        )

    def _stepper(self, steps: int, device: torch.device):
        """The scheduler that walks the run's grid, with its timesteps set."""
        cfg = self.scheduler.config
        if self._is_flow():
            shift = float(cfg.get("flow_shift", cfg.get("shift", 1.0)))
            sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=shift)
            sched.set_timesteps(
                sigmas=[1.0 - k / steps for k in range(steps)], device=device
            )  # shifted inside
            return sched
        if not isinstance(self.scheduler, DDPMScheduler):
            raise ValueError(f"FasterDiTPipeline samples DDPM or flow schedulers, not {type(self.scheduler)}")
        learned = self.transformer.config.out_channels == 2 * self.transformer.config.in_channels
        sched = DDPMScheduler.from_config(
            cfg, variance_type="learned_range" if learned else cfg.variance_type
        )
        sched.set_timesteps(steps, device=device)
        return sched

    def _predict(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """The (guided) prediction at ``x``: all output channels, guided on the first ``guide_channels``."""
        n, c = x.shape[0], self.transformer.config.in_channels
        t = t.expand(n) if t.ndim == 0 else t
        if scale == 1.0:
            return self.transformer(x, timestep=t, class_labels=labels).sample
        null = torch.full_like(labels, self.config.num_classes)
        both = torch.cat([labels, null])
        out = self.transformer(torch.cat([x, x]), timestep=torch.cat([t, t]), class_labels=both).sample
        cond, uncond = out.chunk(2)
        g = self.config.guide_channels or c
        guided = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])
        return torch.cat([guided, cond[:, g:]], dim=1)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per label (``class_labels``; None: one unconditional sample per ``latents``
        row, or one). ``latents``: the starting noise (default: drawn from ``generator``).
        ``output_type``: ``pil``, ``np``, ``pt`` (images in [0, 1]) or ``latent`` (before decoding)."""
        device = self._execution_device
        steps = int(num_inference_steps or self.config.default_steps)
        scale = float(self.config.default_guidance_scale if guidance_scale is None else guidance_scale)
        cfg = self.transformer.config
        if class_labels is None:
            n = 1 if latents is None else latents.shape[0]
            labels = torch.full((n,), self.config.num_classes, dtype=torch.long, device=device)
            scale = 1.0
        else:
            labels = torch.as_tensor(class_labels, device=device).reshape(-1).long()
        if latents is None:
            shape = (labels.shape[0], cfg.in_channels, cfg.sample_size, cfg.sample_size)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        x = latents.to(device=device, dtype=self.transformer.dtype)
        sched = self._stepper(steps, device)
        flow = self._is_flow()
        for t in self.progress_bar(sched.timesteps):
            out = self._predict(x, t.to(device), labels, scale)
            if flow or out.shape[1] == cfg.in_channels or sched.config.variance_type == "learned_range":
                model_output = out
            else:
                model_output = out[:, : cfg.in_channels]
            x = sched.step(model_output, t, x, generator=generator).prev_sample
        if output_type == "latent":
            images = x
        else:
            images = self._decode(x)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1], cropped to ``crop`` (the VAE folds in the run's data scaling)."""
        vcfg = self.vae.config
        z = latents / vcfg.scaling_factor + (vcfg.shift_factor or 0.0)
        images = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        crop = self.config.crop
        if crop is not None and crop < images.shape[-1]:
            top = (images.shape[-2] - crop) // 2
            left = (images.shape[-1] - crop) // 2
            images = images[..., top : top + crop, left : left + crop]
        return (images.clamp(-1.0, 1.0) + 1.0) / 2.0
