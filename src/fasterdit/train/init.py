"""``train.init``: a fresh run that starts from another model's weights instead of a random initialisation.

Why through :func:`~fasterdit.generate.loading.load_on_every_rank`: whatever ``fasterdit sample --ckpt``
reads (our runs and checkpoints, official DiT/SiT ``.pt`` files, diffusers DiT folders, a fasterdit export
among them) can start a run, read by the one loader that checks what it reads, and every rank loads the
same checkpoint. The weights (the source's EMA where it has one) go into the model and into its EMA, so the
run's step 0 is the source model exactly; the optimizer starts fresh. Only a fresh run is initialised: on a
resume the run's own checkpoint holds the state (the trainer says so), and the :class:`InitSource` of step 0
travels with every checkpoint.

The architecture must be the same, not just the tensor shapes: ``num_heads`` changes no shape but the
function, and a model without a null class has one row fewer. A mismatch is a one-line ConfigError naming
each field that differs.
"""

from __future__ import annotations

import torch

from fasterdit.errors import ConfigError
from fasterdit.generate.loading import load_on_every_rank
from fasterdit.generate.provenance import weights_file, weights_sha256
from fasterdit.models.dit import DiT
from fasterdit.train.parts import TrainParts
from fasterdit.train.state import InitSource, RunContext

__all__ = ["architecture", "init_weights"]


def architecture(model: DiT) -> dict[str, object]:
    """What makes two DiTs the same function of the same weights."""
    return {
        "input_size": tuple(model.input_size),
        "patch_size": model.patch_size,
        "in_channels": model.in_channels,
        "hidden_size": model.hidden_size,
        "depth": len(model.blocks),
        "num_heads": model.num_heads,
        "mlp_ratio": model.config["mlp_ratio"],
        "num_classes": model.num_classes,
        "learn_sigma": model.learn_sigma,
        "null_class": model.y_embedder is not None and model.y_embedder.has_null_class,
    }


@torch.no_grad()
def init_weights(ctx: RunContext, parts: TrainParts) -> InitSource:
    """Load ``train.init`` into the model and the EMA (every rank); what was loaded, for the checkpoints."""
    path = ctx.cfg.train.init
    assert path is not None  # the trainer calls this only with train.init set
    lm = load_on_every_rank(path, ctx.dist, ema=True)
    theirs, ours = architecture(lm.model), architecture(parts.model)
    diffs = [f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if theirs[k] != ours[k]]
    if diffs:
        raise ConfigError(
            "train.init",
            f"{path} holds another DiT than {ctx.cfg.model.name} on this data ({'; '.join(diffs)})",
        )
    state = lm.model.state_dict()
    parts.model.load_state_dict(state, strict=True)
    parts.ema.load_state_dict(state)
    return InitSource(
        path=str(path),
        loaded=str(lm.path),
        source=lm.source,
        step=lm.step,
        weights_file=str(weights_file(lm, ema=True)),
        weights_sha256=weights_sha256(lm, ema=True),
    )
