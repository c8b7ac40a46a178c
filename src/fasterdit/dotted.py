"""Dotted keys (``loss.direction_weight``) set into nested mappings: the one implementation.

Why one: ``--set`` on a run config, a config's ``recipe_overrides`` and :meth:`Recipe.updated` all
address nested fields by dotted keys. Written once, a path means the same thing everywhere and
names the same field in its error.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fasterdit.errors import ConfigError

__all__ = ["apply_dotted"]


def apply_dotted(
    tree: dict[str, Any],
    key: str,
    value: Any,
    *,
    what: str,
    open_sections: Collection[str] = (),
    create_sections: bool = False,
) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``, in place.

    Every section on the path must be a mapping already in ``tree`` and the last key one of its
    fields, so a misspelt key fails here, naming it (``ConfigError(key, "the <what> has no field
    ...")``), instead of being dropped silently. Two exceptions: a section named in
    ``open_sections`` is free-form (a schedule's or timestep sampler's parameters: new keys are
    allowed, the object they build checks them); with ``create_sections`` a missing section is
    created (a config file may leave a section out; the caller has checked the path against its
    schema).
    """
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if create_sections and not isinstance(node.get(part), dict):
            node[part] = {}
        if not isinstance(node.get(part), dict):
            raise ConfigError(key, f"the {what} has no field {'.'.join(parts[: i + 1])!r}")
        node = node[part]
    section = ".".join(parts[:-1])
    if not (create_sections or section in open_sections or parts[-1] in node):
        known = ", ".join(sorted(node))
        raise ConfigError(
            key, f"the {what} has no field {key!r}" + (f" (fields here: {known})" if known else "")
        )
    node[parts[-1]] = value
