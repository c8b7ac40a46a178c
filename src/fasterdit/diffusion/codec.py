"""Mapping <-> config dataclass for the recipe's parts: written once for Recipe, its loss and sampler
sections and DataScaling.

Why: each of them used to check unknown keys and copy its fields by hand; one helper keeps the rule
(an unknown key fails, naming it and the allowed ones) and the error's field naming the same for all.
Values are not coerced here (a recipe is strict: ``validate`` checks types and ranges); the run
config's ``--set`` strings are parsed by ``train/config.py`` before they reach a recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import fields
from typing import Any

from fasterdit.errors import ConfigError

__all__ = ["dataclass_from_mapping", "field_dict", "reject_unknown"]


def _public_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if not f.name.startswith("_")]


def reject_unknown(d: Mapping[str, Any], allowed: Collection[str], prefix: str) -> None:
    """ConfigError naming the first key of ``d`` not in ``allowed`` (as ``prefix.key``), and the allowed."""
    unknown = set(d) - set(allowed)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"{prefix}.{key}" if prefix else key, f"unknown key; allowed keys: {', '.join(sorted(allowed))}"
        )


def dataclass_from_mapping(cls: type, d: Any, prefix: str) -> Any:
    """``cls(**d)`` from a mapping (None: the defaults; an instance is kept), unknown keys refused."""
    if d is None:
        return cls()
    if isinstance(d, cls):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(prefix, f"must be a mapping, got {type(d).__name__}")
    reject_unknown(d, _public_fields(cls), prefix)
    return cls(**copy.deepcopy(dict(d)))


def field_dict(obj: Any) -> dict[str, Any]:
    """The public fields of a dataclass instance as a plain dict (values deep-copied)."""
    return {name: copy.deepcopy(getattr(obj, name)) for name in _public_fields(type(obj))}
