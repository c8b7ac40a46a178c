#!/usr/bin/env bash
# The pixel-space demo: set up the environment, train the FasterDiT recipe on the embedded MNIST pixels
# (about 10 minutes on 2 CPU cores), then sample a grid of every class from the EMA weights.
# The run directory (default runs/demo) holds checkpoints, metrics, plots and samples.png.
# Run it again to resume from the latest checkpoint. Extra args go to `fasterdit train`.
# The main demo, latent diffusion as in the paper, is scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${FASTERDIT_VENV:-.venv}"
run_dir="${RUN_DIR:-runs/demo}"
"$venv/bin/fasterdit" train --config demo --run-dir "$run_dir" "$@"
"$venv/bin/fasterdit" sample --ckpt "$run_dir" --num-samples 100 --labels 0,1,2,3,4,5,6,7,8,9 \
  --out "$run_dir/sample_grid.png"
echo "Done: see $run_dir/samples.png (training grid) and $run_dir/sample_grid.png"
