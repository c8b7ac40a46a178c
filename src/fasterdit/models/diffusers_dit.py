"""The DiT in diffusers' layout (``DiTTransformer2DModel``) and back: a renaming of the same weights.

Why here, beside the DiT and without diffusers: ``fasterdit export --format diffusers`` writes this layout
and ``--ckpt`` reads it (``facebook/DiT-XL-2-256`` and our own exports), and reading a folder of
safetensors must not need diffusers installed. Both directions are plain tensor maps, so an export read
back gives the same tensors, bit for bit.

What differs between the layouts (the mapping of diffusers' ``scripts/convert_dit_to_diffusers.py``):

* ``attn.qkv`` (one ``3D x D`` linear, ``[q | k | v]``) is split into ``attn1.to_q``/``to_k``/``to_v``;
* the blocks are renamed (``blocks.i`` -> ``transformer_blocks.i``, ``mlp.fc1`` -> ``ff.net.0.proj``,
  ``adaLN_modulation.1`` -> ``norm1.linear``, the final layer -> ``proj_out_1``/``proj_out_2``);
* the one timestep embedder and label table of the DiT are **copied into every block**
  (``transformer_blocks.i.norm1.emb``); reading them back checks that every copy is equal;
* the label table always has a null row (diffusers hard-codes ``class_dropout_prob=0.1``): a model
  trained without one gets a zero row, which guidance never reads (it has no null class to guide with)
  and an import drops again when the export says so (``has_null_class``);
* an unconditional DiT (``num_classes=0``) becomes a one-row table of zeros: label 0 adds nothing.

The architecture must be what ``DiTTransformer2DModel`` can express: square inputs, MLP ratio 4. What
diffusers computes differently (its timestep frequencies) is measured in docs/diffusers.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fasterdit.errors import ConfigError, DataError
from fasterdit.models.dit import DiT, sincos_pos_embed_2d

__all__ = ["DiffusersDiT", "diffusers_config", "from_diffusers", "to_diffusers"]

#: the LayerNorm epsilon of every DiT norm (diffusers' ``norm_eps`` defaults to 1e-5)
DIT_NORM_EPS = 1e-6

# per-block renames of the DiT's own modules (the embedder copies and the qkv split are handled apart)
_BLOCK = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
_EMBED = {
    "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
}
_TABLE = "norm1.emb.class_embedder.embedding_table.weight"


def diffusers_config(model: DiT) -> dict[str, Any]:
    """The ``DiTTransformer2DModel`` config of ``model`` (ConfigError where diffusers cannot express it)."""
    h, w = model.input_size
    if h != w:
        raise ConfigError("model.input_size", f"diffusers' DiT is square; this model is {h}x{w}")
    ratio = model.config["mlp_ratio"]
    if ratio != 4.0:
        raise ConfigError("model.mlp_ratio", f"diffusers' DiT has MLP ratio 4, this model {ratio}")
    return {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": model.num_heads,
        "attention_head_dim": model.hidden_size // model.num_heads,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": len(model.blocks),
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": h,
        "patch_size": model.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": model.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": DIT_NORM_EPS,
    }


def to_diffusers(model: DiT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state)`` of ``DiTTransformer2DModel`` holding ``model``'s weights (same tensors, cloned
    where diffusers stores several copies, so that safetensors can write them)."""
    config = diffusers_config(model)
    src = {k: v.detach() for k, v in model.state_dict().items()}
    fixed = sincos_pos_embed_2d(model.hidden_size, *model.grid_size).to(src["pos_embed"].dtype)
    if not torch.allclose(src["pos_embed"][0].float(), fixed.float(), rtol=0.0, atol=1e-6):
        raise ConfigError(
            "model", "its pos_embed is not DiT's fixed sin-cos embedding, which diffusers recomputes"
        )
    out: dict[str, Tensor] = {}
    for old, new in _TOP.items():
        for p in ("weight", "bias"):
            out[f"{new}.{p}"] = src[f"{old}.{p}"].clone()
    table = _table_with_null_row(model, src)
    for i in range(len(model.blocks)):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _BLOCK.items():
            for p in ("weight", "bias"):
                out[d + f"{new}.{p}"] = src[b + f"{old}.{p}"].clone()
        for p in ("weight", "bias"):
            q, k, v = src[b + f"attn.qkv.{p}"].chunk(3, dim=0)
            out[d + f"attn1.to_q.{p}"] = q.clone()
            out[d + f"attn1.to_k.{p}"] = k.clone()
            out[d + f"attn1.to_v.{p}"] = v.clone()
        for old, new in _EMBED.items():
            for p in ("weight", "bias"):
                out[d + f"{new}.{p}"] = src[f"{old}.{p}"].clone()
        out[d + _TABLE] = table.clone()
    return config, out


def _table_with_null_row(model: DiT, src: Mapping[str, Tensor]) -> Tensor:
    """The label table diffusers expects: ``num_classes + 1`` rows, the last the null class."""
    hidden = model.hidden_size
    if model.y_embedder is None:
        return torch.zeros(1, hidden, dtype=src["pos_embed"].dtype)
    table = src["y_embedder.embedding_table.weight"]
    if model.y_embedder.has_null_class:
        return table
    return torch.cat([table, table.new_zeros(1, hidden)])


def _read_keys(depth: int) -> set[str]:
    """Every key :func:`from_diffusers` reads (``pos_embed.pos_embed`` too, where a file holds it)."""
    keys = {"pos_embed.pos_embed"} | {f"{new}.{p}" for new in _TOP.values() for p in ("weight", "bias")}
    for i in range(depth):
        d = f"transformer_blocks.{i}."
        names = [*_BLOCK.values(), *_EMBED.values(), *(f"attn1.to_{n}" for n in "qkv")]
        keys |= {d + f"{n}.{p}" for n in names for p in ("weight", "bias")} | {d + _TABLE}
    return keys


@dataclass(frozen=True)
class DiffusersDiT:
    """A DiT read from diffusers' layout, and what the layout said about it."""

    model: DiT
    config: dict[str, Any]  #: the DiT keyword arguments it was built with


def _need(config: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise DataError(f"{where}: its transformer config has no {key!r}; not a DiT transformer")
    return config[key]


def _int(config: Mapping[str, Any], key: str, where: str) -> int:
    value = _need(config, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: transformer config {key!r} must be an integer, got {value!r}")
    return value


def _merged(state: Mapping[str, Tensor], depth: int, suffix: str, where: str) -> Tensor:
    """The one tensor diffusers copied into every block, after checking that every copy is equal."""
    first = _get(state, f"transformer_blocks.0.{suffix}", where)
    for i in range(1, depth):
        other = _get(state, f"transformer_blocks.{i}.{suffix}", where)
        if other.shape != first.shape or not torch.equal(other, first):
            raise DataError(
                f"{where}: transformer_blocks.{i}.{suffix} differs from block 0's copy; a DiT shares one "
                "timestep/label embedder, so this transformer is not a DiT (fine-tuned per block?)"
            )
    return first


def _get(state: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in state:
        raise DataError(f"{where}: the transformer weights have no {key!r}; not a DiT transformer")
    return state[key]


def from_diffusers(
    config: Mapping[str, Any], state: Mapping[str, Tensor], where: str, has_null_class: bool | None = None
) -> DiffusersDiT:
    """The DiT held by a ``DiTTransformer2DModel`` (or the older ``Transformer2DModel`` config of
    ``facebook/DiT-XL-2-256``) state dict; DataError naming ``where`` when it is not one.

    ``has_null_class``: whether the label table's last row is a real null class (our exports say;
    ``None``: yes, as diffusers always adds one). Every tensor is taken as stored (no dtype change).
    """
    norm = config.get("norm_type", "ada_norm_zero")
    if norm != "ada_norm_zero":
        raise DataError(f"{where}: norm_type {norm!r} is not DiT's adaLN-Zero")
    heads = _int(config, "num_attention_heads", where)
    hidden = heads * _int(config, "attention_head_dim", where)
    in_ch = _int(config, "in_channels", where)
    out_ch = config.get("out_channels") or in_ch
    depth = _int(config, "num_layers", where)
    classes = _int(config, "num_embeds_ada_norm", where)
    if out_ch not in (in_ch, 2 * in_ch):
        raise DataError(f"{where}: out_channels {out_ch} is neither in_channels nor twice it")
    table = _merged(state, depth, _TABLE, where)
    null = table.shape[0] > classes if has_null_class is None else has_null_class
    if classes > 0 and table.shape[0] != classes + 1:
        raise DataError(f"{where}: the label table has {table.shape[0]} rows for {classes} classes")
    kwargs: dict[str, Any] = dict(
        input_size=_int(config, "sample_size", where), patch_size=_int(config, "patch_size", where),
        in_channels=in_ch, hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=4.0,
        class_dropout_prob=0.1 if (classes > 0 and null) else 0.0, num_classes=classes,
        learn_sigma=out_ch == 2 * in_ch,
    )  # fmt: skip
    grid = kwargs["input_size"] // kwargs["patch_size"]
    dtype = _get(state, "proj_out_2.weight", where).dtype
    # not stored by diffusers (a non-persistent buffer): DiT's fixed embedding, as DiT.initialize_weights
    out: dict[str, Tensor] = {"pos_embed": sincos_pos_embed_2d(hidden, grid, grid).to(dtype).unsqueeze(0)}
    for old, new in _TOP.items():
        for p in ("weight", "bias"):
            out[f"{old}.{p}"] = _get(state, f"{new}.{p}", where)
    for old, new in _EMBED.items():
        for p in ("weight", "bias"):
            out[f"{old}.{p}"] = _merged(state, depth, f"{new}.{p}", where)
    if classes > 0:
        out["y_embedder.embedding_table.weight"] = table if null else table[:classes]
    for i in range(depth):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _BLOCK.items():
            for p in ("weight", "bias"):
                out[b + f"{old}.{p}"] = _get(state, d + f"{new}.{p}", where)
        for p in ("weight", "bias"):
            parts = [_get(state, d + f"attn1.to_{n}.{p}", where) for n in "qkv"]
            out[b + f"attn.qkv.{p}"] = torch.cat(parts, dim=0)
    unused = set(state) - _read_keys(depth)
    if unused:
        raise DataError(f"{where}: the transformer has weights a DiT does not ({sorted(unused)[0]}, ...)")
    try:
        with torch.device("meta"):
            model = DiT(**kwargs)
        model.load_state_dict(out, strict=True, assign=True)
    except (ConfigError, RuntimeError) as err:
        why = " ".join(str(err).split())[:300]
        raise DataError(
            f"{where}: the transformer does not fit the DiT its config describes ({why})"
        ) from None
    return DiffusersDiT(model.eval(), kwargs)
