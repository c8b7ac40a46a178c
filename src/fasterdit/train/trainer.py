"""The training loop: recipe + DiT + data -> a run directory, single process or under torchrun.

How one optimizer step works (the hot path), and why:

1. Indices: the global batch is the next ``batch_size`` positions of a seeded epoch-permutation stream
   (:class:`~fasterdit.train.data_source.IndexStream`); rank ``r`` takes the ``r``-th contiguous share and
   splits it into ``grad_accum`` micro-batches. The data position is ``images_seen``, one integer.
2. Randomness that defines the loss (timesteps, noise, label dropout) is drawn for the **whole global
   batch** on every rank from a generator seeded by (seed, step) and each rank slices out its rows. So a
   sample's t and ε do not depend on how the batch is split: 2 ranks × 32 and 1 rank × 64 train on
   identical draws (up to float summation order) and resuming needs no generator state at all.
3. Forward/backward under bf16 autocast on CUDA (fp32 on CPU); DDP gradient sync only on the last
   micro-step (``no_sync``).
4. Non-finite guard without a host sync: ``ok = isfinite(all-reduced loss) & isfinite(grad norm)`` is a
   device tensor; the fused AdamW kernel takes it as ``found_inf`` and skips the update on the device, and
   the EMA update weight is multiplied by it. The host learns about it one step later through a
   non-blocking copy (the "lagged read"), which is also how per-step losses, the NaN streak and, under
   DDP, a stop request reach the host without stalling the GPU pipeline.
5. Logging, sample grids, evaluation and checkpoints happen at their intervals only.

Reliability (docs/training.md, "Guarantees"): rank 0 holds an exclusive lock on the run directory for
the whole job; a checkpoint is written only from finite weights (one fused check per save) and never
prunes during a non-finite streak; resume verifies checksums and falls back to the previous intact
checkpoint; a stop signal is honoured within one step, a grid's sampling step or an evaluation batch.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from fasterdit.data.vae import latent_decoder
from fasterdit.diffusion.losses import DiffusionLoss
from fasterdit.diffusion.sampling import sample
from fasterdit.diffusion.snr import save_snr_plot
from fasterdit.errors import ConfigError, UserError
from fasterdit.eval import evaluate, evaluate_samples
from fasterdit.eval.sample_job import SampleSettings, sample_shared
from fasterdit.train import checkpoint as ckpt_mod
from fasterdit.train.build import build_model, check_config, data_description, model_kwargs
from fasterdit.train.config import RunConfig, config_from_dict
from fasterdit.train.data_source import (
    LATENT_TAG,
    SAMPLE_TAG,
    STEP_TAG,
    EmbeddedSource,
    IndexStream,
    derive_seed,
    rank_slice,
)
from fasterdit.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
)
from fasterdit.train.ema import EMA
from fasterdit.train.logging import MetricsLogger, Progress, plot_eval_curve, plot_loss_curve
from fasterdit.train.preflight import check_memory, recipe_differences
from fasterdit.train.runlock import RunDirLocked, RunLock
from fasterdit.train.step_stats import StatsLayout, StepStats
from fasterdit.viz import save_image_grid

__all__ = ["TrainResult", "Trainer", "TrainingAborted", "TrainingInterrupted", "train"]

INIT_TAG = 5
EVAL_TAG = 6


class TrainingAborted(UserError):
    """Training stopped on purpose (e.g. a stream of non-finite losses); the message says what is intact."""


class TrainingInterrupted(UserError):
    """A second Ctrl-C stopped the run at once, without a checkpoint; the message says what is on disk."""


class _StopRequested(Exception):
    """Raised inside a sample grid or an evaluation when a stop signal arrives (see ``_interruptible``)."""


#: what a damaged state.pt's RNG or optimizer entries raise when applied (e.g. random.setstate)
_STATE_APPLY_ERRORS = (OverflowError, ValueError, TypeError, KeyError, IndexError, RuntimeError)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_seen: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # per-step global mean loss of this process's steps
    skipped_steps: int = 0
    stopped_by: str | None = None  # a signal name when interrupted
    samples_per_sec: float = float("nan")  # steady-state training throughput (excludes sampling/ckpt)
    wall_time: float = 0.0


@dataclass(frozen=True)
class Draws:
    """The randomness that defines a step's loss, drawn for the whole global batch (step 2 above)."""

    t: torch.Tensor  # (N,) times in [0, 1]
    noise: torch.Tensor  # (N, C, H, W) ε in diffusion space
    drop: torch.Tensor | None  # (N,) long label-dropout mask (1: the null label); None without dropout

    def rows(self, rows: slice) -> Draws:
        """The draws of a micro-batch's rows of the global batch."""
        return Draws(self.t[rows], self.noise[rows], None if self.drop is None else self.drop[rows])


# ----------------------------------------------------------------------------------------------------
# RNG state helpers
# ----------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    np_state = np.random.get_state()
    st["numpy"] = {
        "keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "pos": int(np_state[2]),
        "has_gauss": int(np_state[3]),
        "gauss": float(np_state[4]),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))
    n = st["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------


class Trainer:
    """Train one run directory. ``Trainer(cfg, run_dir).run()``; resumes automatically.

    Test hooks (not part of the CLI): ``loss_hook(step, terms) -> terms`` may replace the loss terms
    (e.g. inject a NaN); ``after_step_hook(trainer, step)`` runs after every optimizer step.
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
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist_info or init_distributed(cfg.train.device)
        # ---- every config check before any work (raises ConfigError/DataError naming the field)
        self.recipe, self.source = check_config(cfg, self.dist.world_size)
        check_memory(cfg, model_kwargs(cfg, self.source, self.recipe), self.dist)
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.step = 0
        self.last_ckpt: Path | None = None
        self.show_progress = cfg.log.progress if show_progress is None else show_progress
        self.install_signal_handlers = install_signal_handlers
        self.loss_hook: Callable[[int, dict], dict] | None = None
        self.after_step_hook: Callable[[Trainer, int], None] | None = None
        self._stop_signal: str | None = None
        self.progress: Progress | None = None  # the progress bar, while run() is training
        self._built = False

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, d = self.cfg, self.dist
        dev = d.device
        self.device = dev
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.is_cuda = dev.type == "cuda"
        if self.is_cuda:  # set both ways: a process-wide switch must not leak from an earlier run
            # TF32 tensor cores for the fp32 matmuls left outside autocast
            torch.set_float32_matmul_precision("high" if cfg.train.tf32 else "highest")
            torch.backends.cudnn.allow_tf32 = bool(cfg.train.tf32)
        prec = cfg.train.precision
        self.amp_dtype = torch.bfloat16 if (prec == "bf16" or (prec == "auto" and self.is_cuda)) else None

        # data: embedded sets live on the device (a batch is one index_select); prepared sets stay mapped
        self._data_on_device = isinstance(self.source, EmbeddedSource)
        if self._data_on_device:
            self.source.images = self.source.images.to(dev)
            self.source.labels = self.source.labels.to(dev)
        self.stream = IndexStream(len(self.source), cfg.seed, dev if self._data_on_device else "cpu")

        # model: identical init on every rank (DDP also broadcasts rank 0's weights)
        torch.manual_seed(derive_seed(cfg.seed, INIT_TAG))
        model = build_model(cfg, self.source, self.recipe, "cpu").to(dev)
        model.train()
        self.model = model
        self.kwargs = model_kwargs(cfg, self.source, self.recipe)
        self.ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)

        o = cfg.optim
        fused = o.fused
        if fused is None:
            fused = _fused_supported(dev)
        self.fused = bool(fused)
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        try:
            self.opt = torch.optim.AdamW(
                params,
                lr=o.lr,
                betas=(o.beta1, o.beta2),
                eps=o.eps,
                weight_decay=o.weight_decay,
                fused=self.fused or None,
            )
        except (RuntimeError, TypeError) as err:
            if o.fused:
                raise ConfigError("optim.fused", f"fused AdamW is not available here ({err})") from None
            self.fused = False
            self.opt = torch.optim.AdamW(
                params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
            )

        train_model: torch.nn.Module = model
        # the DDP wrapper (None on one process): its no_sync() skips the all-reduce of all but the
        # last gradient-accumulation micro-batch
        self.ddp: DDP | None = None
        if d.distributed:
            self.ddp = DDP(
                model,
                device_ids=[dev.index] if self.is_cuda else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
            train_model = self.ddp
        self.loss_fn = DiffusionLoss(self.recipe, patch_size=model.patch_size)
        # train.compile: on one process the whole loss (noising, DiT, target, MSE, direction cosine) is
        # one graph, so inductor fuses the loss's element-wise work with the model's (measured ~10% faster
        # than compiling the model alone, benchmarks/throughput.py); under DDP the module is compiled, so
        # dynamo's DDP support can split the graph at the gradient buckets.
        self._compiled_loss: Callable[..., dict[str, torch.Tensor]] | None = None
        if cfg.train.compile and not d.distributed:
            self._compiled_loss = torch.compile(self._loss_terms, backend=cfg.train.compile_backend)
            # fill the data scaling's per-device constants now: filling them inside the first compiled
            # call would fail a guard on the second and compile the step twice
            src = self.source
            self.loss_fn.recipe.scaling.forward(
                torch.zeros(1, src.channels, src.resolution, src.resolution, device=dev)
            )
        elif cfg.train.compile:
            train_model = torch.compile(train_model, backend=cfg.train.compile_backend)
        self.train_model = train_model

        self.step = 0
        self.images_seen = 0
        self.skipped_total = 0
        self.streak = 0
        self.streak_start = -1
        self.last_ckpt: Path | None = None
        self.gen = torch.Generator(device=dev)
        self._stop_dev = torch.zeros((), device=dev)  # the stop flag, all-reduced with the step's stats
        self._built = True

    def _loss_terms(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        drop: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """One micro-batch's loss terms at the given draws: the function ``train.compile`` compiles.

        The label-dropout mask reaches the DiT as its ``force_drop_ids`` (drawn for the global batch, see
        the module docstring), so the model never draws from the global RNG.
        """
        kwargs = {"force_drop_ids": drop} if drop is not None else None
        return self.loss_fn(self.train_model, x, y, t=t, noise=noise, model_kwargs=kwargs)

    # ------------------------------------------------------------------ resume
    def _try_resume(self) -> Path | None:
        """Resume from the best intact checkpoint; a damaged one is moved aside with a warning.

        Rank 0 verifies the checksums (reading every byte once), every rank then reads the files, and
        the ranks agree on the outcome, so a DDP job resumes from the same checkpoint on every rank.
        """
        if not self.resume:
            return None
        main = self.dist.is_main
        names = broadcast_object([str(p) for p in ckpt_mod.candidates(self.run_dir)] if main else None)
        errors = []
        for name in names:
            path = Path(name)
            err = broadcast_object(_verify_error(path) if main else None)
            corrupt = err is not None
            if err is None:
                err = next((e for e in gather_objects(self._load_checkpoint(path)) if e is not None), None)
            if err is None:
                self.last_ckpt = path
                return path
            errors.append(err)
            # a file that fails its checksum is moved aside; one that verifies but does not load is left
            moved = ckpt_mod.quarantine(path) if main and corrupt else None
            self._say(
                f"warning: checkpoint {path} is damaged ({err}); "
                + (f"moved it to {moved.name}; " if moved else "")
                + "falling back to the previous checkpoint"
            )
        if errors:
            raise ckpt_mod.CheckpointError(
                f"no intact checkpoint in {self.run_dir / ckpt_mod.CKPT_SUBDIR} ({'; '.join(errors)}); "
                "nothing was trained. Restore a checkpoint or start a new --run-dir"
            )
        return None

    def _load_checkpoint(self, path: Path) -> str | None:
        """Load a checkpoint into this trainer; the reason when its files cannot be read, else None.

        A config that does not match the run raises (ConfigError): that is the user's choice to fix,
        not a damaged file to fall back from.
        """
        try:
            meta = ckpt_mod.read_meta(path)
            self._check_compatible(meta)
            model_sd = ckpt_mod.load_tensors(path, "model", device=self.device)
            ema_sd = ckpt_mod.load_tensors(path, "ema", device=self.device)
            state = ckpt_mod.load_train_state(path, map_location="cpu")
            self._apply_state(path, model_sd, ema_sd, state)
        except ckpt_mod.CheckpointError as err:
            return str(err)
        return None

    def _apply_state(self, path: Path, model_sd: dict, ema_sd: dict, state: dict[str, Any]) -> None:
        """Put a checkpoint's weights, optimizer, counters and RNG states in place.

        Every field is overwritten, so a later candidate replaces whatever a failed one left behind.
        """
        self.model.load_state_dict(model_sd)
        self.ema.load_state_dict(ema_sd)
        try:
            self.opt.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self.images_seen = int(state["images_seen"])
            self.skipped_total = int(state.get("skipped_total", 0))
            self.ema.num_updates = int(state.get("ema_updates", self.step))
            rng = state.get("rng", [])
            if len(rng) == self.dist.world_size:
                _set_rng_state(rng[self.dist.rank])
            elif rng:
                _set_rng_state(rng[0])
        except _STATE_APPLY_ERRORS as err:
            raise ckpt_mod.CheckpointError(
                f"{path / 'state.pt'}: invalid training state ({type(err).__name__}: {err})"
            ) from err
        for name, st in state.get("generators", {}).items():
            if name == "step" and st is not None:
                with contextlib.suppress(RuntimeError):  # another device type: reseeded every step anyway
                    self.gen.set_state(st)
        data = state.get("data", {})
        if int(data.get("size", len(self.source))) != len(self.source):
            self._say(
                f"warning: the dataset has {len(self.source)} items but the checkpoint was trained on "
                f"{data.get('size')}; the data order will differ from an uninterrupted run"
            )

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        old = meta.get("config", {})
        for sec, key in (
            ("model", "name"),
            ("model", "learn_sigma"),
            ("model", "class_dropout_prob"),
            ("data", "source"),
        ):
            a, b = old.get(sec, {}).get(key), getattr(getattr(self.cfg, sec), key)
            if key == "learn_sigma":
                a, b = meta.get("model", {}).get("learn_sigma"), self.kwargs["learn_sigma"]
            if a is not None and a != b:
                raise ConfigError(
                    f"{sec}.{key}",
                    f"the run in {self.run_dir} was trained with {a!r}, this config "
                    f"has {b!r}; use a new --run-dir or the run's own config",
                )
        if self.allow_config_change:
            return
        # the seed and the recipe define the run's draws and its objective: changing them on resume is
        # a different experiment, so it takes an explicit --allow-config-change
        seed = old.get("seed")
        if seed is not None and seed != self.cfg.seed:
            raise ConfigError(
                "seed",
                f"the run in {self.run_dir} was trained with seed {seed}, this config has {self.cfg.seed}; "
                "use the run's seed, a new --run-dir, or --allow-config-change to resume anyway",
            )
        diffs = recipe_differences(meta.get("recipe"), self.recipe)
        if diffs:
            raise ConfigError(
                "recipe",
                f"the run in {self.run_dir} was trained with a different recipe ({'; '.join(diffs[:5])}); "
                "use the run's recipe, a new --run-dir, or --allow-config-change to resume anyway",
            )

    # ------------------------------------------------------------------ helpers
    def lr_at(self, step: int) -> float:
        w = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * min(1.0, (step + 1) / w) if w > 0 else self.cfg.optim.lr

    def _say(self, msg: str) -> None:
        if self.dist.is_main:
            if self.progress is not None:
                self.progress.write(msg)
            else:
                print(msg, flush=True)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _global_draws(self, n: int) -> Draws:
        """Per-sample randomness of the whole global batch, identical on every rank (in this order:
        t, noise, label-dropout mask, from the step's generator)."""
        g = self.gen
        src = self.source
        t = self.recipe.timestep_sampler_obj.sample(n, generator=g, device=self.device)
        shape = (n, src.channels, src.resolution, src.resolution)
        noise = torch.randn(shape, generator=g, device=self.device)
        drop = None
        if self.model.y_embedder is not None and self.model.y_embedder.dropout_prob > 0:
            u = torch.rand(n, generator=g, device=self.device)
            drop = (u < self.model.y_embedder.dropout_prob).long()
        return Draws(t, noise, drop)

    # ------------------------------------------------------------------ one step
    def _train_step(self, step: int) -> tuple[StatsLayout, torch.Tensor]:
        """One optimizer step; its stats stay on the device (read a step later, see ``_post``)."""
        cfg, d = self.cfg, self.dist
        B, W, A = cfg.train.batch_size, d.world_size, cfg.train.grad_accum
        per_rank = B // W
        b = per_rank // A
        share = rank_slice(B, W, d.rank)

        gidx = self.stream.take(self.images_seen, B)
        ridx = gidx[share]
        self.gen.manual_seed(derive_seed(cfg.seed, STEP_TAG, step))
        draws = self._global_draws(B)
        if self._data_on_device:  # resident tensors, indices already on the device: one index_select
            x, y = self.source.get_batch(ridx)
        else:
            # memory-mapped shards: read and draw the latents on the CPU (a CPU generator), then copy from
            # pinned memory without blocking, so the host never waits for the GPU's queue here
            gdata = torch.Generator().manual_seed(derive_seed(cfg.seed, LATENT_TAG, step, d.rank))
            x, y = self.source.get_batch(ridx, gdata)
            if self.is_cuda:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

        lr = self.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr

        loss_acc: torch.Tensor | None = None
        term_acc: dict[str, torch.Tensor] = {}
        for a in range(A):
            rows = slice(a * b, (a + 1) * b)
            grows = slice(share.start + a * b, share.start + (a + 1) * b)
            sync_ctx = (
                self.ddp.no_sync() if (self.ddp is not None and a < A - 1) else contextlib.nullcontext()
            )
            mb = draws.rows(grows)
            loss_terms = self._compiled_loss or self._loss_terms
            with sync_ctx:
                with self._autocast():
                    terms = loss_terms(x[rows], y[rows], mb.t, mb.noise, mb.drop)
                if self.loss_hook is not None:
                    terms = self.loss_hook(step, terms)
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
        if clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            gnorm = _total_norm(self.params)

        stats = layout.reduced_part(
            loss_acc / A, {k: v / A for k, v in term_acc.items()}, self._stop_flag_tensor()
        )
        if d.distributed:
            all_reduce_sum(stats)
            stats[:-1] /= W
        ok = torch.isfinite(stats[0]) & torch.isfinite(gnorm)

        if self.fused:
            self.opt.grad_scale = None
            self.opt.found_inf = (~ok).float()
            try:
                self.opt.step()
            finally:
                del self.opt.grad_scale, self.opt.found_inf
            self.ema.update(ok=ok)
        elif bool(ok):  # host sync: only on the non-fused path (CPU: free)
            self.opt.step()
            self.ema.update()
        else:
            self.ema.num_updates += 1
        self.opt.zero_grad(set_to_none=True)
        self.images_seen += B
        return layout, layout.complete(stats, ok, gnorm)

    def _stop_flag_tensor(self) -> torch.Tensor:
        self._stop_dev.fill_(1.0 if self._stop_signal else 0.0)
        return self._stop_dev.clone()

    # ------------------------------------------------------------------ lagged host read
    def _post(self, step: int, layout: StatsLayout, vec: torch.Tensor) -> None:
        """Queue this step's stats for the host without waiting (CUDA: pinned buffer + event)."""
        if self.is_cuda:
            buf = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            buf.copy_(vec, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            self._pending.append((step, layout, buf, ev))
        else:
            self._pending.append((step, layout, vec, None))

    def _drain(self, keep: int = 0) -> None:
        """Consume queued stats, leaving the newest ``keep`` (1 = the lagged read, 0 = a full flush)."""
        while len(self._pending) > keep:
            step, layout, buf, ev = self._pending.pop(0)
            if ev is not None:
                ev.synchronize()
            self._consume(step, layout.read(buf.tolist()))

    def _consume(self, step: int, st: StepStats) -> None:
        loss, gnorm = st.loss, st.grad_norm
        self.losses.append(loss)
        if st.stop and self._agreed_stop is None:
            self._agreed_stop = step + 1  # every rank sees the same all-reduced flag at the same step
        if st.ok:
            self.streak = 0
            self._int_loss += loss
            self._int_n += 1
            for k, v in st.terms.items():
                self._int_terms[k] = self._int_terms.get(k, 0.0) + v
            self._int_gnorm = max(self._int_gnorm, gnorm)
        else:
            self.skipped_total += 1
            self._int_skipped += 1
            if self.streak == 0:
                self.streak_start = step
            self.streak += 1
            if self.dist.is_main:
                self._say(
                    f"step {step + 1}: non-finite loss or gradient (loss={loss}, grad norm={gnorm}); "
                    f"step skipped ({self.skipped_total} so far)"
                )
            if self.streak >= self.cfg.train.max_nonfinite:
                self._abort_nonfinite(step)

    def _last_good(self) -> str:
        """What the abort messages say about the last checkpoint: "intact" only after checking it."""
        last = self.last_ckpt
        if last is None:
            return "no checkpoint had been written yet"
        step = ckpt_mod.checkpoint_step(last)
        err = _verify_error(last)
        if err is None:
            try:
                bad = ckpt_mod.nonfinite_names(
                    {**ckpt_mod.load_tensors(last, "model"), **ckpt_mod.load_tensors(last, "ema")}
                )
            except ckpt_mod.CheckpointError as e:
                err = str(e)
            else:
                err = f"it holds non-finite weights ({', '.join(bad[:3])})" if bad else None
        if err is not None:
            return f"the last checkpoint {last} (step {step}) is NOT intact: {err}"
        return f"the last good checkpoint is {last} (step {step}): intact (checksums ok, weights finite)"

    def _abort_nonfinite(self, step: int) -> None:
        kept = self._last_good()
        raise TrainingAborted(
            f"training aborted at step {step + 1}: the loss or gradient was non-finite for "
            f"{self.streak} consecutive steps (steps {self.streak_start + 1}..{step + 1}; "
            f"{self.skipped_total} skipped in all); no weights were updated by them. {kept}. "
            f"Lower optim.lr, set optim.grad_clip, or check the data; then resume with the same command."
        )

    # ------------------------------------------------------------------ outputs
    def _write_log(self, step: int, dt: float, images: int) -> None:
        n = max(self._int_n, 1)
        vals: dict[str, Any] = {"loss": self._int_loss / n if self._int_n else float("nan")}
        for k, v in self._int_terms.items():
            vals[f"loss_{k}" if not k.startswith("loss") else k] = v / n
        sps = images / dt if dt > 0 else float("nan")
        vals.update(
            lr=self.lr_at(step - 1),
            grad_norm_max=self._int_gnorm,
            samples_per_sec=sps,
            images_seen=self.images_seen,
            skipped=self._int_skipped,
            skipped_total=self.skipped_total,
        )
        self.logger.log("train", step, vals)
        if self.progress is not None:
            self.progress.set(
                loss=f"{vals['loss']:.4f}", img_s=f"{sps:.0f}", kimg=f"{self.images_seen / 1000:.1f}"
            )
        self._int_loss, self._int_n, self._int_terms, self._int_gnorm, self._int_skipped = 0.0, 0, {}, 0.0, 0

    def _sample_setup(self) -> None:
        s, src = self.cfg.sample, self.source
        classes = s.classes if s.classes else list(range(min(src.num_classes, 10)))
        if src.num_classes <= 0:
            classes = [0]
        self.grid_classes = classes
        labels = torch.tensor([c for c in classes for _ in range(s.per_class)], dtype=torch.long)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, SAMPLE_TAG))
        shape = (len(labels), src.channels, src.resolution, src.resolution)
        self.grid_noise = torch.randn(shape, generator=g).to(self.device)
        self.grid_labels = labels.to(self.device) if src.num_classes > 0 else None
        self._vae = None

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path | None:
        """EMA samples from the fixed noise and labels: one row per class."""
        s = self.cfg.sample
        g = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, SAMPLE_TAG, 1))
        with self._autocast():
            res = sample(
                self.ema.model,
                self.recipe,
                self.grid_noise.clone(),
                y=self.grid_labels,
                sampler=s.sampler or self.recipe.sampler.name,
                steps=s.steps,
                cfg_scale=s.cfg_scale,
                generator=g,
            )
        x = res.x.float()
        if self.source.is_latent:
            x = self._decode(x)
            if x is None:
                return None
        scale = max(1, 128 // max(1, self.source.resolution)) if not self.source.is_latent else 1
        return save_image_grid(x.cpu(), path, nrow=s.per_class, scale=min(scale, 4))

    def _decode(self, z: torch.Tensor) -> torch.Tensor | None:
        """Latent samples -> images with the data's VAE (cropped back to the embedded digits' size when
        the autoencoder saw them padded); None when the VAE cannot be loaded (no grids, training goes on)."""
        if self._vae is False:
            return None
        if self._vae is None:
            origin = self.source.origin
            try:
                self._vae = latent_decoder(
                    self.source.vae, self.device, crop=origin.resolution if origin else None, batch_size=16
                )
            except UserError as err:  # no diffusers / offline: training goes on without pictures
                vae = self.source.vae
                self._say(f"warning: cannot decode latents with VAE {vae!r} ({err}); no sample grids")
                self._vae = False
                return None
        return self._vae(z)

    def _evaluate(self, step: int) -> None:
        e, s = self.cfg.eval, self.cfg.sample
        t0 = time.time()
        assert self.source.origin is not None  # check_config refuses eval.every without one
        kwargs = dict(
            dataset=self.source.origin.dataset,
            num_samples=e.num_samples,
            sampler=e.sampler or s.sampler or self.recipe.sampler.name,
            steps=e.steps or s.steps,
            cfg_scale=s.cfg_scale if e.cfg_scale is None else e.cfg_scale,
            seed=derive_seed(self.cfg.seed, EVAL_TAG) % (2**31),
        )
        if self.dist.distributed:
            res = self._evaluate_shared(**kwargs)
            if res is None:  # ranks > 0 sampled their share; rank 0 scores and logs
                return
        else:
            decode = self._decode if self.source.is_latent else None
            res = evaluate(self.ema.model, self.recipe, device=self.device, decode=decode, **kwargs)
        vals = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
        vals.setdefault("num_samples", e.num_samples)
        vals["eval_seconds"] = round(time.time() - t0, 2)
        self.logger.log("eval", step, vals)
        if "fid" in vals:
            self._say(
                f"step {step}: FID {vals['fid']:.2f}"
                + (f", class accuracy {vals['class_accuracy']:.3f}" if "class_accuracy" in vals else "")
            )

    def _evaluate_shared(
        self, *, dataset: str, num_samples: int, sampler: str, steps: int, cfg_scale: float, seed: int
    ) -> dict[str, Any] | None:
        """``eval.every`` under DDP: every rank samples its share of the batches (per-index noise,
        balanced labels, as ``fasterdit eval``), rank 0 scores them; None on the other ranks."""
        settings = SampleSettings(num_samples, seed, sampler, steps, float(cfg_scale), label_mode="balanced")
        t0 = time.time()
        decode = self._decode if self.source.is_latent else None
        got = sample_shared(self.ema.model, self.recipe, settings, batch_size=250, dist=self.dist,
                            decode=decode, abort=_StopRequested)  # fmt: skip
        if got is None:
            return None
        images, labels, nfe = got
        res = evaluate_samples(images, labels, dataset, device=self.device)
        res.update(nfe=nfe, sampler=sampler, steps=steps, cfg_scale=float(cfg_scale), seed=seed,
                   sample_seconds=round(time.time() - t0, 3), world_size=self.dist.world_size)  # fmt: skip
        return res

    def _nonfinite_state(self) -> list[str]:
        """Names of non-finite weights, EMA weights or optimizer moments (rank 0 checks, all ranks agree)."""
        bad = None
        if self.dist.is_main:
            named = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            named.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            for i, st in enumerate(self.opt.state.values()):
                named.update({f"optimizer.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
            bad = ckpt_mod.nonfinite_names(named)
        return broadcast_object(bad)

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; every rank contributes its RNG state).

        Refuses (TrainingAborted) when a weight, EMA weight or optimizer moment is not finite, so no
        checkpoint ever holds NaN weights; during a non-finite streak it prunes nothing, so the last
        checkpoint before the streak survives. A state already on disk (same step) is not rewritten.
        """
        self._drain(0)
        if self.last_ckpt is not None and ckpt_mod.checkpoint_step(self.last_ckpt) == self.step:
            return self.last_ckpt  # resumed from, or saved at, this very step: the state is that file
        bad = self._nonfinite_state()
        if bad:
            raise TrainingAborted(
                f"training aborted at step {self.step}: the weights are no longer finite "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; {len(bad)} tensors) although "
                f"the loss was, so they were not saved. {self._last_good()}. Lower optim.lr, set "
                "optim.grad_clip, or check the data; then resume with the same command."
            )
        rng = gather_objects(_rng_state())
        path = None
        if self.dist.is_main:
            state = {
                "optimizer": self.opt.state_dict(),
                "step": self.step,
                "images_seen": self.images_seen,
                "skipped_total": self.skipped_total,
                "ema_updates": self.ema.num_updates,
                "rng": rng,
                "generators": {"step": self.gen.get_state()},
                "data": {
                    "position": self.images_seen,
                    "size": len(self.source),
                    "seed": self.cfg.seed,
                    "world_size": self.dist.world_size,
                },
                "config": self.cfg.to_dict(),
                "recipe": self.recipe.to_dict(),
            }
            meta = {
                "images_seen": self.images_seen,
                "config": self.cfg.to_dict(),
                "recipe": self.recipe.to_dict(),
                "model": {"name": self.cfg.model.name, **self.kwargs},
                "data": data_description(self.source, self.cfg.data.source),
                "world_size": self.dist.world_size,
                "torch": torch.__version__,
            }
            try:
                path = ckpt_mod.save_checkpoint(
                    self.run_dir,
                    self.step,
                    model_state=self.model.state_dict(),
                    ema_state=self.ema.state_dict(),
                    train_state=state,
                    meta=meta,
                    keep_last=None if self.streak else self.cfg.log.keep_last,
                )
                err = None
            except ckpt_mod.CheckpointError as e:
                err = str(e)
        else:
            err = None
        err = broadcast_object(err)
        if err is not None:
            raise ckpt_mod.CheckpointError(err)
        path = _broadcast_path(path)
        self.last_ckpt = path
        return path

    def _finish_outputs(self) -> None:
        if not self.dist.is_main:
            return
        samples = self.run_dir / "samples"
        final = samples / f"step-{self.step:09d}.png"
        if not final.exists() and self.grid_enabled:
            self._unless_stopped("the final sample grid", self.sample_grid, final)
        if final.exists():
            shutil.copyfile(final, self.run_dir / "samples.png")
        plot_loss_curve(self.run_dir)
        plot_eval_curve(self.run_dir)

    def _write_snr_plot(self) -> None:
        path = self.run_dir / "snr_pdf.png"
        if path.exists():
            return
        try:
            std = self.source.channel_std
            data_std = torch.tensor(std, dtype=torch.float64) if len(std) > 1 else float(std[0])
            save_snr_plot(
                [self.recipe],
                data_std,
                path,
                dpi=120,
                title=f"log-SNR density of this run's recipe ({self.cfg.recipe}) on {self.cfg.data.source}",
            )
        except (OSError, ValueError, RuntimeError) as err:  # cannot write it, or no law for this recipe: a
            # plot must never stop training
            self._say(f"warning: no SNR-PDF plot ({type(err).__name__}: {err})")

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def _interruptible(self):
        """Make the EMA model raise _StopRequested at its next forward once a stop signal is in.

        Why: a grid or an evaluation runs hundreds of forwards (35 s and more), longer than a cluster's
        grace period after SIGTERM; a forward pre-hook checks the flag between them, which costs one
        attribute read per forward and needs no change to the samplers.
        """

        def check(_module, _args):
            if self._stop_signal is not None:
                raise _StopRequested

        handle = self.ema.model.register_forward_pre_hook(check)
        try:
            yield
        finally:
            handle.remove()

    def _unless_stopped(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run a grid or an evaluation, abandoning it (no output written) when a stop signal arrives."""
        try:
            with self._interruptible():
                fn(*args)
        except _StopRequested:
            self._say(f"{self._stop_signal}: {what} abandoned to stop quickly (no file written for it)")

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self._stop_signal = name
        with contextlib.suppress(Exception):
            self._say(
                f"{name} received: finishing this step, saving a checkpoint and exiting "
                "(Ctrl-C again to abort without saving)"
            )

    @contextlib.contextmanager
    def _signals(self):
        if not self.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ main
    def run(self) -> TrainResult:
        """Train to ``train.steps`` holding the run-directory lock; resumes from the latest checkpoint.

        A second Ctrl-C raises TrainingInterrupted (a UserError: a message, no traceback).
        """
        with self._run_lock():
            try:
                return self._run()
            except KeyboardInterrupt:
                raise TrainingInterrupted(
                    f"interrupted by a second Ctrl-C at step {self.step}, without saving; "
                    + (
                        f"the last checkpoint {self.last_ckpt} is untouched"
                        if self.last_ckpt
                        else "no checkpoint had been written"
                    )
                    + ". Run the same command to resume."
                ) from None

    @contextlib.contextmanager
    def _run_lock(self):
        """Rank 0 holds the run-directory lock for the job; every rank learns whether it got it."""
        lock, err = None, None
        if self.dist.is_main:
            try:
                lock = RunLock(self.run_dir).acquire()
            except UserError as e:
                err = e
        msg = broadcast_object(None if err is None else str(err))
        if err is not None:
            raise err
        if msg is not None:
            raise RunDirLocked(msg)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> TrainResult:
        t_start = time.time()
        cfg, d = self.cfg, self.dist
        if d.is_main:
            for p in ckpt_mod.remove_stale_temps(self.run_dir):
                self._say(f"removed {p}, left by an interrupted checkpoint write or prune")
        barrier()
        self._setup()
        resumed = self._try_resume()
        if d.is_main:
            ckpt_mod.atomic_write_text(self.run_dir / "config.yaml", _yaml(self.cfg.to_dict()))
            ckpt_mod.atomic_write_text(self.run_dir / "recipe.yaml", _yaml(self.recipe.to_dict()))
        self.logger = MetricsLogger(self.run_dir, cfg.log.tensorboard, enabled=d.is_main)
        # drop what a previous attempt logged after the state we start from (all of it on a fresh start:
        # a run killed before its first checkpoint must not leave its steps in the log twice)
        self.logger.truncate_after(self.step)
        total = cfg.train.steps
        self.progress = (
            Progress(total, self.step, enabled=d.is_main and self.show_progress) if d.is_main else None
        )
        self._sample_setup()
        self.grid_enabled = d.is_main and (not self.source.is_latent or bool(self.source.vae))
        if d.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            where = f"resuming from {resumed} (step {self.step})" if resumed else "starting fresh"
            self._say(
                f"fasterdit train: {cfg.model.name} ({n_params / 1e6:.2f}M params), recipe {cfg.recipe}, "
                f"data {cfg.data.source} ({len(self.source)} items), {d.world_size} process(es) on "
                f"{self.device}, "
                f"global batch {cfg.train.batch_size} (accum {cfg.train.grad_accum}), "
                f"{'bf16 autocast' if self.amp_dtype else 'fp32'}; {where}; run dir {self.run_dir}\n"
                f"  loss: {self.recipe.loss.describe(self.source.channels)}"
            )
            self._write_snr_plot()

        self.losses = array("d")
        # (step, layout, stats tensor, CUDA event or None): the stats not yet read on the host
        self._pending: list[tuple[int, StatsLayout, torch.Tensor, torch.cuda.Event | None]] = []
        self._agreed_stop: int | None = None
        self._int_loss, self._int_n, self._int_terms, self._int_gnorm, self._int_skipped = 0.0, 0, {}, 0.0, 0
        ckpt_due = False
        stopped_by = None
        train_time, train_images = 0.0, 0
        time_int, img_int = 0.0, 0
        lg = cfg.log
        try:
            with self._signals():
                while self.step < total:
                    # stop requests: single process reads its flag; DDP agrees through the lagged stats
                    if d.distributed:
                        if self._agreed_stop is not None and self._agreed_stop <= self.step:
                            stopped_by = self._stop_signal or "signal"
                            break
                    elif self._stop_signal:
                        stopped_by = self._stop_signal
                        break
                    t0 = time.time()
                    layout, vec = self._train_step(self.step)
                    self.step += 1
                    self._post(self.step - 1, layout, vec)
                    self._drain(keep=1)
                    dt = time.time() - t0
                    train_time += dt
                    time_int += dt
                    train_images += cfg.train.batch_size
                    img_int += cfg.train.batch_size
                    if self.progress is not None:
                        self.progress.update(1)
                    s = self.step
                    if s % lg.log_every == 0 or s == total:
                        self._drain(0)
                        if d.is_main:
                            self._write_log(s, time_int, img_int)
                        time_int, img_int = 0.0, 0
                    if lg.ckpt_every and s % lg.ckpt_every == 0:
                        ckpt_due = True
                    if ckpt_due and s < total:
                        self._drain(0)
                        if self.streak == 0:  # never checkpoint in the middle of a non-finite streak
                            self.save()
                            ckpt_due = False
                    if self.grid_enabled and lg.sample_every and s % lg.sample_every == 0 and s < total:
                        grid = self.run_dir / "samples" / f"step-{s:09d}.png"
                        self._unless_stopped(f"the sample grid of step {s}", self.sample_grid, grid)
                    if cfg.eval.every and s % cfg.eval.every == 0:  # every rank samples a share
                        self._unless_stopped(f"the evaluation of step {s}", self._evaluate, s)
                    if self.after_step_hook is not None:
                        self.after_step_hook(self, s)
                self._drain(0)
                if stopped_by is None and self.step >= total:
                    if self.last_ckpt is None or ckpt_mod.checkpoint_step(self.last_ckpt) != self.step:
                        self.save()
                    outputs = d.is_main and bool(train_images or not (self.run_dir / "samples.png").exists())
                    if broadcast_object(outputs):  # rank 0 decides: the ranks evaluate together
                        if cfg.eval.every and self.step % cfg.eval.every:
                            self._unless_stopped("the final evaluation", self._evaluate, self.step)
                        self._finish_outputs()
                elif stopped_by is not None:
                    self.save()
                    self._say(
                        f"stopped by {stopped_by} at step {self.step}; checkpoint {self.last_ckpt}. "
                        "Run the same command to resume."
                    )
        finally:
            if self.progress is not None:
                self.progress.close()
            self.logger.close()
        barrier()
        sps = train_images / train_time if train_time > 0 else float("nan")
        if d.is_main and stopped_by is None and train_images == 0:
            self._say(
                f"the run is already at step {self.step} of {total}: nothing to do (raise train.steps with "
                f"--set train.steps=N to train further); outputs in {self.run_dir}"
            )
        elif d.is_main and stopped_by is None:
            self._say(
                f"done: step {self.step}, {self.images_seen} images, {sps:.1f} samples/s (training steps "
                f"only), {self.skipped_total} skipped steps, {time.time() - t_start:.0f} s; "
                f"outputs in {self.run_dir}"
            )
        return TrainResult(
            self.run_dir,
            self.step,
            self.images_seen,
            self.last_ckpt,
            list(self.losses),
            self.skipped_total,
            stopped_by,
            sps,
            time.time() - t_start,
        )


# ----------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------


def _fused_supported(device: torch.device) -> bool:
    """Fused AdamW exists for CUDA, and for CPU in recent torch builds: probe once."""
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([p], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def _total_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads, foreach=True)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack(norms))


def _verify_error(path: Path) -> str | None:
    """Why a checkpoint fails its size/checksum verification, or None when it passes."""
    try:
        ckpt_mod.verify_checkpoint(path)
    except ckpt_mod.CheckpointError as err:
        return str(err)
    return None


def _broadcast_path(path: Path | None) -> Path | None:
    val = broadcast_object(None if path is None else str(path))
    return None if val is None else Path(val)


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
    return config_from_dict(yaml.safe_load(path.read_text()) or {})
