"""The built pieces of a run: device settings, the DiT, its EMA, the optimizer, DDP and the loss.

Why one function builds them all (:func:`build_parts`): the order is part of the run's definition -- the
model is initialised from a seeded global RNG right after the data is placed, and every rank builds the
same weights -- so it is written once, in the order it happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fasterdit.data.source import EmbeddedSource
from fasterdit.diffusion.losses import DiffusionLoss
from fasterdit.diffusion.recipe import Recipe
from fasterdit.errors import ConfigError
from fasterdit.models.dit import DiT
from fasterdit.run.config import OptimConfig, TrainConfig
from fasterdit.train.align import AlignParts, build_alignment, stored_features
from fasterdit.train.build import build_model
from fasterdit.train.data_order import INIT_TAG, IndexStream, derive_seed, rank_slice
from fasterdit.train.ema import EMA
from fasterdit.train.prefetch import RankBatches
from fasterdit.train.state import RunContext

__all__ = ["LossTerms", "TrainParts", "build_parts"]

#: one micro-batch's loss terms at given draws: (x, y, t, noise, drop mask, REPA features or None, stage)
#: -> {"loss": ..., terms}
LossTerms = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TrainParts:
    """Everything :func:`build_parts` made; the objects are mutable, the set of them is not."""

    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast, or None for fp32
    stream: IndexStream  # the seeded epoch-permutation index stream
    #: this rank's batches of a memory-mapped set (read ahead with ``data.prefetch``); None for an embedded
    #: set, which lives on the device (a batch is one index_select)
    batches: RankBatches | None
    model: DiT  # the raw model (what is checkpointed)
    ema: EMA
    params: list[torch.nn.Parameter]
    opt: torch.optim.AdamW
    fused: bool  # fused AdamW: the non-finite skip happens on the device (``found_inf``)
    ddp: DDP | None  # the DDP wrapper (None on one process): its no_sync() skips all but the last all-reduce
    loss_terms: LossTerms  # eager: the function ``train.compile`` compiles
    step_loss: LossTerms  # what the step calls: ``loss_terms`` compiled, or ``loss_terms`` itself
    gen: torch.Generator  # the step's generator, reseeded from (seed, step) every step
    stop_flag: torch.Tensor  # the stop flag's device buffer, all-reduced with the step's stats
    #: the recipe in force in each stage of the step schedule (``recipe.stages``; one entry without stages),
    #: built once here so that the step indexes it instead of rebuilding or re-keying a recipe per step
    stage_recipes: tuple[Recipe, ...]
    align: AlignParts | None = None  # REPA's projector, hook and encoder, when a stage of the recipe aligns

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` of the DiT (and the projector) on every micro-batch but the ``last``."""
        stack = contextlib.ExitStack()
        if not last:
            for wrapper in (self.ddp, self.align.ddp if self.align is not None else None):
                if wrapper is not None:
                    stack.enter_context(wrapper.no_sync())
        return stack

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def data_on_device(self) -> bool:
        return self.batches is None

    def close(self) -> None:
        """End the batch-reading thread, if any (the trainer calls it however the run ends)."""
        if self.batches is not None:
            self.batches.close()

    @property
    def compiled(self) -> bool:
        return self.step_loss is not self.loss_terms

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def configure_process(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Threads, TF32 and the autocast dtype; set both ways, so no process-wide switch leaks from an
    earlier run in the same process."""
    if train.threads:
        torch.set_num_threads(train.threads)
    is_cuda = device.type == "cuda"
    if is_cuda:
        # TF32 tensor cores for the fp32 matmuls left outside autocast
        torch.set_float32_matmul_precision("high" if train.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = bool(train.tf32)
    prec = train.precision
    return torch.bfloat16 if (prec == "bf16" or (prec == "auto" and is_cuda)) else None


def build_optimizer(o: OptimConfig, params: list[torch.nn.Parameter], device: torch.device):
    """AdamW, fused where this build has it (``optim.fused: null``) or where asked; (optimizer, fused)."""
    fused = o.fused
    if fused is None:
        fused = fused_supported(device)
    fused = bool(fused)
    try:
        opt = torch.optim.AdamW(
            params,
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=fused or None,
        )
    except (RuntimeError, TypeError) as err:
        if o.fused:
            raise ConfigError("optim.fused", f"fused AdamW is not available here ({err})") from None
        fused = False
        opt = torch.optim.AdamW(
            params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
        )
    return opt, fused


def fused_supported(device: torch.device) -> bool:
    """Fused AdamW exists for CUDA, and for CPU in recent torch builds: probe once."""
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([p], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def build_parts(ctx: RunContext) -> TrainParts:
    """Build the run's pieces on ``ctx.dist.device``, in the order that defines the run."""
    cfg, d, source = ctx.cfg, ctx.dist, ctx.source
    dev = d.device
    amp_dtype = configure_process(cfg.train, dev)
    is_cuda = dev.type == "cuda"

    # data: embedded sets live on the device (a batch is one index_select); prepared sets stay mapped
    data_on_device = isinstance(source, EmbeddedSource)
    if data_on_device:
        source.images = source.images.to(dev)
        source.labels = source.labels.to(dev)
    stream = IndexStream(len(source), cfg.seed, dev if data_on_device else "cpu")
    batches = None
    if not data_on_device:
        B = cfg.train.batch_size
        batches = RankBatches(
            source,
            stream,
            seed=cfg.seed,
            rank=d.rank,
            batch_size=B,
            share=rank_slice(B, d.world_size, d.rank),
            device=dev,
            depth=cfg.data.prefetch,
            features=ctx.recipe.uses_align and stored_features(source) is not None,
        )

    # model: identical init on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(derive_seed(cfg.seed, INIT_TAG))
    model = build_model(cfg, source, ctx.recipe, "cpu").to(dev)
    model.train()
    # REPA's projector: right after the DiT from the same seeded RNG (the DiT's init does not change)
    align = build_alignment(ctx.recipe, source, model, dev, d.distributed)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    params = [p for p in model.parameters() if p.requires_grad]
    if align is not None:  # one AdamW over both, as REPA's (its projectors are SiT submodules)
        params += list(align.projector.parameters())
    opt, fused = build_optimizer(cfg.optim, params, dev)

    train_model: torch.nn.Module = model
    ddp = None
    if d.distributed:
        ddp = DDP(
            model,
            device_ids=[dev.index] if is_cuda else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
        train_model = ddp
    # one loss per stage of the recipe (its step schedule: recipe.stages), each with its own weights/law
    term = align.term if align is not None else None
    stage_recipes = tuple(ctx.recipe.stage_recipes())
    stage_losses = [DiffusionLoss(r, patch_size=model.patch_size, align=term) for r in stage_recipes]
    # train.compile: on one process the whole loss (noising, DiT, target, MSE, direction cosine) is one
    # graph, so inductor fuses the loss's element-wise work with the model's (measured ~10% faster than
    # compiling the model alone, benchmarks/throughput.py); under DDP the module is compiled, so
    # dynamo's DDP support can split the graph at the gradient buckets.
    if cfg.train.compile and d.distributed:
        train_model = torch.compile(train_model, backend=cfg.train.compile_backend)

    def loss_terms(
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        drop: torch.Tensor | None,
        features: torch.Tensor | None = None,
        stage: int = 0,
    ) -> dict[str, torch.Tensor]:
        """One micro-batch's loss terms at the given draws, under the recipe of stage ``stage``.

        The label-dropout mask reaches the DiT as its ``force_drop_ids`` (drawn for the global batch, see
        :mod:`fasterdit.train.step`), so the model never draws from the global RNG. ``features``: the
        REPA targets (N, T, D) when the stage aligns.
        """
        kwargs = {"force_drop_ids": drop} if drop is not None else None
        return stage_losses[stage](
            train_model, x, y, t=t, noise=noise, model_kwargs=kwargs, features=features
        )

    step_loss: LossTerms = loss_terms
    if cfg.train.compile and not d.distributed:
        step_loss = torch.compile(loss_terms, backend=cfg.train.compile_backend)
        # fill the loss's per-device constants (data scaling, posterior tables) now: filling them inside
        # the first compiled call would fail a guard on the second and compile the step twice
        for loss_fn in stage_losses:
            loss_fn.prepare(torch.zeros(1, source.channels, source.resolution, source.resolution, device=dev))
    return TrainParts(
        device=dev,
        amp_dtype=amp_dtype,
        stream=stream,
        batches=batches,
        model=model,
        ema=ema,
        params=params,
        opt=opt,
        fused=fused,
        ddp=ddp,
        loss_terms=loss_terms,
        step_loss=step_loss,
        gen=torch.Generator(device=dev),
        stop_flag=torch.zeros((), device=dev),
        stage_recipes=stage_recipes,
        align=align,
    )
