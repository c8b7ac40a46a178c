"""Benchmarks are code too: every module under ``benchmarks/`` stays small enough to read in one sitting,
and the benchmarks reach fasterdit only through its public API.

Why: a benchmark's numbers describe what a user of fasterdit gets only if the benchmark calls what a user
can call; a benchmark that imports a private helper (or reads a private attribute) measures code a user
cannot reach, and breaks silently whenever the library reorganises its internals. The size limit keeps
each benchmark split by job (plan, runs, readings, report), as the library's own modules are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
MAX_LINES = 600
FILES = sorted(BENCH.rglob("*.py"))


def _private(name: str) -> bool:
    """A leading underscore marks a private name; dunders (``__file__``, ``__version__``) are public."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_fasterdit(module: str | None) -> bool:
    return module is not None and (module == "fasterdit" or module.startswith("fasterdit."))


def private_uses(source: str) -> list[str]:
    """Every private fasterdit name the source reaches: in an import's module path, as an imported name, or
    as an attribute of a name bound to something from fasterdit (``ckpt._helper``, ``trainer._state`` after
    ``trainer = Trainer(...)``). Names are tracked per file, not per scope: stricter, never laxer."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: set[str] = set()  # names bound to fasterdit modules, or to what they return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_fasterdit(a.name):
                    if any(_private(part) for part in a.name.split(".")):
                        found.append(f"import {a.name}")
                    bound.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_fasterdit(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            for a in node.names:
                if _private(a.name):
                    found.append(f"from {node.module} import {a.name}")
                bound.add(a.asname or a.name)

    def root(expr: ast.expr) -> str | None:
        while isinstance(expr, (ast.Attribute, ast.Call, ast.Subscript)):
            expr = expr.func if isinstance(expr, ast.Call) else expr.value
        return expr.id if isinstance(expr, ast.Name) else None

    grew = True
    while grew:  # x = fasterdit_thing(...) / fasterdit_thing.attr: x is a fasterdit object too
        grew = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and root(node.value) in bound:
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id not in bound:
                        bound.add(t.id)
                        grew = True
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and root(node.value) in bound:
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_the_checker_finds_private_names():
    """The check below is only as good as this reader: it must see each way of reaching a private name."""
    src = (
        "import fasterdit._internal\n"
        "from fasterdit.train import _helper\n"
        "from fasterdit._impl.x import y\n"
        "from fasterdit.run import checkpoint as ck\n"
        "ck._prune(1)\n"
        "import fasterdit\n"
        "print(fasterdit.__file__, fasterdit.train.trainer._private_attr)\n"
        "tr = ck.Trainer(cfg)\n"
        "tr.run()._orig_mod\n"
        "import torch\n"
        "torch._dynamo.reset()\n"  # not fasterdit's: out of scope here
    )
    got = private_uses(src)
    assert len(got) == 6, got
    public = "from fasterdit.eval import evaluate\nimport fasterdit\nprint(fasterdit.__version__)\n"
    assert private_uses(public) == []


def test_benchmark_files_exist():
    assert len(FILES) > 5, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_benchmark_module_is_at_most_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name} has {n} lines (> {MAX_LINES}): split it into modules by job"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_benchmark_uses_only_public_fasterdit_names(path):
    found = private_uses(path.read_text())
    assert not found, f"{path.name} reaches private fasterdit names: {found}; use (or ask for) a public API"
