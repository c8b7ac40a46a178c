"""A non-editable install ships the configs: ``fasterdit train --config demo`` resolves its bare names from
the installed package (``fasterdit/configs/*.yaml``, package data), with no repository checkout around.

The package is installed offline (``pip install --no-deps --no-build-isolation --no-index --target``) from a
copy of pyproject.toml, README.md and src/fasterdit, so the build leaves nothing in the working tree; the
check then runs in a fresh interpreter that sees only that target (plus the venv's site-packages for torch,
yaml, ...; ``-S`` so the editable install's .pth is not read) from a directory without ./configs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "src" / "fasterdit" / "configs").glob("*.yaml"))

CHECK = """
import json, sys
from pathlib import Path
import fasterdit
from fasterdit.run.config import load_config, resolve_config_path
pkg = Path(fasterdit.__file__).resolve().parent
names = sorted(p.stem for p in (pkg / "configs").glob("*.yaml"))
paths = {n: str(resolve_config_path(n).resolve()) for n in names}
models = {n: load_config(n).model.name for n in names}
print(json.dumps({"package": str(pkg), "names": names, "paths": paths, "models": models}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` (non-editable) of a copy of the project into a fresh target folder."""
    tmp = tmp_path_factory.mktemp("install")
    project = tmp / "project"
    (project / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src" / "fasterdit", project / "src" / "fasterdit", ignore=ignore)
    target = tmp / "target"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "--target", str(target), str(project)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment (the build backend)")
    assert proc.returncode == 0, proc.stderr
    return target


def test_shipped_configs_resolve_after_a_non_editable_install(installed, tmp_path):
    site = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(installed), *site])
    proc = subprocess.run([sys.executable, "-S", "-c", CHECK], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    pkg = Path(got["package"])
    assert pkg == (installed / "fasterdit").resolve()  # the installed copy, not the checkout
    assert SHIPPED and got["names"] == SHIPPED  # every shipped config made it into the install
    for name, path in got["paths"].items():
        assert Path(path) == pkg / "configs" / f"{name}.yaml"
    assert set(got["models"]) == set(SHIPPED)  # each one loads with load_config


def test_a_users_configs_folder_comes_before_the_shipped_ones(tmp_path, monkeypatch):
    import fasterdit
    from fasterdit.run.config import config_search_dirs, resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("demo").parent == Path(fasterdit.__file__).resolve().parent / "configs"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("seed: 1\n")
    assert resolve_config_path("demo") == Path.cwd() / "configs" / "demo.yaml"
    assert config_search_dirs()[0] == Path.cwd() / "configs"


def test_every_config_name_in_the_docs_and_scripts_resolves(tmp_path, monkeypatch):
    """``--config NAME`` in README.md, docs/, scripts/ and the shipped configs' comments names a shipped
    config (no stale ``configs/...yaml`` paths of a checkout; upper-case placeholders such as CFG aside)."""
    from fasterdit.run.config import resolve_config_path

    files = [REPO / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("scripts/*.sh"),
             *(REPO / "src" / "fasterdit" / "configs").glob("*.yaml")]  # fmt: skip
    names = {m for f in files for m in re.findall(r"--config[ =]+([a-z0-9][a-z0-9_./-]*)", f.read_text())}
    assert {"demo", "mnist-latent", "imagenet256"} <= names
    monkeypatch.chdir(tmp_path)  # no ./configs here: the names must come from the package
    for name in sorted(names):
        assert resolve_config_path(name).is_file(), name
