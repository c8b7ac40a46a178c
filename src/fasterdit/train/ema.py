"""Exponential moving average of the weights, in fp32, updated after every optimizer step.

Why a separate fp32 copy with a device-side "skip" weight: the EMA must not drift when an optimizer
step is skipped for a non-finite loss, and checking that on the host would force a GPU->CPU sync every
step. The update is ``ema ← lerp(ema, θ, w) = ema + w · (θ − ema)`` with ``w = (1 − decay) · ok`` as a
device tensor, so a skipped step (ok = 0) leaves the EMA bit-for-bit unchanged without the host ever
looking.

Why one ``lerp``: it reads the EMA and the weights once and writes the EMA once (3 sweeps over the
weights); a ``sub``, ``mul``, ``add`` chain takes 8 and a temporary as large as the model. ``lerp``
rounds once (``torch.lerp`` computes ``ema + w·d`` with a fused multiply-add, ``d = θ − ema``), where
the chain rounded ``w·d`` and then the sum: so the two agree to the last bit except where that double
rounding was off (by one unit in the last place when ``|w·d| ≪ |ema|``, as in training). Measured: 0.02 %
of the values per update for ``|θ − ema| ≈ 0.01·|ema|``, 0.25 % for ``≈ |ema|``, in float32 and float64
alike; tests/test_ema.py checks lerp against the exactly rounded value.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "lerp_all_", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def lerp_all_(ema: list[torch.Tensor], src: list[torch.Tensor], weight: float | torch.Tensor) -> None:
    """``e ← e + weight·(s − e)`` for each pair, in one fused pass each; ``weight`` a number, or a 0-dim
    tensor on the tensors' device (of their dtype) that the host never reads."""
    if isinstance(weight, torch.Tensor):
        # foreach-lerp's scalar form would read a 0-dim tensor with .item() (a host sync on CUDA); its
        # list form takes one weight tensor per tensor and leaves them on the device
        torch._foreach_lerp_(ema, src, [weight] * len(ema))
    else:
        torch._foreach_lerp_(ema, src, weight)


class EMA:
    """EMA of a model's floating-point parameters and buffers.

    ``warmup=True`` uses ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the classic ramp), so a
    short run does not average in the random initialisation for 1 / (1 − decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        model = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        src = dict(model.named_parameters())
        self._names = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
        wanted = set(self._names)
        self._ema = [p for n, p in self.model.named_parameters() if n in wanted]
        self._src_refs = [src[n] for n in self._names]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None, ok: torch.Tensor | None = None) -> None:
        """Move the EMA toward the current weights; ``ok`` (0-dim, on device) = 0 skips without a sync.

        ``num_updates`` counts calls (host side); with ``ok`` = 0 the ramp still advances, which only
        matters with ``warmup`` and is identical in straight and resumed runs.
        """
        params = self._src_refs if model is None else self._source_params(model)
        weight = 1.0 - self.current_decay()
        src = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in params]
        if ok is None:
            lerp_all_(self._ema, src, weight)
        else:
            lerp_all_(self._ema, src, ok.to(device=self._ema[0].device, dtype=torch.float32) * weight)
        self.num_updates += 1

    def _source_params(self, model: nn.Module) -> list[torch.Tensor]:
        named = dict(unwrap_model(model).named_parameters())
        return [named[n] for n in self._names]

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Set the EMA equal to the model (used when starting from pretrained weights)."""
        for e, p in zip(self._ema, self._source_params(model)):
            e.copy_(p.detach().float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def to(self, device: torch.device | str) -> EMA:
        self.model.to(device)
        return self
