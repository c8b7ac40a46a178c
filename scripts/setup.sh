#!/usr/bin/env bash
# Create ./.venv (once) and install fasterdit into it with the CPU build of PyTorch.
# Usage: bash scripts/setup.sh [extras]   e.g. "dev" for the test tools.
# Set FASTERDIT_VENV to use another environment folder. On a GPU machine, install the torch build
# you want first and run: pip install -e '.[dev]'
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FASTERDIT_VENV:-.venv}"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# The local CPU build. A bare "torch" would pull several GB of CUDA wheels.
"$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [ -n "$extras" ]; then
  "$py" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
else
  "$py" -m pip install --quiet --disable-pip-version-check -e .
fi
