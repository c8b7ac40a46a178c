#!/usr/bin/env bash
# Set up the environment and run the whole test suite (and the linter). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
venv="${FASTERDIT_VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest -q "$@"
