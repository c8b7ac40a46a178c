"""``--dry-run`` of a sampling job: NFE × N × forward FLOPs, and GPU-hours on named GPUs.

Why probe the sampler instead of a formula per sampler: NFE rules differ (Heun's last step, DDPM's
respacing, euler-maruyama's last step), and classifier-free guidance doubles the batch only inside
the guidance interval. Running the real :func:`~fasterdit.diffusion.sampling.sample` on a
one-sample stand-in network (zeros, nothing built) gives the exact count of evaluations and of
doubled ones for every fixed-step sampler. dopri5 is adaptive: its NFE depends on the network, so
the estimate takes ``--steps`` as its NFE and says so.

The forward FLOPs come from the training cost model (:mod:`fasterdit.models.cost`), the time from
the GPUs' dense peak × an assumed MFU (the same planning aid as ``train --dry-run``). Not counted:
the VAE decoder (one pass per sample, next to hundreds of DiT passes) and the Inception features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fasterdit.diffusion.sampling import sample
from fasterdit.errors import ConfigError
from fasterdit.generate.job import SampleSettings
from fasterdit.models.cost import GPUS, Arch, forward_flops

ADAPTIVE = ("dopri5",)


class _Probe(nn.Module):
    """Stands in for the DiT: zeros of its output shape, counting rows per call (2 = a guided pair)."""

    def __init__(self, num_classes: int, out_channels: int):
        super().__init__()
        self.num_classes, self.out_channels = num_classes, out_channels
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.rows.append(int(x.shape[0]))
        return torch.zeros((x.shape[0], self.out_channels, *x.shape[2:]), dtype=x.dtype)


def count_evaluations(arch: Arch, recipe, settings: SampleSettings, num_classes: int) -> tuple[int, int]:
    """(NFE, how many of them are guided pairs) of one sample under ``settings``."""
    probe = _Probe(num_classes, arch.out_channels)
    noise = torch.zeros((1, arch.in_channels, *arch.input_size))
    y = torch.zeros(1, dtype=torch.long) if num_classes else None
    sample(
        probe, recipe, noise, y=y, sampler=settings.sampler, steps=settings.steps,
        cfg_scale=settings.cfg_scale, guidance_interval=settings.guidance_interval,
        guide_channels=settings.guide_channels, generator=torch.Generator().manual_seed(0),
        **settings.sampler_kwargs,
    )  # fmt: skip
    return len(probe.rows), sum(1 for r in probe.rows if r == 2)


@dataclass
class SamplingCost:
    model: str
    num_samples: int
    nfe: int
    guided: int  # evaluations that run the doubled (conditional + unconditional) batch
    adaptive: bool
    forward_flops: int  # one sample, one pass
    mfu: float
    dtype: str
    hours: dict[str, float | None] = field(default_factory=dict)  # GPU name -> GPU-hours

    @property
    def total_flops(self) -> int:
        return self.num_samples * (self.nfe + self.guided) * self.forward_flops

    def format(self) -> str:
        rows = [
            f"model                {self.model}: {self.forward_flops / 1e9:.2f} GFLOPs per forward pass "
            f"(= {self.forward_flops / 2e9:.2f} GMACs, the DiT paper's 'Gflops')",
            f"evaluations / sample NFE {self.nfe}"
            + (" (adaptive sampler: --steps taken as its NFE)" if self.adaptive else "")
            + f", {self.guided} of them guided (2 passes each) -> {self.nfe + self.guided} passes",
            f"samples              {self.num_samples:,}",
            f"total                {self.total_flops / 1e15:.4g} PFLOPs "
            f"(N x passes x GFLOPs; VAE decoding and Inception not counted)",
            f"estimated GPU-hours at {self.mfu:.0%} MFU of the dense "
            + ("bf16 peak:" if self.dtype == "bf16" else "TF32 peak (plain fp32 is slower):"),
        ]
        for name, h in self.hours.items():
            rows.append(
                f"  {name:<11} " + ("n/a (no tensor cores for this dtype)" if h is None else f"{h:.3g} h")
            )
        return "\n".join(rows)


def sampling_cost(
    model: nn.Module,
    recipe,
    settings: SampleSettings,
    *,
    gpus: list[str] | None = None,
    mfu: float = 0.4,
    dtype: str = "bf16",
) -> SamplingCost:
    """The cost of sampling ``settings.num_samples`` images from ``model`` (a DiT; nothing is run on it)."""
    if not 0 < mfu <= 1:
        raise ConfigError("--mfu", f"must be in (0, 1], got {mfu}")
    unknown = [g for g in gpus or () if g not in GPUS]
    if unknown:
        raise ConfigError("--gpu", f"unknown GPU {unknown[0]!r}; known: {', '.join(GPUS)}")
    arch = Arch.of_model(model)
    num_classes = int(model.num_classes or 0)
    adaptive = settings.sampler in ADAPTIVE
    if adaptive:
        nfe = settings.steps
        guided = nfe if settings.cfg_scale != 1.0 and settings.guidance_interval is None else 0
    else:
        nfe, guided = count_evaluations(arch, recipe, settings, num_classes)
    fwd = forward_flops(arch.tokens, arch.hidden, arch.depth, arch.patch, arch.in_channels, arch.out_channels,
                        arch.mlp_hidden, arch.freq_dim)  # fmt: skip
    cost = SamplingCost(arch.name, settings.num_samples, nfe, guided, adaptive, fwd, mfu, dtype)
    for name in gpus or list(GPUS):
        peak = GPUS[name].peak_tflops.get(dtype)
        cost.hours[name] = None if peak is None else cost.total_flops / (peak * 1e12 * mfu) / 3600
    return cost
