"""The import floors of docs/architecture.md hold: a module imports only from its own floor or below.

Why a test: the floors are what lets ``data/prepare`` and ``train/`` share ``runtime/`` without either
pulling in the other; one stray import (say ``data/`` -> ``train/``) would undo that silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fasterdit

ROOT = Path(fasterdit.__file__).parent
#: lowest first, as in docs/architecture.md ("Layout")
FLOORS = [
    {"errors", "dotted", "guidance", "runtime"},
    {"models", "data"},
    {"diffusion"},
    {"viz"},
    {"eval", "train"},
    {"commands", "cli", "__main__", "__init__"},
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("fasterdit.")]


def test_every_import_stays_on_its_floor_or_below():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        where = path.relative_to(ROOT)
        room = where.parts[0].removesuffix(".py")
        for module in _imports(path):
            target = module.split(".")[1]
            if FLOOR[target] > FLOOR[room]:
                bad.append(f"{where} imports {module} (floor {FLOOR[target]} > {FLOOR[room]})")
            elif room != target and {room, target} == {"models", "data"}:
                bad.append(f"{where} imports {module} (models/ and data/ are independent)")
            elif room == "diffusion" and target == "data" and module != "fasterdit.data.stats":
                bad.append(f"{where} imports {module} (diffusion/ reads data/stats.py only)")
            elif room == "runtime" and target != "runtime" and module != "fasterdit.errors":
                bad.append(f"{where} imports {module} (runtime/ imports errors.py only)")
    assert not bad, "\n".join(bad)
