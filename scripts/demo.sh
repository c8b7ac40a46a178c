#!/usr/bin/env bash
# The main demo, the paper's setting at laptop scale (latent diffusion): encode the embedded MNIST with the
# shipped autoencoder (mnist-ae, a diffusers AutoencoderKL: 28x28 digits -> 8x8x4 latents), train the
# FasterDiT recipe on the latents, decode samples back to pixels, and score 1,000 of them with the shipped
# MNIST classifier (about 10 minutes on 2 CPU cores).
# Leaves runs/demo-latent/: checkpoints, metrics, decoded grids (samples/, sample_grid.png), eval.json.
# Run it again to resume. Extra args go to `fasterdit train` (e.g. --set recipe=dit).
# The pixel-space demo is scripts/demo_pixel.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh vae
venv="${FASTERDIT_VENV:-.venv}"
run_dir="${RUN_DIR:-runs/demo-latent}"
latents="${LATENTS:-data/mnist-latent}"
"$venv/bin/fasterdit" prepare --images mnist --vae mnist-ae --resolution 32 --small pad --out "$latents" \
  --no-progress
"$venv/bin/fasterdit" train --config mnist-latent --set "data.source=$latents" --run-dir "$run_dir" "$@"
"$venv/bin/fasterdit" sample --ckpt "$run_dir" --num-samples 100 --labels 0,1,2,3,4,5,6,7,8,9 \
  --out "$run_dir/sample_grid.png"
"$venv/bin/fasterdit" eval --ckpt "$run_dir" --num-samples 1000 --cfg-scale 4 --out "$run_dir/eval.json"
echo "Done: see $run_dir/sample_grid.png (decoded samples, one row per class) and $run_dir/eval.json"
