"""One optimizer step, as a function of the run's parts and the step number; its stats stay on the device.

How one optimizer step works (the hot path), and why:

1. Indices: the global batch is the next ``batch_size`` positions of a seeded epoch-permutation stream
   (:class:`~fasterdit.train.data_order.IndexStream`); rank ``r`` takes the ``r``-th contiguous share and
   splits it into ``grad_accum`` micro-batches. The data position is ``images_seen``, one integer.
2. Randomness that defines the loss (timesteps, noise, label dropout) is drawn for the **whole global
   batch** on every rank from a generator seeded by (seed, step) and each rank slices out its rows
   (:class:`Draws`). So a sample's t and ε do not depend on how the batch is split: 2 ranks × 32 and 1
   rank × 64 train on identical draws (up to float summation order) and resuming needs no generator state.
3. Forward/backward under bf16 autocast on CUDA (fp32 on CPU); DDP gradient sync only on the last
   micro-step (``no_sync``).
4. Non-finite guard without a host sync: ``ok = isfinite(all-reduced loss) & isfinite(grad norm)`` is a
   device tensor; the fused AdamW kernel takes it as ``found_inf`` and skips the update on the device, and
   the EMA update weight is multiplied by it. The host learns about it one step later
   (:mod:`fasterdit.train.monitor`, the "lagged read"), which is also how per-step losses, the NaN streak
   and, under DDP, a stop request reach the host without stalling the GPU pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fasterdit.data.source import BatchSource
from fasterdit.diffusion.recipe import Recipe
from fasterdit.models.dit import DiT
from fasterdit.run.config import OptimConfig
from fasterdit.runtime.distributed import all_reduce_sum
from fasterdit.train.data_order import STEP_TAG, derive_seed, rank_slice
from fasterdit.train.parts import TrainParts
from fasterdit.train.signals import StopRequest
from fasterdit.train.state import RunContext
from fasterdit.train.step_stats import StatsLayout

__all__ = ["Draws", "LossHook", "QueuedStats", "draw_global", "lr_at", "train_step"]

#: test hook: ``loss_hook(step, terms) -> terms`` may replace a micro-batch's loss terms (e.g. inject a NaN)
LossHook = Callable[[int, dict], dict]


@dataclass(frozen=True)
class Draws:
    """The randomness that defines a step's loss, drawn for the whole global batch (step 2 above)."""

    t: torch.Tensor  # (N,) times in [0, 1]
    noise: torch.Tensor  # (N, C, H, W) ε in diffusion space
    drop: torch.Tensor | None  # (N,) long label-dropout mask (1: the null label); None without dropout

    def rows(self, rows: slice) -> Draws:
        """The draws of a micro-batch's rows of the global batch."""
        return Draws(self.t[rows], self.noise[rows], None if self.drop is None else self.drop[rows])


@dataclass(frozen=True)
class QueuedStats:
    """A step's stats on the device (``StatsLayout.complete``), waiting to be read by the host."""

    step: int  # 0-based index of the step
    position: int  # the data position (images_seen) its batch starts at: what a rollback moves past
    layout: StatsLayout
    values: torch.Tensor


def lr_at(o: OptimConfig, step: int) -> float:
    """The learning rate of 0-based ``step``: a linear warmup over ``warmup_steps``, then constant."""
    w = o.warmup_steps
    return o.lr * min(1.0, (step + 1) / w) if w > 0 else o.lr


def draw_global(
    recipe: Recipe, source: BatchSource, model: DiT, g: torch.Generator, device: torch.device, n: int
) -> Draws:
    """Per-sample randomness of the whole global batch, identical on every rank (in this order: t, noise,
    label-dropout mask, from the step's generator). The dropout mask is the run's only one: the DiT
    applies it as given and never draws its own while training."""
    t = recipe.timestep_sampler_obj.sample(n, generator=g, device=device)
    noise = torch.randn(
        (n, source.channels, source.resolution, source.resolution), generator=g, device=device
    )
    drop = None
    if model.y_embedder is not None and model.y_embedder.dropout_prob > 0:
        u = torch.rand(n, generator=g, device=device)
        drop = (u < model.y_embedder.dropout_prob).long()
    return Draws(t, noise, drop)


def _batch(
    ctx: RunContext, parts: TrainParts, step: int, images_seen: int, share: slice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's share of the batch, on the device, with the stored REPA features when the set has them
    and the run aligns (else None)."""
    if parts.batches is None:  # resident tensors, indices already on the device: one index_select
        x, y = ctx.source.get_batch(parts.stream.take(images_seen, ctx.cfg.train.batch_size)[share])
        return x, y, None
    # memory-mapped shards: read and draw the latents on the CPU (ahead, in a thread, with data.prefetch;
    # train/prefetch.py), then copy from pinned memory without blocking, so the host never waits for the
    # GPU's queue here
    x, y, f = parts.batches.get(step, images_seen)
    dev = parts.device
    f = None if f is None else f.to(dev, non_blocking=True)
    return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), f


def train_step(
    ctx: RunContext,
    parts: TrainParts,
    step: int,
    images_seen: int,
    stop: StopRequest,
    loss_hook: LossHook | None = None,
    lr_scale: float = 1.0,
) -> QueuedStats:
    """Optimizer step ``step`` (0-based) at data position ``images_seen``; the caller advances both.

    ``lr_scale`` multiplies the scheduled lr: the run's product of ``train.rollback_lr_scale`` over its
    rollbacks (1.0, an exact no-op, until one happens).
    """
    cfg, d = ctx.cfg, ctx.dist
    B, W, A = cfg.train.batch_size, d.world_size, cfg.train.grad_accum
    b = B // W // A
    share = rank_slice(B, W, d.rank)

    # the recipe's step schedule (recipe.stages): the timestep law and the loss weights in force now
    stage = ctx.recipe.stage_index(step)
    recipe = parts.stage_recipes[stage]
    parts.gen.manual_seed(derive_seed(cfg.seed, STEP_TAG, step))
    draws = draw_global(recipe, ctx.source, parts.model, parts.gen, parts.device, B)
    x, y, stored = _batch(ctx, parts, step, images_seen, share)
    feats = None
    if parts.align is not None and recipe.align.enabled:  # REPA's targets: stored, or the encoder on x
        with parts.autocast():
            feats = parts.align.features(x, stored)

    lr = lr_at(cfg.optim, step) * lr_scale
    for group in parts.opt.param_groups:
        group["lr"] = lr

    loss_acc: torch.Tensor | None = None
    term_acc: dict[str, torch.Tensor] = {}
    for a in range(A):
        rows = slice(a * b, (a + 1) * b)
        mb = draws.rows(slice(share.start + a * b, share.start + (a + 1) * b))
        with parts.no_sync(last=a == A - 1):
            with parts.autocast():
                f = None if feats is None else feats[rows]
                terms = parts.step_loss(x[rows], y[rows], mb.t, mb.noise, mb.drop, f, stage)
            if loss_hook is not None:
                terms = loss_hook(step, terms)
            loss = terms["loss"]
            (loss / A).backward()
        ld = loss.detach().float()
        loss_acc = ld if loss_acc is None else loss_acc + ld
        for k, v in terms.items():
            if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1:
                vd = v.detach().float().reshape(())
                term_acc[k] = vd if k not in term_acc else term_acc[k] + vd
    assert loss_acc is not None
    layout = StatsLayout(tuple(sorted(term_acc)))

    # grad norm (clipping if asked); on DDP grads are already averaged, so it agrees across ranks
    clip = cfg.optim.grad_clip
    gnorm = (
        torch.nn.utils.clip_grad_norm_(parts.params, clip, foreach=True)
        if clip > 0
        else _total_norm(parts.params)
    )

    parts.stop_flag.fill_(1.0 if stop.signal else 0.0)  # read late: a signal during this step counts
    stats = layout.reduced_part(
        loss_acc / A, {k: v / A for k, v in term_acc.items()}, parts.stop_flag.clone()
    )
    if d.distributed:
        all_reduce_sum(stats)
        stats[:-1] /= W
    ok = torch.isfinite(stats[0]) & torch.isfinite(gnorm)
    _apply_update(parts, ok)
    return QueuedStats(step, images_seen, layout, layout.complete(stats, ok, gnorm))


def _apply_update(parts: TrainParts, ok: torch.Tensor) -> None:
    """The AdamW and EMA updates, skipped when ``ok`` is false: on the device (fused), else on the host."""
    opt, ema = parts.opt, parts.ema
    if parts.fused:
        opt.grad_scale = None
        opt.found_inf = (~ok).float()
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
        ema.update(ok=ok)
    elif bool(ok):  # host sync: only on the non-fused path (CPU: free)
        opt.step()
        ema.update()
    else:
        ema.num_updates += 1
    opt.zero_grad(set_to_none=True)


def _total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads, foreach=True)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack(norms))
