"""What a checkpoint records about its training data: enough to sample and score it without the data.

Why typed: ``fasterdit sample``/``eval`` and the trainer's own evaluation decide from it whether samples
are latents (decode them with ``vae``), which embedded dataset scores them (``origin``) and what shape
the model generates; a dict read key by key let a missing key surface as ``None`` far from the cause.
Written by the trainer (``meta.json`` ``"data"``), read back by :mod:`fasterdit.generate.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasterdit.data.embedded import Origin
from fasterdit.data.source import BatchSource
from fasterdit.errors import DataError

__all__ = ["DataDescription"]


@dataclass(frozen=True)
class DataDescription:
    source: str  #: the ``data.source`` the run trained on (a name or a folder)
    channels: int
    resolution: int
    num_classes: int  #: 0 for an unconditional model
    is_latent: bool
    vae: str | None  #: the VAE that decodes the latents (None for pixels)
    origin: Origin | None  #: the embedded dataset the images came from (offline metrics), if any
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()
    pooled_std: float | None = None
    size: int | None = None

    @classmethod
    def of_source(cls, source: BatchSource, spec: str) -> DataDescription:
        """The description of an open data source (what the trainer records)."""
        return cls(
            source=spec,
            channels=int(source.channels),
            resolution=int(source.resolution),
            num_classes=int(source.num_classes),
            is_latent=bool(source.is_latent),
            vae=source.vae,
            origin=source.origin,
            channel_mean=tuple(float(v) for v in source.stats.mean),
            channel_std=tuple(float(v) for v in source.stats.std),
            pooled_std=float(source.stats.pooled_std),
            size=len(source),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "channels": self.channels,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "is_latent": self.is_latent,
            "vae": self.vae,
            "origin": self.origin.to_dict() if self.origin is not None else None,
            "channel_mean": list(self.channel_mean),
            "channel_std": list(self.channel_std),
            "pooled_std": self.pooled_std,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> DataDescription:
        """Read back what :meth:`to_dict` wrote; DataError naming ``where`` if it is not that."""
        if not isinstance(d, dict):
            raise DataError(f"{where}: its data description is not a mapping ({type(d).__name__})")
        try:
            return cls(
                source=str(d["source"]),
                channels=int(d["channels"]),
                resolution=int(d["resolution"]),
                num_classes=int(d["num_classes"]),
                is_latent=bool(d["is_latent"]),
                vae=None if d.get("vae") is None else str(d["vae"]),
                origin=Origin.from_dict(d.get("origin")),
                channel_mean=tuple(float(v) for v in d.get("channel_mean") or ()),
                channel_std=tuple(float(v) for v in d.get("channel_std") or ()),
                pooled_std=None if d.get("pooled_std") is None else float(d["pooled_std"]),
                size=None if d.get("size") is None else int(d["size"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            why = f"{type(err).__name__}: {err}"
            raise DataError(f"{where}: its data description is damaged ({why})") from None
