"""Analytic cost model of a DiT training step: parameters, FLOPs, activation memory, time on named GPUs.

Why analytic: ``fasterdit train --dry-run`` and ``fasterdit info`` must answer "will this fit and how
long will it take" on a laptop, instantly, for models that would not fit in its memory: a config
name is costed from its sizes alone, nothing is built.

Conventions:

* FLOPs = 2 x multiply-accumulates (MACs). The DiT paper's "Gflops" column counts MACs (fvcore):
  DiT-XL/2 at 256px is 118.6 G there and ~237 GFLOPs here.
* Counted: every matmul (patch-embedding conv, all linear layers incl. the timestep MLP and the
  adaLN regressions, attention's QK^T and AV). Not counted: norms, activations, softmax, additions
  (a few % of the time, none of the tensor-core FLOPs).
* Training step = forward + backward ~= 3 x forward; with gradient checkpointing the blocks'
  forward is recomputed, ~= 4 x forward.
* Activation memory assumes every saved tensor is stored in ``dtype`` and a fused (flash /
  memory-efficient) attention that keeps no T x T matrix (``attention="math"`` adds it). Autocast
  keeps a few tensors (norm outputs) in float32, so real usage can be ~10-20% higher.
* Time = FLOPs / (peak dense tensor-core throughput x MFU). MFU (model FLOPs utilisation) 40% is a
  typical value for well-tuned transformer training at these sizes; the real number depends on the
  batch, the sequence length and the kernels, so treat it as an order-of-magnitude planning aid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fasterdit.errors import ConfigError
from fasterdit.models.dit import CONFIGS, DiT, as_hw, validate_config

_DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32",
           "float32": "fp32"}  # fmt: skip
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class GPUSpec:
    """Peak dense tensor-core TFLOP/s per dtype (fp32 = TF32 where the GPU has it) and memory in GiB."""

    name: str
    memory_gb: float
    peak_tflops: dict[str, float | None]
    note: str = ""


#: Vendor datasheet peaks, dense (no 2:4 sparsity). fp32 means TF32 tensor cores (V100: plain FP32).
GPUS: dict[str, GPUSpec] = {
    "A100-40GB": GPUSpec("A100-40GB", 40, {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    "A100-80GB": GPUSpec("A100-80GB", 80, {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    "H100-SXM": GPUSpec("H100-SXM", 80, {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    "RTX-4090": GPUSpec("RTX-4090", 24, {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}, "fp32 accumulate"),
    "V100": GPUSpec("V100", 32, {"bf16": None, "fp16": 125.0, "fp32": 15.7}, "SXM2 32GB; no bf16"),
}


@dataclass(frozen=True)
class GPUEstimate:
    name: str
    memory_gb: float
    peak_tflops: float | None  # None: the GPU has no tensor cores for this dtype
    seconds_per_step: float | None
    memory_needed_gb: float

    @property
    def fits(self) -> bool:
        return self.memory_needed_gb <= 0.9 * self.memory_gb  # leave room for the allocator, CUDA context


@dataclass
class CostEstimate:
    """Cost of one training step of a DiT config; ``format()`` renders it as a table."""

    model_name: str
    input_size: tuple[int, int]
    in_channels: int
    batch_size: int
    tokens: int
    params: int
    trainable_params: int
    forward_flops_per_sample: int
    train_flops_per_step: int
    activation_bytes: int
    activation_bytes_checkpointed: int
    state_bytes: int
    dtype: str
    mfu: float
    grad_checkpointing: bool
    num_gpus: int
    gpus: list[GPUEstimate] = field(default_factory=list)

    @property
    def forward_macs_per_sample(self) -> int:
        """What the DiT paper reports as "Gflops"."""
        return self.forward_flops_per_sample // 2

    @property
    def memory_bytes_per_gpu(self) -> int:
        act = self.activation_bytes_checkpointed if self.grad_checkpointing else self.activation_bytes
        return self.state_bytes + act

    def format(self) -> str:
        h, w = self.input_size
        act, act_ck = self.activation_bytes, self.activation_bytes_checkpointed
        per_gpu = self.batch_size // self.num_gpus
        rows = [
            f"model                {self.model_name}  (input {self.in_channels}x{h}x{w}, "
            f"{self.tokens} tokens)",
            f"parameters           {self.params:,} ({self.params / 1e6:.2f} M; trainable "
            f"{self.trainable_params:,})",
            f"forward / sample     {_si(self.forward_flops_per_sample)}FLOPs = "
            f"{_si(self.forward_macs_per_sample)}MACs (the DiT paper's 'Gflops' count MACs)",
            f"train / step         {_si(self.train_flops_per_step)}FLOPs  (batch {self.batch_size}, "
            f"{'4' if self.grad_checkpointing else '3'} x forward"
            f"{', gradient checkpointing' if self.grad_checkpointing else ''})",
            f"model state          {_gb(self.state_bytes)}  (fp32 weights + grads + AdamW + EMA, per GPU)",
            f"activations / GPU    {_gb(act)} plain, {_gb(act_ck)} checkpointed  "
            f"({self.dtype}, batch {per_gpu} per GPU)",
            "",
            f"estimated time per step on {self.num_gpus} GPU(s), {self.dtype}, assumed MFU "
            f"{self.mfu:.0%} of dense peak:",
            f"  {'GPU':<11}{'peak TFLOP/s':>13}{'ms/step':>10}{'steps/s':>9}{'memory/GPU':>18}",
        ]
        for g in self.gpus:
            peak = "n/a" if g.peak_tflops is None else f"{g.peak_tflops:g}"
            ms = "n/a" if g.seconds_per_step is None else f"{1e3 * g.seconds_per_step:.3g}"
            rate = "n/a" if g.seconds_per_step is None else f"{1 / g.seconds_per_step:.3g}"
            mem = f"{g.memory_needed_gb:.1f}/{g.memory_gb:g} GiB{'' if g.fits else ' !'}"
            rows.append(f"  {g.name:<11}{peak:>13}{ms:>10}{rate:>9}{mem:>18}")
        if any(not g.fits for g in self.gpus):
            rows.append("  ! does not fit: lower the batch, use more GPUs or gradient checkpointing")
        return "\n".join(rows)


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def forward_flops(
    tokens: int,
    hidden: int,
    depth: int,
    patch: int,
    in_channels: int,
    out_channels: int,
    mlp_hidden: int,
    freq_dim: int = 256,
) -> int:
    """Matmul FLOPs (2 x MACs) of one DiT forward pass for one sample."""
    t, d = tokens, hidden
    patch_embed = 2 * t * (in_channels * patch * patch) * d
    t_embed = 2 * (freq_dim * d + d * d)
    block = (
        2 * d * 6 * d  # adaLN regression (once per sample, not per token)
        + 2 * t * d * 3 * d  # qkv
        + 2 * 2 * t * t * d  # QK^T and AV, summed over heads
        + 2 * t * d * d  # out projection
        + 2 * 2 * t * d * mlp_hidden  # fc1 + fc2
    )
    final = 2 * d * 2 * d + 2 * t * d * patch * patch * out_channels
    return patch_embed + t_embed + depth * block + final


def activation_elements(
    tokens: int,
    hidden: int,
    depth: int,
    heads: int,
    mlp_hidden: int,
    pixels_in: int,
    pixels_out: int,
    checkpointed: bool,
    attention: str = "flash",
) -> int:
    """Elements of saved activations per sample for backward (see the module docstring).

    Per block: the inputs of norm1/norm2 (2), their normalised outputs kept by the modulation (2), the
    inputs of qkv/fc1 (2), q, k, v (3), the attention output and the proj input (2), the two branch
    outputs kept for the gate gradients (2), and the MLP hidden before and after GELU (2 x mlp_hidden),
    plus the softmax statistics (heads x T). Checkpointing keeps only each block's input and recomputes
    one block at a time during backward.
    """
    t, d = tokens, hidden
    block = 13 * t * d + 2 * t * mlp_hidden + heads * t + 4 * t
    if attention == "math":
        block += heads * t * t
    elif attention != "flash":
        raise ConfigError("attention", f"must be 'flash' or 'math', got {attention!r}")
    outside = 3 * t * d + pixels_in + 2 * pixels_out  # final layer, conv input, output + loss
    blocks = depth * t * d + block if checkpointed else depth * block
    return blocks + outside


@dataclass(frozen=True)
class Arch:
    """The sizes that determine a DiT's cost, from a built model or from a config name + data sizes."""

    name: str
    input_size: tuple[int, int]
    patch: int
    in_channels: int
    out_channels: int
    hidden: int
    depth: int
    heads: int
    mlp_hidden: int
    label_rows: int  # rows of the label table (num_classes + null), 0 when unconditional
    freq_dim: int = 256

    @property
    def tokens(self) -> int:
        return (self.input_size[0] // self.patch) * (self.input_size[1] // self.patch)

    @classmethod
    def of_model(cls, model: DiT) -> Arch:
        blocks = len(model.blocks)
        table = model.y_embedder.embedding_table.num_embeddings if model.y_embedder is not None else 0
        return cls(
            model.config_name or "DiT (custom)", model.input_size, model.patch_size, model.in_channels,
            model.out_channels, model.hidden_size, blocks, model.num_heads,
            model.blocks[0].mlp.fc1.out_features if blocks else 4 * model.hidden_size, table,
            model.t_embedder.frequency_embedding_size,
        )  # fmt: skip

    @classmethod
    def of_name(
        cls,
        name: str,
        input_size: int | tuple[int, int] = 32,
        in_channels: int = 4,
        num_classes: int | None = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
    ) -> Arch:
        if name not in CONFIGS:
            raise ConfigError("model", f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
        c = CONFIGS[name]
        h, w = as_hw(input_size)
        classes = int(num_classes or 0)
        validate_config(h, w, c.patch_size, in_channels, c.hidden_size, c.depth, c.num_heads, classes,
                        class_dropout_prob)  # fmt: skip
        rows = classes + int(class_dropout_prob > 0) if classes else 0
        out = 2 * in_channels if learn_sigma else in_channels
        return cls(name, (h, w), c.patch_size, in_channels, out, c.hidden_size, c.depth, c.num_heads,
                   int(c.hidden_size * mlp_ratio), rows)  # fmt: skip

    def param_count(self) -> tuple[int, int]:
        """(all parameters, trainable ones): everything but the fixed pos_embed is trained."""
        d, p, m = self.hidden, self.patch, self.mlp_hidden
        block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (d * 6 * d + 6 * d)
        total = (
            self.in_channels * p * p * d + d  # patch embedding conv
            + self.freq_dim * d + d + d * d + d  # timestep MLP
            + self.label_rows * d  # label table
            + self.depth * block
            + d * 2 * d + 2 * d + d * p * p * self.out_channels + p * p * self.out_channels  # final layer
        )  # fmt: skip
        pos = self.tokens * d
        return total + pos, total


def estimate_cost(
    model: str | DiT,
    input_size: int | tuple[int, int] | None = None,
    in_channels: int | None = None,
    batch_size: int = 1,
    *,
    num_classes: int | None = 1000,
    learn_sigma: bool = True,
    dtype: str = "bf16",
    mfu: float = 0.4,
    grad_checkpointing: bool = False,
    attention: str = "flash",
    num_gpus: int = 1,
    gpus: list[str] | None = None,
) -> CostEstimate:
    """Estimate the cost of training ``model`` (a config name or a built DiT) with a global batch.

    For a name, ``input_size`` defaults to 32 and ``in_channels`` to 4 (ImageNet 256 latents), and
    nothing is built (instant even for DiT-XL); for a built model they default to (and must equal)
    the model's own, and ``num_classes``/``learn_sigma`` are read from it.
    """
    if isinstance(model, DiT):
        arch = Arch.of_model(model)
        if input_size is not None and as_hw(input_size) != arch.input_size:
            raise ConfigError("input_size", f"the model was built for {arch.input_size}, got {input_size}")
        if in_channels is not None and in_channels != arch.in_channels:
            raise ConfigError("in_channels", f"the model was built for {arch.in_channels}, got {in_channels}")
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        arch = Arch.of_name(model, 32 if input_size is None else input_size,
                            4 if in_channels is None else in_channels, num_classes, learn_sigma)  # fmt: skip
        params, trainable = arch.param_count()
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    if num_gpus < 1 or batch_size % num_gpus:
        raise ConfigError("num_gpus", f"must be >= 1 and divide the batch ({batch_size}), got {num_gpus}")
    if not 0 < mfu <= 1:
        raise ConfigError("mfu", f"must be in (0, 1], got {mfu}")
    if dtype not in _DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    dt = _DTYPES[dtype]

    fwd = forward_flops(arch.tokens, arch.hidden, arch.depth, arch.patch, arch.in_channels,
                        arch.out_channels, arch.mlp_hidden, arch.freq_dim)  # fmt: skip
    train = (4 if grad_checkpointing else 3) * fwd * batch_size
    pixels = arch.input_size[0] * arch.input_size[1]
    act_args = (arch.tokens, arch.hidden, arch.depth, arch.heads, arch.mlp_hidden, pixels * arch.in_channels,
                pixels * arch.out_channels)  # fmt: skip
    per_gpu = batch_size // num_gpus
    act = per_gpu * _BYTES[dt] * activation_elements(*act_args, checkpointed=False, attention=attention)
    act_ck = per_gpu * _BYTES[dt] * activation_elements(*act_args, checkpointed=True, attention=attention)
    state = 4 * params + 4 * trainable + 8 * trainable + 4 * params  # weights, grads, AdamW m & v, EMA

    est = CostEstimate(
        model_name=arch.name, input_size=arch.input_size, in_channels=arch.in_channels, batch_size=batch_size,
        tokens=arch.tokens, params=params, trainable_params=trainable, forward_flops_per_sample=fwd,
        train_flops_per_step=train, activation_bytes=act, activation_bytes_checkpointed=act_ck,
        state_bytes=state, dtype=dt, mfu=mfu, grad_checkpointing=grad_checkpointing, num_gpus=num_gpus,
    )  # fmt: skip
    for gname in gpus or list(GPUS):
        if gname not in GPUS:
            raise ConfigError("gpus", f"unknown GPU {gname!r}; known: {', '.join(GPUS)}")
        spec = GPUS[gname]
        peak = spec.peak_tflops.get(dt)
        secs = None if peak is None else train / num_gpus / (peak * 1e12 * mfu)
        est.gpus.append(GPUEstimate(gname, spec.memory_gb, peak, secs, est.memory_bytes_per_gpu / 2**30))
    return est
