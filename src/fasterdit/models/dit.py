"""The Diffusion Transformer (DiT) of Peebles & Xie, "Scalable Diffusion Models with Transformers" (2023).

The architecture is the published one, unchanged, and every parameter has the same name and shape as in
the official implementation (facebookresearch/DiT ``models.py``), so that an official checkpoint loads
with ``strict=True`` and gives the same outputs:

    x (N, C, H, W) --PatchEmbed--> tokens (N, T, D) + fixed 2-D sin-cos pos_embed
    t (N,)         --sinusoid + MLP--> (N, D)  \
    y (N,)         --embedding table--> (N, D)  +--> c (N, D), the conditioning vector
    tokens --depth x DiTBlock(adaLN-Zero, conditioned on c)--> FinalLayer (adaLN) --> unpatchify
    -> (N, C, H, W), or (N, 2C, H, W) with learn_sigma (second half: iDDPM's variance interpolation v)

What differs from the official code is only *how* it is computed, never *what*:

* no ``timm`` dependency: patch embedding, attention and MLP are small local modules that keep timm's
  parameter names (``x_embedder.proj``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``);
* attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU);
* optional gradient checkpointing per block (``grad_checkpointing=True``) trades ~1/3 more compute for
  activation memory that no longer grows with depth;
* rectangular inputs (``input_size=(H, W)``), any channel count, and an unconditional variant
  (``num_classes=0`` or ``None``: no label embedder, ``y`` is ignored);
* classifier-free guidance guides all prediction channels by default (``guide_channels=3`` reproduces the
  official sampler, which guides only the first three latent channels);
* label dropout takes its mask from the caller (``force_drop_ids``, the official argument): fasterdit's
  trainer draws it once per global batch with the step's generator, so runs are reproducible and the
  compiled forward never draws.

Why one module of ~550 lines: it mirrors the official ``models.py`` (embedders, blocks, the DiT, the
named configs and the 2-D sin-cos position embedding) so the two can be read side by side.

The blocks contain no data-dependent Python control flow, so ``torch.compile(block, fullgraph=True)``
traces them without graph breaks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fasterdit.errors import ConfigError, UserError
from fasterdit.guidance import cfg_mix, guided_channels

# --------------------------------------------------------------------------------------------------------
# Fixed embeddings
# --------------------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (N,) -> (N, dim), ``[cos | sin]`` halves.

    Computed in float32 exactly as the official code (GLIDE's recipe) so that official checkpoints see
    the inputs they were trained on, whatever dtype the rest of the model runs in.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos features of 1-D positions: (M,) -> (M, dim) as ``[sin | cos]``, float64."""
    if dim % 2:
        raise ConfigError("hidden_size", f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64, device="cpu") / (dim / 2))
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The fixed 2-D position embedding of MAE/DiT for a (grid_h x grid_w) token grid: (h*w, dim), float64.

    Tokens are in row-major order (the order of ``conv(x).flatten(2)``). As in the official code the
    first half of the channels encodes the *column* index and the second half the *row* index.
    """
    rows = torch.arange(grid_h, dtype=torch.float64, device="cpu")
    cols = torch.arange(grid_w, dtype=torch.float64, device="cpu")
    row_idx, col_idx = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, col_idx), sincos_1d(dim // 2, row_idx)], dim=1)


# --------------------------------------------------------------------------------------------------------
# Layers (timm-compatible parameter names, no timm import)
# --------------------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x·(1 + scale) + shift``; shift/scale are (N, 1, D) and broadcast over the tokens.

    One ``addcmul`` instead of a multiply and an add: the same value (up to float rounding) with one
    pass over the (N, T, D) activations instead of two, in the forward and in the backward.
    """
    return torch.addcmul(shift, x, 1 + scale)


_GELU_K0 = math.sqrt(2.0 / math.pi)
_GELU_K1 = _GELU_K0 * 0.044715


def _gelu_tanh_inplace(x: torch.Tensor) -> torch.Tensor:
    """``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` in four fused element-wise passes.

    The same function as ``F.gelu(x, approximate="tanh")`` (to float rounding; its error against a
    float64 reference is no larger), but ~1.6x faster on CPUs where ATen's tanh-GELU kernel is not
    vectorised as well as ``tanh``/``addcmul`` are.
    """
    inner = torch.addcmul(x.new_tensor(_GELU_K0), x, x, value=_GELU_K1)  # K0 + K1·x²
    inner.mul_(x).tanh_()
    return torch.addcmul(x, x, inner).mul_(0.5)  # (x + x·tanh(...)) / 2


class _TanhGELU(torch.autograd.Function):
    """Fast forward (:func:`_gelu_tanh_inplace`), ATen's exact tanh-GELU backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _gelu_tanh_inplace(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """DiT's GELU (tanh approximation), with the faster element-wise forward on CPU in float32.

    GPUs and other dtypes use ``F.gelu``. ``torch.compile`` traces the same path, so compiled and eager
    CPU models compute the same function.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.gelu(x, approximate="tanh")
    if x.requires_grad and torch.is_grad_enabled():
        return _TanhGELU.apply(x)
    return _gelu_tanh_inplace(x)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens via a strided conv (timm's ``PatchEmbed`` key names)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h*w, D)


class TimestepEmbedder(nn.Module):
    """Timestep -> (N, D): 256 fixed sinusoidal features, then Linear-SiLU-Linear (``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> (N, D), with label dropout to the null class ``num_classes`` for CFG training.

    As in the official code the table has a null row only when ``dropout_prob > 0`` (this keeps the
    shapes of official checkpoints); the null class is index ``num_classes``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped labels by the null class: where ``force_drop_ids == 1``, else at random with
        probability ``dropout_prob`` from the global RNG (the official semantics; fasterdit's trainer always
        passes its own mask, drawn with the step's generator, see ``fasterdit.train.step.Draws``)."""
        if not self.has_null_class:
            raise ConfigError(
                "class_dropout_prob",
                "this model has no null class (it was built with class_dropout_prob=0), so labels "
                "cannot be dropped; build it with class_dropout_prob > 0 to use classifier-free guidance",
            )
        if force_drop_ids is not None:
            drop = force_drop_ids.to(labels.device) == 1
        else:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        return torch.where(drop, self.num_classes, labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA; ``qkv`` packs [q | k | v], each head-major like timm."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale head_dim**-0.5, as timm
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Linear - GELU(tanh) - Linear, timm's ``Mlp`` key names (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))  # = self.act, computed faster on CPU (see gelu_tanh)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: c regresses shift/scale/gate for both sub-blocks.

    The gates start at zero (see ``DiT.initialize_weights``), so every block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)  # six (N, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        # gated residuals as one addcmul each (x + gate·f), like modulate
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN (shift/scale, no gate) then a linear map from each token to its p*p*C_out patch values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


def as_hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    hw = tuple(int(s) for s in input_size)
    if len(hw) != 2:
        raise ConfigError("input_size", f"expected an int or (height, width), got {input_size!r}")
    return hw  # type: ignore[return-value]


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone (DiT), official parameter layout.

    Args:
        input_size: spatial size of the input (int or (H, W)); a multiple of ``patch_size``.
        patch_size: side of the square patches that become tokens.
        in_channels: input channels (1 for MNIST pixels, 4 for SD-VAE latents, ...).
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        class_dropout_prob: label-dropout probability during training; > 0 adds the null class.
        num_classes: number of classes; 0 or None builds an unconditional model (no ``y_embedder``;
            ``y`` is ignored and classifier-free guidance is unavailable).
        learn_sigma: output 2*in_channels channels, the second half for the learned variance.
        grad_checkpointing: recompute each block's activations in backward (saves memory).
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int | None = 1000,
        learn_sigma: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        height, width = as_hw(input_size)
        num_classes = int(num_classes or 0)
        sizes = (height, width, patch_size, in_channels, hidden_size, depth, num_heads, num_classes)
        validate_config(*sizes, class_dropout_prob)
        self.config = dict(
            input_size=input_size if isinstance(input_size, int) else [height, width],
            patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
            num_classes=num_classes, learn_sigma=learn_sigma,
        )  # fmt: skip
        self.config_name: str | None = None  # set by create_model
        self.input_size = (height, width)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid_size = (height // patch_size, width // patch_size)
        self.grad_checkpointing = grad_checkpointing

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = (
            LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        )
        # Fixed, not trained; a Parameter (not a buffer) because official checkpoints store it so.
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        if self.pos_embed.device.type != "meta":  # meta: shapes only (cost estimates, checkpoint loading)
            self.initialize_weights()

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def initialize_weights(self) -> None:
        """The official initialisation; the zeroed adaLN and output layers make the initial output 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        pos = sincos_pos_embed_2d(self.hidden_size, *self.grid_size).float()
        self.pos_embed.data.copy_(pos.unsqueeze(0))
        w = self.x_embedder.proj.weight.data  # initialise like a Linear over the flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, h*w, p*p*C) -> (N, C, h*p, w*p); each token's values are ordered (p_row, p_col, C)."""
        p, c = self.patch_size, self.out_channels
        h, w = self.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the recipe's target for noisy inputs.

        Args:
            x: (N, C, H, W) noisy images or latents, (H, W) == ``input_size``.
            t: (N,) or scalar float tensor, the model's timestep input (the recipe maps t in [0, 1]
               to it, e.g. 0..999 for DiT's DDPM chain).
            y: (N,) long class labels, ``num_classes`` meaning "no class"; ignored when unconditional.
            force_drop_ids: optional (N,) tensor; rows equal to 1 get the null class (official semantics).
                Without it, training mode drops labels at random from the global RNG, as the official
                code; the trainer always passes the mask of its ``Draws``.
        """
        if x.shape[1:] != (self.in_channels, *self.input_size):
            raise UserError(
                f"DiT expects inputs of shape (N, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                raise UserError("this DiT is class-conditional: pass labels y (use num_classes for 'none')")
            c = c + self.y_embedder(y, self.training, force_drop_ids)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, c, use_reentrant=False) if use_ckpt else block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float | torch.Tensor,
        guide_channels: int | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance in one batched pass, with the official calling convention.

        The batch holds the conditional half first and the unconditional half (labels = ``num_classes``)
        second; only the first half of ``x`` is used. Returns the full batch, both halves equal to
        ``uncond + cfg_scale * (cond - uncond)`` on the guided channels; the other channels are passed
        through per row.

        ``guide_channels=None`` guides every prediction channel (the first ``in_channels``; the learned
        variance channels are not a prediction and are never guided by default). The official sampler
        guides only the first 3 channels of its 4-channel latents: pass ``guide_channels=3`` to reproduce
        its numbers.
        """
        if self.y_embedder is None:
            raise UserError("classifier-free guidance needs a class-conditional model (num_classes > 0)")
        n = x.shape[0]
        if n % 2:
            raise UserError(f"forward_with_cfg needs an even batch (cond half + uncond half), got {n}")
        g = guided_channels(guide_channels, self.in_channels, self.out_channels)
        half = x[: n // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided = cfg_mix(*out.chunk(2, dim=0), cfg_scale, g)
        return torch.cat([torch.cat([guided, guided], dim=0), out[:, g:]], dim=1)


def validate_config(
    height: int,
    width: int,
    patch_size: int,
    in_channels: int,
    hidden_size: int,
    depth: int,
    num_heads: int,
    num_classes: int,
    class_dropout_prob: float,
) -> None:
    """Reject impossible configurations with an error that names the field."""
    if patch_size < 1:
        raise ConfigError("patch_size", f"must be >= 1, got {patch_size}")
    if height < 1 or width < 1 or height % patch_size or width % patch_size:
        raise ConfigError(
            "input_size", f"must be a positive multiple of patch_size={patch_size}, got {height}x{width}"
        )
    if in_channels < 1:
        raise ConfigError("in_channels", f"must be >= 1, got {in_channels}")
    if depth < 0:
        raise ConfigError("depth", f"must be >= 0, got {depth}")
    if num_heads < 1 or hidden_size % num_heads:
        raise ConfigError("num_heads", f"must divide hidden_size={hidden_size}, got {num_heads}")
    if hidden_size % 4:
        raise ConfigError(
            "hidden_size", f"must be a multiple of 4 (2-D sin-cos embedding), got {hidden_size}"
        )
    if num_classes < 0:
        raise ConfigError("num_classes", f"must be >= 0 (0 = unconditional), got {num_classes}")
    if not 0.0 <= class_dropout_prob < 1.0:
        raise ConfigError("class_dropout_prob", f"must be in [0, 1), got {class_dropout_prob}")


# --------------------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """The architecture part of a named config; data-dependent sizes are given at build time."""

    depth: int
    hidden_size: int
    patch_size: int
    num_heads: int
    note: str = ""

    def arch(self) -> dict[str, int]:
        return dict(depth=self.depth, hidden_size=self.hidden_size, patch_size=self.patch_size,
                    num_heads=self.num_heads)  # fmt: skip


def _family(prefix: str, depth: int, hidden: int, heads: int, patches: tuple[int, ...], note: str = ""):
    return {f"{prefix}/{p}": DiTConfig(depth, hidden, p, heads, note) for p in patches}


#: Every named configuration. The official twelve (Table 1 of the paper; head dim 64, XL 72),
#: then three small families with head dim 64. Parameter counts (learn_sigma=True):
#:   DiT-Mi/2  1.27M on 8x8x1 with 10 classes    -- micro: the 8x8 digits, unit tests, seconds on CPU
#:   DiT-Ti/4  4.18M on 28x28x1 with 10 classes  -- tiny: 28x28 MNIST at 49 tokens, the CPU demo
#:   DiT-XS/2  22.3M on 32x32x4 with 1000 classes -- DiT-S width at 8 blocks, for throughput benchmarks
#: (``fasterdit info --list`` prints them all.)
CONFIGS: dict[str, DiTConfig] = {
    **_family("DiT-XL", 28, 1152, 16, (2, 4, 8), "official"),
    **_family("DiT-L", 24, 1024, 16, (2, 4, 8), "official"),
    **_family("DiT-B", 12, 768, 12, (2, 4, 8), "official"),
    **_family("DiT-S", 12, 384, 6, (2, 4, 8), "official"),
    **_family("DiT-XS", 8, 384, 6, (2, 4), "benchmark size (~22M)"),
    **_family("DiT-Ti", 6, 192, 3, (2, 4), "CPU: 28x28 MNIST (~4M)"),
    **_family("DiT-Mi", 4, 128, 2, (1, 2), "CPU: 8x8 digits, tests (~1.3M)"),
}

#: Official-style registry: name -> constructor taking the remaining DiT keyword arguments.
DiT_models: dict[str, Callable[..., DiT]] = {
    name: functools.partial(DiT, **cfg.arch()) for name, cfg in CONFIGS.items()
}


def create_model(name: str, **kwargs) -> DiT:
    """Build a named config, e.g. ``create_model("DiT-XL/2", input_size=32, in_channels=4)``.

    ``kwargs`` are the data-dependent DiT arguments (input_size, in_channels, num_classes, learn_sigma,
    class_dropout_prob, mlp_ratio, grad_checkpointing); the architecture of a name is fixed.
    """
    if name not in CONFIGS:
        raise ConfigError("model", f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    fixed = set(CONFIGS[name].arch()) & set(kwargs)
    if fixed:
        raise ConfigError(
            "model", f"{name} fixes {', '.join(sorted(fixed))}; build fasterdit.models.DiT directly instead"
        )
    model = DiT_models[name](**kwargs)
    model.config_name = name
    return model
