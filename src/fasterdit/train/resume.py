"""Save and resume: a run's whole state into a checkpoint, and back from the best intact one.

What a checkpoint holds (see :mod:`fasterdit.run.checkpoint` for the crash-safe format): the raw and
EMA weights, the optimizer, the :class:`~fasterdit.train.state.TrainState` counters (the rollback count
and lr scale of ``train.on_nonfinite: rollback`` included), every rank's RNG states and the step
generator; with REPA's alignment, the projector's weights in ``state.pt`` (``align_projector``), never
beside the model's, so the model and EMA files hold exactly the official DiT's parameters. Why the RNG
states although each step reseeds its own generator: the
global RNGs are the user's (a test hook, a custom loss), and restoring them costs nothing.

Reliability (docs/training.md, "Guarantees"): a checkpoint is written only from finite weights (one check
per save) and never prunes during a non-finite streak; resume verifies checksums (meta.json's own
``meta_sha256`` included, so an edited or damaged meta.json is damage, not a different run) and falls
back to the previous intact checkpoint, moving a damaged one aside. A rollback
(:meth:`Checkpointer.roll_back`) is that resume in the middle of a run, followed by a jump of the data
position.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.errors import ConfigError
from fasterdit.run import checkpoint as ckpt_mod
from fasterdit.run.description import DataDescription
from fasterdit.runtime.distributed import broadcast_object, gather_objects
from fasterdit.train.parts import TrainParts
from fasterdit.train.preflight import recipe_differences
from fasterdit.train.result import TrainingAborted
from fasterdit.train.state import InitSource, RunContext, TrainState

__all__ = ["Checkpointer", "describe_last_good", "verify_error"]

#: what a damaged state.pt's RNG or optimizer entries raise when applied (e.g. random.setstate)
_STATE_APPLY_ERRORS = (OverflowError, ValueError, TypeError, KeyError, IndexError, RuntimeError)


def rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch, Python, NumPy, CUDA) in a weights_only-safe form."""
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


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))
    n = st["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def verify_error(path: Path) -> str | None:
    """Why a checkpoint fails its size/checksum verification, or None when it passes."""
    try:
        ckpt_mod.verify_checkpoint(path)
    except ckpt_mod.CheckpointError as err:
        return str(err)
    return None


def describe_last_good(last: Path | None) -> str:
    """What the abort messages say about the last checkpoint: "intact" only after checking it."""
    if last is None:
        return "no checkpoint had been written yet"
    step = ckpt_mod.checkpoint_step(last)
    err = verify_error(last)
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


def _section(path: Path, meta: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    """``meta[section][key]`` of a checkpoint (``{}`` when the checkpoint does not record it).

    Why not ``.get(key, {})`` alone: a version-1 meta.json (no ``meta_sha256``) can hold anything there,
    and a list must fall back to the previous checkpoint like other damage, not raise AttributeError.
    """
    value = meta[section].get(key, {})
    if not isinstance(value, dict):
        raise ckpt_mod.CheckpointError(
            f"{path / 'meta.json'}: damaged checkpoint metadata ({section}.{key} is a "
            f"{type(value).__name__}, not an object)"
        )
    return value


def _broadcast_path(path: Path | None) -> Path | None:
    val = broadcast_object(None if path is None else str(path))
    return None if val is None else Path(val)


class Checkpointer:
    """Writes the run's state (:meth:`save`) and puts it back (:meth:`resume`); every rank calls both."""

    def __init__(self, ctx: RunContext, parts: TrainParts, state: TrainState, allow_config_change: bool):
        self.ctx = ctx
        self.parts = parts
        self.state = state
        self.allow_config_change = allow_config_change
        #: (step, images_seen) of the state last saved or resumed: a save of that same state is a no-op.
        #: Why not the step alone: a rollback returns to a saved step at a later data position.
        self._on_disk: tuple[int, int] | None = None

    # ------------------------------------------------------------------ resume
    def resume(self) -> Path | None:
        """Resume from the best intact checkpoint; a damaged one is moved aside with a warning.

        Rank 0 verifies the checksums (reading every byte once), every rank then reads the files, and the
        ranks agree on the outcome, so a DDP job resumes from the same checkpoint on every rank.
        """
        ctx = self.ctx
        main = ctx.dist.is_main
        names = broadcast_object([str(p) for p in ckpt_mod.candidates(ctx.run_dir)] if main else None)
        errors = []
        for name in names:
            path = Path(name)
            err = broadcast_object(verify_error(path) if main else None)
            corrupt = err is not None
            if err is None:
                err = next((e for e in gather_objects(self._load(path)) if e is not None), None)
            if err is None:
                self.state.last_ckpt = path
                self._on_disk = (self.state.step, self.state.images_seen)
                return path
            errors.append(err)
            # a file that fails its checksum is moved aside; one that verifies but does not load is left
            moved = ckpt_mod.quarantine(path) if main and corrupt else None
            ctx.console.say(
                f"warning: checkpoint {path} is damaged ({err}); "
                + (f"moved it to {moved.name}; " if moved else "")
                + "falling back to the previous checkpoint"
            )
        if errors:
            raise ckpt_mod.CheckpointError(
                f"no intact checkpoint in {ctx.run_dir / ckpt_mod.CKPT_SUBDIR} ({'; '.join(errors)}); "
                "nothing was trained. Restore a checkpoint or start a new --run-dir"
            )
        return None

    def _load(self, path: Path) -> str | None:
        """Load a checkpoint into the run; the reason when its files cannot be read, else None.

        A config that does not match the run raises (ConfigError): that is the user's choice to fix, not a
        damaged file to fall back from.
        """
        device = self.parts.device
        try:
            meta = ckpt_mod.read_meta(path)
            self._check_compatible(path, meta)
            model_sd = ckpt_mod.load_tensors(path, "model", device=device)
            ema_sd = ckpt_mod.load_tensors(path, "ema", device=device)
            state = ckpt_mod.load_train_state(path, map_location="cpu")
            self._apply(path, model_sd, ema_sd, state)
        except ckpt_mod.CheckpointError as err:
            return str(err)
        return None

    def _apply(self, path: Path, model_sd: dict, ema_sd: dict, saved: dict[str, Any]) -> None:
        """Put a checkpoint's weights, optimizer, counters and RNG states in place.

        Every field is overwritten, so a later candidate replaces whatever a failed one left behind.
        """
        parts, st, dist, source = self.parts, self.state, self.ctx.dist, self.ctx.source
        parts.model.load_state_dict(model_sd)
        parts.ema.load_state_dict(ema_sd)
        try:
            parts.opt.load_state_dict(saved["optimizer"])
            st.step = int(saved["step"])
            st.images_seen = int(saved["images_seen"])
            st.skipped_total = int(saved.get("skipped_total", 0))
            st.rollbacks = int(saved.get("rollbacks", 0))
            st.lr_scale = float(saved.get("lr_scale", 1.0))
            parts.ema.num_updates = int(saved.get("ema_updates", st.step))
            init = saved.get("init")
            st.init = InitSource.from_dict(init) if init is not None else None
            self._apply_projector(saved.get("align_projector"))
            rng = saved.get("rng", [])
            if len(rng) == dist.world_size:
                set_rng_state(rng[dist.rank])
            elif rng:
                set_rng_state(rng[0])
        except _STATE_APPLY_ERRORS as err:
            raise ckpt_mod.CheckpointError(
                f"{path / 'state.pt'}: invalid training state ({type(err).__name__}: {err})"
            ) from err
        for name, gen_state in saved.get("generators", {}).items():
            if name == "step" and gen_state is not None:
                with contextlib.suppress(RuntimeError):  # another device type: reseeded every step anyway
                    parts.gen.set_state(gen_state)
        data = saved.get("data", {})
        if int(data.get("size", len(source))) != len(source):
            self.ctx.console.say(
                f"warning: the dataset has {len(source)} items but the checkpoint was trained on "
                f"{data.get('size')}; the data order will differ from an uninterrupted run"
            )

    def _apply_projector(self, state: dict[str, torch.Tensor] | None) -> None:
        """Put REPA's projector back; a checkpoint without one (alignment turned on with
        --allow-config-change) leaves the fresh projector, with a warning."""
        align = self.parts.align
        if align is None:
            return
        if state is None:
            self.ctx.console.say(
                "warning: the checkpoint has no REPA projector; it starts from its initialisation"
            )
            return
        align.projector.load_state_dict({k: v.to(self.parts.device) for k, v in state.items()})

    def _check_compatible(self, path: Path, meta: dict[str, Any]) -> None:
        """ConfigError when the run's config differs from the (verified) checkpoint's in what cannot
        change on resume; CheckpointError when the checkpoint's config sections are not objects."""
        ctx, cfg = self.ctx, self.ctx.cfg
        old = meta["config"]
        old_model, old_data = _section(path, meta, "config", "model"), _section(path, meta, "config", "data")
        # (field, what the checkpoint says, what this run has): a different model or data is never resumable
        fixed = (
            ("model.name", old_model.get("name"), cfg.model.name),
            ("model.learn_sigma", meta["model"].get("learn_sigma"), ctx.model_kwargs["learn_sigma"]),
            ("model.class_dropout_prob", old_model.get("class_dropout_prob"), cfg.model.class_dropout_prob),
            ("data.source", old_data.get("source"), cfg.data.source),
        )
        for name, a, b in fixed:
            if a is not None and a != b:
                raise ConfigError(
                    name,
                    f"the run in {ctx.run_dir} was trained with {a!r}, this config "
                    f"has {b!r}; use a new --run-dir or the run's own config",
                )
        if self.allow_config_change:
            return
        # the seed and the recipe define the run's draws and its objective: changing them on resume is a
        # different experiment, so it takes an explicit --allow-config-change
        seed = old.get("seed")
        if seed is not None and seed != cfg.seed:
            raise ConfigError(
                "seed",
                f"the run in {ctx.run_dir} was trained with seed {seed}, this config has {cfg.seed}; "
                "use the run's seed, a new --run-dir, or --allow-config-change to resume anyway",
            )
        diffs = recipe_differences(meta.get("recipe"), ctx.recipe)
        if diffs:
            raise ConfigError(
                "recipe",
                f"the run in {ctx.run_dir} was trained with a different recipe ({'; '.join(diffs[:5])}); "
                "use the run's recipe, a new --run-dir, or --allow-config-change to resume anyway",
            )

    # ------------------------------------------------------------------ save
    def _nonfinite_state(self) -> list[str]:
        """Names of non-finite weights, EMA weights or optimizer moments (rank 0 checks, all ranks agree)."""
        bad = None
        if self.ctx.dist.is_main:
            parts = self.parts
            named = {f"model.{k}": v for k, v in parts.model.state_dict().items()}
            named.update({f"ema.{k}": v for k, v in parts.ema.state_dict().items()})
            if parts.align is not None:
                named.update(
                    {f"align_projector.{k}": v for k, v in parts.align.projector.state_dict().items()}
                )
            for i, st in enumerate(parts.opt.state.values()):
                named.update({f"optimizer.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
            bad = ckpt_mod.nonfinite_names(named)
        return broadcast_object(bad)

    def save(self, prune: bool = True) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; every rank contributes its RNG state).

        Refuses (TrainingAborted) when a weight, EMA weight or optimizer moment is not finite, so no
        checkpoint ever holds NaN weights; with ``prune`` false (a non-finite streak) it deletes no older
        checkpoint, so the last one before the streak survives. A state already on disk (same step) is
        not rewritten. The caller drains the monitor first: the counters must include every step.
        """
        ctx, parts, st = self.ctx, self.parts, self.state
        cfg, dist = ctx.cfg, ctx.dist
        if st.last_ckpt is not None and self._on_disk == (st.step, st.images_seen):
            return st.last_ckpt  # resumed from, or saved at, this very state: the state is that file
        bad = self._nonfinite_state()
        if bad:
            raise TrainingAborted(
                f"training aborted at step {st.step}: the weights are no longer finite "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; {len(bad)} tensors) although "
                f"the loss was, so they were not saved. {describe_last_good(st.last_ckpt)}. Lower optim.lr, "
                "set optim.grad_clip, or check the data; then resume with the same command."
            )
        rng = gather_objects(rng_state())
        path, err = None, None
        if dist.is_main:
            train_state = {
                "optimizer": parts.opt.state_dict(),
                "step": st.step,
                "images_seen": st.images_seen,
                "skipped_total": st.skipped_total,
                "rollbacks": st.rollbacks,
                "lr_scale": st.lr_scale,
                "ema_updates": parts.ema.num_updates,
                "init": st.init.to_dict() if st.init is not None else None,
                "rng": rng,
                "generators": {"step": parts.gen.get_state()},
                **(
                    {"align_projector": parts.align.projector.state_dict()} if parts.align is not None else {}
                ),
                "data": {
                    "position": st.images_seen,
                    "size": len(ctx.source),
                    "seed": cfg.seed,
                    "world_size": dist.world_size,
                },
                "config": cfg.to_dict(),
                "recipe": ctx.recipe.to_dict(),
            }
            meta = {
                "images_seen": st.images_seen,
                "config": cfg.to_dict(),
                "recipe": ctx.recipe.to_dict(),
                "model": {"name": cfg.model.name, **ctx.model_kwargs},
                "data": DataDescription.of_source(ctx.source, cfg.data.source).to_dict(),
                "world_size": dist.world_size,
                "torch": torch.__version__,
                # train.init: the weights of step 0 (its source and SHA-256); None: a random initialisation
                "init": st.init.to_dict() if st.init is not None else None,
            }
            try:
                path = ckpt_mod.save_checkpoint(
                    ctx.run_dir,
                    st.step,
                    model_state=parts.model.state_dict(),
                    ema_state=parts.ema.state_dict(),
                    train_state=train_state,
                    meta=meta,
                    keep_last=cfg.log.keep_last if prune else None,
                )
            except ckpt_mod.CheckpointError as e:
                err = str(e)
        err = broadcast_object(err)
        if err is not None:
            raise ckpt_mod.CheckpointError(err)
        path = _broadcast_path(path)
        st.last_ckpt = path
        self._on_disk = (st.step, st.images_seen)
        return path

    # ------------------------------------------------------------------ rollback
    def roll_back(self, past: int, lr_factor: float) -> tuple[Path, int] | None:
        """Reload the newest intact checkpoint, then continue from data position ``past`` with the lr scale
        multiplied by ``lr_factor``; (the checkpoint, the images skipped), None when no checkpoint is left.

        Why a resume: it restores everything a checkpoint holds (weights, EMA, optimizer, RNG states) with
        its checksum fallback, on every rank together. What stays as it was in memory: the counts of the
        whole run (skipped steps, rollbacks) and the lr scale in use, which the checkpoint may predate.
        """
        st = self.state
        skipped, rollbacks, scale = st.skipped_total, st.rollbacks, st.lr_scale
        path = self.resume()
        if path is None:
            return None
        position = st.images_seen
        st.skipped_total, st.rollbacks, st.lr_scale = skipped, rollbacks + 1, scale * lr_factor
        st.images_seen = past
        return path, past - position
