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
part of the mapping.

YAML text is read with :func:`load_yaml` / :func:`load_yaml_file` (a safe loader that also refuses
documents whose aliases expand past :data:`MAX_YAML_NODES` values, files over :data:`MAX_YAML_BYTES` and
files that are not UTF-8), and every value an error message shows goes through :func:`brief`: a value
read from a file can be of any size, and a 412-byte "billion laughs" document once took 3.4 GB and
printed a 351 MB message.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fasterdit.errors import ConfigError

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_NODES",
    "brief",
    "coerce",
    "field_type",
    "from_mapping",
    "load_yaml",
    "load_yaml_file",
    "to_mapping",
    "unknown_field",
]

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}

#: the longest value an error message shows (longer ones are cut, with "...")
MAX_REPR = 200
#: the most values a YAML document may hold, every alias counted at each use: a config or recipe holds
#: a few hundred; a "billion laughs" document of a few lines expands to 10^9
MAX_YAML_NODES = 100_000
#: the largest YAML file read (a config is a few kB)
MAX_YAML_BYTES = 4 * 2**20


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxdict = r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    r.maxstring = r.maxlong = r.maxother = MAX_REPR
    return r


_REPR = _short_repr()


def brief(value: Any) -> str:
    """``repr(value)`` for an error message: at most :data:`MAX_REPR` characters, nested containers
    shortened without being walked in full (``[0, 1, 2, 3, 4, 5, 6, 7, ...]``)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that measures a document before building it: aliases are counted at every use,
    so a document that would expand past :data:`MAX_YAML_NODES` values, or refer to itself, is refused
    while it is still a small graph of nodes (building it is what exhausted memory)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise _YamlTooLarge(
                f"its aliases (*name) expand to {size} values, over the {MAX_YAML_NODES} allowed"
            )
        return node


class _YamlTooLarge(Exception):
    """A YAML document over the bounds of :class:`_BoundedLoader` (the message says which)."""


_IN_PROGRESS = -1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The values of ``node`` with every alias expanded, measured once per distinct node (``memo``), so
    that measuring costs the document's own size, not its expansion."""
    key = id(node)
    if memo.get(key) == _IN_PROGRESS:
        raise _YamlTooLarge("an alias refers to a value that contains it (a recursive document)")
    if key not in memo:
        memo[key] = _IN_PROGRESS
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        memo[key] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[key]


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A parser error on one line: the problem and where (PyYAML's own text spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def load_yaml(text: str, name: str, source: str) -> Any:
    """Parse YAML ``text`` safely (no Python objects, bounded alias expansion and nesting); errors are
    ``ConfigError(name, "<source> ...")`` on one line."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as err:
        raise ConfigError(name, f"{source} is not valid YAML: {_yaml_problem(err)}") from None
    except _YamlTooLarge as err:
        raise ConfigError(name, f"{source} is refused: {err}") from None
    except ValueError as err:  # a scalar its tag cannot build: a 5000-digit integer, 2001-13-45
        raise ConfigError(
            name, f"{source} holds a value that cannot be read: {str(err)[:MAX_REPR]}"
        ) from None
    except RecursionError:
        raise ConfigError(
            name, f"{source} is refused: it is nested deeper than the YAML reader can go"
        ) from None


def load_yaml_file(path: Path, name: str) -> Any:
    """Read and parse a YAML file (see :func:`load_yaml`): a file over :data:`MAX_YAML_BYTES`, unreadable,
    or not UTF-8 is a ``ConfigError(name, ...)`` naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(name, f"{path} is {size} bytes; a YAML config is at most {MAX_YAML_BYTES}")
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(name, f"cannot read {path} ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            name,
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8",
        ) from None
    return load_yaml(text, name, str(path))


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
    if len(key) > MAX_REPR:  # a key read from a file can be of any length
        key = key[: MAX_REPR - 3] + "..."
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
        raise ConfigError(name, f"expected {_type_name(tp)}, got {brief(value)}")
    if tp is Any:
        return copy.deepcopy(value)
    if _is_dataclass_type(tp):
        return value if isinstance(value, tp) else from_mapping(tp, value, name)
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"expected a mapping, got {brief(value)}")
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
        raise ConfigError(name, f"expected true or false, got {brief(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected an integer, got {brief(value)}")
        if isinstance(value, int):
            return value
        try:
            f = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {brief(value)}") from None
        if not f.is_integer():
            raise ConfigError(name, f"expected an integer, got {brief(value)}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {brief(value)}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {brief(value)}") from None
        if not math.isfinite(f):  # .inf / .nan parse as floats and would train NaN weights
            raise ConfigError(name, f"must be a finite number, got {brief(value)}")
        return f
    if tp is str:
        if isinstance(value, (Mapping, list, tuple)):
            raise ConfigError(name, f"expected a string, got {brief(value)}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"expected a list, got {brief(value)}")
        (item,) = args or (Any,)
        return [coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(name, f"unsupported field type {tp!r}")  # pragma: no cover - programming error


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, name: str = "") -> T:
    """``cls`` from a mapping (None: the defaults), every value coerced to its field's declared type
    and every key checked, errors naming ``name.key``. Nested dataclass fields are read the same way."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(name or "config", f"expected a mapping, got {brief(data)}")
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
