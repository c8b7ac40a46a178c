"""Mapping <-> typed dataclass: the one codec of the run config and the recipe.

Why one: a run config (``config.yaml``, ``--set``) and a recipe (a recipe YAML, ``recipe_overrides``, the
recipe saved with a checkpoint) are both YAML read into nested dataclasses. Written once, a value is
parsed the same way in either, and a misspelt key fails the same way, naming the dotted field
(``optim.lrr``, ``loss.typo``) with a did-you-mean and the allowed keys.

Values are coerced to the field's declared type: PyYAML reads ``1e-4`` (no dot) as a string and ``--set``
values arrive as strings, so numbers, booleans, nulls and lists are parsed from either form, and a value
that fits no declared type is refused naming the field. Ranges and choices are not the codec's: the
owners' ``validate`` checks them (:meth:`RunConfig.validate`, :meth:`Recipe.validate`), and also catches
wrong types in objects built directly in Python. Fields whose name starts with ``_`` (caches) are not
part of the mapping. Parsing YAML text is the callers' (always ``yaml.safe_load``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from fasterdit.errors import ConfigError

__all__ = ["coerce", "field_type", "from_mapping", "to_mapping", "unknown_field"]

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def _is_dataclass_type(tp: object) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: object) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    return tp.__name__ if isinstance(tp, type) else str(tp)


def unknown_field(name: str, key: str, known: list[str]) -> ConfigError:
    """The error for ``key`` under the section ``name``: the closest known field, and all of them."""
    full = f"{name}.{key}" if name else key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(full, f"unknown field{hint}; allowed keys: {', '.join(sorted(known))}")


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` (from YAML or a ``--set`` string) as the declared type ``tp``, or ConfigError(name, ...).

    A null section or mapping is empty (a YAML section with every line commented out), and one number
    where a list is declared is a list of one (``classes: 3`` as ``--set sample.classes=3``).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        if is_none and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and isinstance(value, (Mapping, list, tuple)):  # its own, more precise error
            return coerce(value, options[0], name)
        for arg in options:
            try:
                return coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(name, f"expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return copy.deepcopy(value)
    if _is_dataclass_type(tp):
        return value if isinstance(value, tp) else from_mapping(tp, value, name)
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"expected a mapping, got {value!r}")
        return copy.deepcopy(dict(value))
    if value is None:
        raise ConfigError(name, f"expected {_type_name(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
        if not math.isfinite(f):  # .inf / .nan parse as floats and would train NaN weights
            raise ConfigError(name, f"must be a finite number, got {value!r}")
        return f
    if tp is str:
        if isinstance(value, (Mapping, list, tuple)):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(name, f"unsupported field type {tp!r}")  # pragma: no cover - programming error


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, name: str = "") -> T:
    """``cls`` from a mapping (None: the defaults), every value coerced to its field's declared type
    and every key checked, errors naming ``name.key``. Nested dataclass fields are read the same way."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(name or "config", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in _public_fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise unknown_field(name, str(key), known)
        kwargs[key] = coerce(value, hints[key], f"{name}.{key}" if name else key)
    return cls(**kwargs)


def to_mapping(obj: object) -> dict[str, Any]:
    """The public fields of a dataclass instance as plain YAML-safe data (nested sections as mappings,
    values copied), which :func:`from_mapping` reads back to an equal object. An integer in a field
    declared float is written as a float, as a loaded one would be."""
    hints = typing.get_type_hints(type(obj))
    out: dict[str, Any] = {}
    for f in _public_fields(type(obj)):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = to_mapping(value)
        elif hints[f.name] is float and isinstance(value, int) and not isinstance(value, bool):
            out[f.name] = float(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def field_type(cls: type, key: str) -> Any:
    """The declared type of the dotted field ``key`` of ``cls`` (``optim.lr``), checking the path:
    ConfigError naming the first unknown part, or a part that is a value rather than a section."""
    parts = key.split(".")
    section: type = cls
    for i, part in enumerate(parts):
        known = [f.name for f in _public_fields(section)]
        if part not in known:
            raise unknown_field(".".join(parts[:i]), part, known)
        tp = typing.get_type_hints(section)[part]
        if i == len(parts) - 1:
            return tp
        if not _is_dataclass_type(tp):
            raise ConfigError(".".join(parts[: i + 1]), f"is not a section; cannot set {key!r}")
        section = tp
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns on the last part
