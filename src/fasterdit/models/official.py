"""Load checkpoints of the official DiT (facebookresearch/DiT) and SiT (willisma/SiT) code into
:class:`fasterdit.models.DiT`. SiT's network is DiT's, parameter for parameter; only what its output
means differs (see :func:`checkpoint_family`).

Two file layouts are accepted:

* the released weights (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``): a raw state dict;
* checkpoints written by the official ``train.py``: ``{"model", "ema", "opt", "args"}``; the EMA weights
  are used unless ``prefer_ema=False`` (the paper samples from the EMA).

The architecture is read off the tensor shapes, so no config file is needed: width, patch size and
channels from ``x_embedder.proj.weight``, depth from the block indices, the token count from
``pos_embed``, ``learn_sigma`` from the output layer and the class count from the label table (whose
last row is the null class the official training always adds). The number of heads is not visible in
the shapes; it comes from the matching named config, else from head dim 64 (as in DiT-S/B/L).

Files are read with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` is additionally
allowed, for the ``args`` entry), so a checkpoint cannot execute code.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from fasterdit.errors import DataError
from fasterdit.models.dit import CONFIGS, DiT

_REQUIRED = ("x_embedder.proj.weight", "pos_embed", "t_embedder.mlp.0.weight", "final_layer.linear.weight")
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


FAMILIES = ("dit", "sit")


def read_official_state_dict(
    path: str | Path, prefer_ema: bool = True
) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """The model state dict in an official checkpoint file, where it came from ("ema", "model", "raw"),
    and the model name its training script recorded (``args.model``, e.g. "SiT-XL/2"), if any."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a DiT checkpoint (holds a {type(obj).__name__}, not a state dict)")
    order = ("ema", "model") if prefer_ema else ("model", "ema")
    source = next((k for k in order if isinstance(obj.get(k), dict)), "raw")
    state = obj if source == "raw" else obj[source]
    state = {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in _REQUIRED if k not in state]
    if missing or "blocks.0.attn.qkv.weight" not in state:
        raise DataError(
            f"{path}: not a DiT checkpoint (missing {', '.join(missing or ['blocks.0.attn.qkv.weight'])}; "
            f"found {len(state)} tensors)"
        )
    args = obj.get("args")
    trained_as = (
        args.model
        if isinstance(args, argparse.Namespace) and isinstance(vars(args).get("model"), str)
        else None
    )
    return state, source, trained_as


def checkpoint_family(path: str | Path, trained_as: str | None = None, family: str | None = None) -> str:
    """Which official code wrote a checkpoint: ``dit`` (facebookresearch/DiT) or ``sit`` (willisma/SiT).

    The two share the architecture and every parameter name, so the tensors cannot tell them apart;
    they differ in what the network means (DiT: ε and a variance at step index 0..999; SiT: the
    velocity dx/ds at continuous s ∈ [0, 1], s = 1 data). In order: ``family`` when given, else the
    ``args.model`` the training script saved ("SiT-XL/2"), else the file name of the released weights
    (``SiT-XL-2-256x256.pt``), else ``dit``.
    """
    if family is not None:
        if family not in FAMILIES:
            raise DataError(f"unknown checkpoint family {family!r}; choose one of {', '.join(FAMILIES)}")
        return family
    for name in (trained_as, Path(path).name):
        if name and name.lower().startswith("sit"):
            return "sit"
        if name and name.lower().startswith("dit"):
            return "dit"
    return "dit"


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def infer_official_config(
    state: dict[str, torch.Tensor],
    input_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    num_classes: int | None = None,
) -> dict:
    """DiT keyword arguments (plus ``"name"``: the matching named config or None) from tensor shapes.

    ``input_size`` is needed only for non-square token grids; ``num_classes`` only for a label table
    without a null row (then ``class_dropout_prob`` becomes 0).
    """
    hidden, in_ch, p, p2 = state["x_embedder.proj.weight"].shape
    if p != p2:
        raise DataError(f"non-square patches ({p}x{p2}) are not a DiT layout")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = state["pos_embed"].shape[1]
    out_ch, rem = divmod(state["final_layer.linear.weight"].shape[0], p * p)
    if rem or out_ch not in (in_ch, 2 * in_ch):
        raise DataError(f"output layer has {out_ch * p * p + rem} rows, not p*p*C or p*p*2C (C={in_ch})")

    if input_size is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise DataError(f"{tokens} tokens is not a square grid: pass input_size=(H, W)")
        input_size = side * p
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if (hw[0] // p) * (hw[1] // p) != tokens:
        raise DataError(
            f"input_size {hw} with patch {p} gives a different token count than pos_embed ({tokens})"
        )

    table = state.get("y_embedder.embedding_table.weight")
    if table is None:
        classes, dropout = 0, 0.0
    elif num_classes is not None and num_classes == table.shape[0]:
        classes, dropout = num_classes, 0.0
    else:
        classes, dropout = table.shape[0] - 1, 0.1  # official training always adds the null row

    name = next(
        (n for n, c in CONFIGS.items() if (c.depth, c.hidden_size, c.patch_size) == (depth, hidden, p)), None
    )
    if num_heads is None:
        if name is not None:
            num_heads = CONFIGS[name].num_heads
        elif hidden % 64 == 0:
            num_heads = hidden // 64
        else:
            raise DataError(f"cannot infer the number of heads for width {hidden}: pass num_heads")
    return dict(
        name=name, input_size=input_size, patch_size=p, in_channels=in_ch, hidden_size=hidden, depth=depth,
        num_heads=num_heads, num_classes=classes, class_dropout_prob=dropout, learn_sigma=out_ch == 2 * in_ch,
    )  # fmt: skip


@dataclass(frozen=True)
class OfficialModel:
    """An official checkpoint loaded: the network, which code wrote it, and the matching config name."""

    model: DiT
    family: str  # "dit" or "sit" (see checkpoint_family)
    config_name: str | None  # e.g. "DiT-XL/2" (SiT-XL/2 has the same shapes); None for custom sizes


def load_official_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
    input_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    num_classes: int | None = None,
) -> DiT:
    """Build the DiT an official checkpoint describes and load it with ``strict=True`` (float32, eval mode).

    The model is built on the meta device and the checkpoint tensors are assigned to it, so loading
    DiT-XL/2 costs no random initialisation.
    """
    return load_official(path, device, prefer_ema, input_size, num_heads, num_classes).model


def load_official(
    path: str | Path,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
    input_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    num_classes: int | None = None,
    family: str | None = None,
) -> OfficialModel:
    """:func:`load_official_checkpoint` plus the checkpoint's family (DiT or SiT) and config name."""
    state, _source, trained_as = read_official_state_dict(path, prefer_ema=prefer_ema)
    family = checkpoint_family(path, trained_as, family)
    try:
        cfg = infer_official_config(
            state, input_size=input_size, num_heads=num_heads, num_classes=num_classes
        )
    except (DataError, KeyError, ValueError) as err:
        raise DataError(f"{path}: not a DiT checkpoint ({err})") from err
    name = cfg.pop("name")
    with torch.device("meta"):
        model = DiT(**cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise DataError(f"{path}: does not match the DiT layout it implies:\n{err}") from err
    model.config_name = name
    return OfficialModel(model.to(device).eval(), family, name)
