"""Data scaling between data space and diffusion space.

The std of the data the diffusion sees sets its *extended* SNR (FasterDiT):
``SNR(t) = α(t)²·std² / σ(t)²``, i.e. ``λ_data(t) = λ(t) + 2·ln std``. Scaling the data therefore moves
the whole SNR distribution seen in training, which is why FasterDiT "modulates" the std and why the
scaling is part of the recipe rather than of the dataset. Modes:

* ``none``: identity.
* ``scalar``: ``x' = multiplier·x`` (e.g. SD-VAE latents × 0.18215 as in DiT).
* ``std``: a scalar chosen from the data, ``x' = x·target_std/std(x)`` (global std, mean kept): the data
  std is *modulated* to ``target_std`` without changing anything else.
* ``channel``: per-channel standardisation, ``x' = (x − μ_c)/s_c·target_std``.

``std`` and ``channel`` need statistics measured on the data: :meth:`DataScaling.resolve` fills them
in (from a data tensor or from given numbers) and returns a resolved copy, which is saved with the
recipe so that sampling inverts exactly the transform used in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from fasterdit.codec import from_mapping, to_mapping
from fasterdit.data.stats import DataStats
from fasterdit.errors import ConfigError

SCALING_MODES = ("none", "scalar", "std", "channel")


def _as_list(v: Tensor | Sequence[float] | float | None) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, Tensor):
        return [float(a) for a in v.detach().double().flatten().cpu()]
    if isinstance(v, (int, float)):
        return [float(v)]
    return [float(a) for a in v]


@dataclass
class DataScaling:
    """Data space <-> diffusion space transform (see the module docstring for the modes).

    Attributes:
        mode: one of :data:`SCALING_MODES`.
        multiplier: the factor of ``scalar`` mode.
        target_std: the std the data is brought to in ``std`` / ``channel`` modes.
        mean: measured per-channel means (``channel``), filled in by :meth:`resolve`.
        std: measured per-channel stds (``channel``) or the one global std (``std``), from :meth:`resolve`.
    """

    mode: str = "none"
    multiplier: float = 1.0
    target_std: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None
    _cache: dict[Any, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    # --- validation and (de)serialisation ------------------------------------------------------------
    def validate(self) -> DataScaling:
        if self.mode not in SCALING_MODES:
            raise ConfigError(
                "scaling.mode", f"unknown mode {self.mode!r}; choose one of {', '.join(SCALING_MODES)}"
            )
        if not (
            isinstance(self.multiplier, (int, float))
            and math.isfinite(self.multiplier)
            and self.multiplier > 0
        ):
            raise ConfigError("scaling.multiplier", f"must be a finite number > 0, got {self.multiplier!r}")
        if not (
            isinstance(self.target_std, (int, float))
            and math.isfinite(self.target_std)
            and self.target_std > 0
        ):
            raise ConfigError("scaling.target_std", f"must be a finite number > 0, got {self.target_std!r}")
        if self.std is not None and not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError("scaling.std", f"measured stds must be finite and > 0, got {self.std}")
        if self.mean is not None and not all(math.isfinite(m) for m in self.mean):
            raise ConfigError("scaling.mean", f"measured means must be finite, got {self.mean}")
        if self.mode == "std" and self.std is not None and len(self.std) != 1:
            raise ConfigError("scaling.std", f"'std' mode uses one global std, got {len(self.std)} values")
        if self.mode == "channel" and (self.mean is None) != (self.std is None):
            raise ConfigError(
                "scaling.mean", "'channel' mode needs both mean and std (or neither, until resolved)"
            )
        if self.mode == "channel" and self.mean is not None and len(self.mean) != len(self.std or []):
            raise ConfigError("scaling.std", "mean and std must have one value per channel")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DataScaling:
        return from_mapping(cls, d, "scaling").validate()

    # --- statistics ---------------------------------------------------------------------------------
    @property
    def needs_stats(self) -> bool:
        return self.mode in ("std", "channel")

    @property
    def is_resolved(self) -> bool:
        """True when forward/inverse can run (stats present if the mode needs them)."""
        return not self.needs_stats or self.std is not None

    def resolve(
        self,
        data: Tensor | None = None,
        *,
        mean: Tensor | Sequence[float] | float | None = None,
        std: Tensor | Sequence[float] | float | None = None,
    ) -> DataScaling:
        """A copy with the measured statistics filled in; a no-op for ``none``/``scalar``.

        Pass either a data tensor (N, C, ...) to measure (per-channel mean/std for ``channel``, the global
        std for ``std``) or the numbers themselves (``std`` mode: one std; ``channel``: per-channel lists).
        """
        if not self.needs_stats:
            return replace(self, _cache={})
        if data is not None:
            x = data.detach().to(torch.float64)
            if self.mode == "std":
                std = x.std()
            else:
                dims = [d for d in range(x.ndim) if d != 1]
                mean, std = x.mean(dim=dims), x.std(dim=dims)
        if std is None:
            raise ConfigError(
                "scaling.std", f"mode {self.mode!r} needs the data's measured std (pass data or std)"
            )
        if self.mode == "channel" and mean is None:
            raise ConfigError(
                "scaling.mean", "mode 'channel' needs the data's per-channel mean (pass data or mean)"
            )
        new = replace(
            self,
            mean=_as_list(mean) if self.mode == "channel" else None,
            std=_as_list(std),
            _cache={},
        )
        return new.validate()

    def _require_resolved(self) -> None:
        if not self.is_resolved:
            raise ConfigError(
                "scaling.std",
                f"mode {self.mode!r} is not resolved: measure the data first (recipe.resolve(data) "
                "or scaling.resolve(data))",
            )

    def _affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift) broadcastable to x with forward(x) = x·scale + shift."""
        key = (x.device, x.dtype, x.ndim)
        if key not in self._cache:
            if self.mode == "none":
                scale, shift = torch.tensor(1.0), torch.tensor(0.0)
            elif self.mode == "scalar":
                scale, shift = torch.tensor(float(self.multiplier)), torch.tensor(0.0)
            elif self.mode == "std":
                scale, shift = torch.tensor(self.target_std / self.std[0]), torch.tensor(0.0)
            else:
                s = torch.tensor(self.std, dtype=torch.float64)
                m = torch.tensor(self.mean, dtype=torch.float64)
                shape = (1, -1) + (1,) * (x.ndim - 2)
                scale = (self.target_std / s).reshape(shape)
                shift = (-m * self.target_std / s).reshape(shape)
            self._cache[key] = (scale.to(x.device, x.dtype), shift.to(x.device, x.dtype))
        return self._cache[key]

    # --- the transform ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Data space -> diffusion space."""
        self._require_resolved()
        if self.mode == "channel" and x.shape[1] != len(self.std):
            raise ConfigError(
                "scaling.std", f"measured on {len(self.std)} channels but the data has {x.shape[1]}"
            )
        scale, shift = self._affine(x)
        return x * scale + shift

    def inverse(self, x: Tensor) -> Tensor:
        """Diffusion space -> data space (exact inverse of :meth:`forward`)."""
        self._require_resolved()
        scale, shift = self._affine(x)
        return (x - shift) / scale

    # --- what the diffusion sees ---------------------------------------------------------------------
    def effective_stds(self, data: DataStats | float) -> tuple[float, list[float] | None]:
        """The std(s) of the data *after* this scaling: the ``std`` in the extended SNR α²·std²/σ².

        ``data`` is the raw data: its measured :class:`DataStats` (then the per-channel stds come back
        too) or just its pooled std. Returns ``(pooled, per-channel or None)``. The one place that knows
        what each mode does to the std, so that the SNR analyser, its figure and ``fasterdit snr`` cannot
        disagree with the transform the trainer applies:

        * ``none``: the raw stds; ``scalar``: ``multiplier`` × each.
        * ``std``: ``target_std / s`` × each, ``s`` the measured global std (the data's own pooled std
          while unresolved, which gives ``target_std`` exactly).
        * ``channel``: per channel ``target_std · s_c / s_measured,c`` (pooled: their root mean square,
          the channel means being 0 after standardisation); ``target_std`` for every channel while
          unresolved, or when the data's channel count differs from the measured one.
        """
        if isinstance(data, DataStats):
            pooled, chans = data.pooled_std, [float(s) for s in data.std]
        else:
            pooled, chans = float(data), None
        if self.mode == "channel":
            target = float(self.target_std)
            if self.std is not None and chans and len(chans) == len(self.std):
                per = [target * s / r for s, r in zip(chans, self.std)]
                return DataStats.from_stds(per).pooled_std, per
            return target, [target] * len(chans) if chans else None
        if self.mode == "none":
            f = 1.0
        elif self.mode == "scalar":
            f = float(self.multiplier)
        else:  # std: one factor for every value
            f = float(self.target_std) / (self.std[0] if self.std is not None else pooled)
        return f * pooled, [f * s for s in chans] if chans else None

    def effective_std(self, data: DataStats | float | None = None) -> float:
        """The pooled form of :meth:`effective_stds`. Without ``data`` only a resolved ``std``/``channel``
        scaling knows it (``target_std``: the data it was measured on)."""
        if data is not None:
            return self.effective_stds(data)[0]
        if not self.needs_stats:
            raise ConfigError("scaling", f"mode {self.mode!r} needs the data std to report the effective std")
        self._require_resolved()
        return float(self.target_std)

    def describe(self) -> str:
        """A few words for legends and tables ("" for ``none``): what the scaling does to the data."""
        if self.mode == "none":
            return ""
        if self.mode == "scalar":
            return f"data ×{self.multiplier:g}"
        if self.mode == "std":
            return f"std→{self.target_std:g}"
        return f"per-channel std→{self.target_std:g}"
