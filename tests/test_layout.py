"""The import floors of docs/architecture.md hold: a module imports only from its own floor or below, no
two files import each other (directly or around a loop), and no two packages import each other.

Why a test: the floors are what lets ``data/prepare`` and ``train/`` share ``runtime/`` without either
pulling in the other, and what keeps ``generate/`` (using a trained model) free of the trainer; one stray
import (say ``data/`` -> ``train/``) would undo that silently. Every import counts, those inside
functions and under ``TYPE_CHECKING`` too: a loop hidden in a function body is still a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fasterdit

ROOT = Path(fasterdit.__file__).parent
#: lowest first, as in docs/architecture.md ("Layout")
FLOORS = [
    {"errors", "dotted", "codec", "guidance", "runtime"},
    {"models", "data"},
    {"diffusion"},
    {"viz"},
    {"run"},
    {"generate"},
    {"eval", "export"},
    {"train"},
    {"commands", "cli", "__main__", "__init__"},
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path) -> list[str]:
    """The fasterdit modules ``path`` imports: ``from pkg import sub`` names the submodule ``pkg.sub``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("fasterdit.")]


def _room(module: str) -> str:
    return module.split(".")[1]


def test_every_import_stays_on_its_floor_or_below():
    bad = []
    for name, path in MODULES.items():
        if name == "fasterdit":
            continue
        room = _room(name)
        for module in _imports(path):
            target = _room(module)
            if FLOOR[target] > FLOOR[room]:
                bad.append(f"{name} imports {module} (floor {FLOOR[target]} > {FLOOR[room]})")
            elif room != target and {room, target} == {"models", "data"}:
                bad.append(f"{name} imports {module} (models/ and data/ are independent)")
            elif room == "diffusion" and target == "data" and module != "fasterdit.data.stats":
                bad.append(f"{name} imports {module} (diffusion/ reads data/stats.py only)")
            elif room == "runtime" and target != "runtime" and module != "fasterdit.errors":
                bad.append(f"{name} imports {module} (runtime/ imports errors.py only)")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), or a node importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files():
    graph = {name: set(_imports(path)) - {name} for name, path in MODULES.items()}
    assert not _cycles(graph), "\n".join(" <-> ".join(c) for c in _cycles(graph))


def test_no_two_packages_import_each_other():
    edges = {
        (_room(name), _room(m))
        for name, path in MODULES.items()
        if name != "fasterdit"
        for m in _imports(path)
        if _room(m) != _room(name)
    }
    both = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not both, f"packages importing each other: {both}"


def test_cycle_finder_finds_a_loop():
    """The check above is only worth something if it can fail."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
