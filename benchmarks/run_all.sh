#!/usr/bin/env bash
# Run every benchmark, one after another (they must not share the CPU), writing the reports to
# docs/benchmarks/ and logs to ${LOG_DIR:-/tmp/fasterdit-bench}.
#
#   benchmarks/run_all.sh            # full set: ≈ 7 h on a quiet 2-core CPU (convergence ≈ 55 min,
#                                     # std sweep ≈ 45 min, throughput ≈ 10 min, sampling cost ≈ 4 min,
#                                     # latent convergence ≈ 5 h in four parts that can run in separate sessions)
#   benchmarks/run_all.sh --quick    # smoke run of every script (≈ 2-3 min), reports to temp dirs
#
# The full numbers are only meaningful on an otherwise idle machine: check `cat /proc/loadavg` first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-/tmp/fasterdit-bench}
mkdir -p "$LOG_DIR"
QUICK=()
[[ "${1:-}" == "--quick" ]] && QUICK=(--quick)

run() {
  local name=$1; shift
  echo "== $name $* (load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
  "$PY" "benchmarks/$name.py" "${QUICK[@]}" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
}

run throughput --compile
run convergence
run sampling_cost
run std_sweep
run checkpoint_io   # ~1 min: checkpoint write s/GB (writes ~1 GB five times to /tmp)
run loader_io       # ~2 min: batch loading at ImageNet size (writes a 21 GB set to /tmp, then removes it)
# latents of the shipped autoencoder (issue #18): four parts of <= 100 min each, resumable per run
if [[ ${#QUICK[@]} -gt 0 ]]; then run latent_convergence; else run latent_convergence --part all; fi
