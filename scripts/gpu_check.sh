#!/usr/bin/env bash
# The GPU check (issue 16): the CUDA tests (marker `cuda`: tests/test_cuda.py and the `cuda` cases of
# tests/test_host_sync.py, test_ema.py, test_finite_check.py, whose `cpu` cases CI runs; issue 30) and the
# throughput report (benchmarks/gpu_throughput.py) in one command, offline, about 6 minutes on one H200 (8
# at most: the tests are cut at 240 s and the report's cases are budgeted to 200 s, with 50 s of grace).
# Among the tests: DDP + train.compile + model.grad_checkpointing (one NCCL rank, inductor), a training
# step with no host sync, non-fused AdamW through a checkpoint. It writes docs/benchmarks/gpu.md and
# gpu.json. Without CUDA it says so in one line and exits 0.
#
# From a session whose task is lent a GPU through the `device` tool (/work/.library/device/README.md):
#   1. here, first (needs the package registry; the device machine reaches none):
#        bash scripts/gpu_wheels.sh          # diffusers + mlxtend wheels into .whl/ (git-ignored)
#   2. one call of the device tool's `run`, exactly:
#        command:   bash scripts/gpu_check.sh
#        carry:     [".whl"]
#        timeout_s: 540
#   3. the reply's files (under its files_at) hold gpu.md and gpu.json: copy them into docs/benchmarks/
#      (cuda-tests.log, cuda-tests.xml and throughput.log there are the full logs). Then give_back,
#      unless you rerun at once.
#   To rerun one part on the still-warm machine after a fix: command
#   `GPU_CHECK_PARTS=tests bash scripts/gpu_check.sh` (or =bench), same carry, timeout_s 300.
#
# On the device machine the code runs from src/ (PYTHONPATH), under its own python3 and torch, with the
# carried wheels installed into a temporary folder (--no-index: nothing is downloaded). Variables:
# PYTHON (default python3), GPU_CHECK_PARTS (all | tests | bench), GPU_CHECK_REPORT_DIR (default
# docs/benchmarks), OUT (where logs and a copy of the report go; the device tool sets it).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU visible to $PY here; nothing checked (run it on a GPU machine: docs/training.md, 'GPU check')"
    exit 0
fi

PARTS=${GPU_CHECK_PARTS:-all}
REPORT=${GPU_CHECK_REPORT_DIR:-docs/benchmarks}
LOGS=${OUT:-$(mktemp -d -t fasterdit-gpu-check-XXXXXX)}
mkdir -p "$LOGS" "$REPORT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$SECONDS

if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=$(mktemp -d -t fasterdit-site-XXXXXX)
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        echo "gpu_check: the wheels in .whl/ did not install; rebuild them with scripts/gpu_wheels.sh"
        exit 1
    fi
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
"$PY" -c 'import fasterdit, torch; print("gpu_check:", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0), "| fasterdit from", fasterdit.__file__)'

# every file with `cuda` cases (the test files whose logic also runs on the CPU in CI)
CUDA_TESTS=(tests/test_cuda.py tests/test_host_sync.py tests/test_ema.py tests/test_finite_check.py)
tests_rc=skipped
if [ "$PARTS" != bench ]; then
    per_test=()  # pytest-timeout (on the device image): a hung test fails alone instead of the whole run
    if "$PY" -c 'import pytest_timeout' >/dev/null 2>&1; then per_test=(--timeout=120); fi
    timeout 240 "$PY" -m pytest -v -m cuda "${CUDA_TESTS[@]}" -p no:cacheprovider "${per_test[@]}" \
        --junitxml="$LOGS/cuda-tests.xml" >"$LOGS/cuda-tests.log" 2>&1
    tests_rc=$?
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$LOGS/cuda-tests.log" | tail -n 30
fi

bench_rc=skipped
if [ "$PARTS" != tests ]; then
    junit=()
    if [ -f "$LOGS/cuda-tests.xml" ]; then junit=(--tests-junit "$LOGS/cuda-tests.xml"); fi
    if [ -f "$LOGS/cuda-tests.log" ]; then junit+=(--tests-log "$LOGS/cuda-tests.log"); fi
    timeout 250 "$PY" benchmarks/gpu_throughput.py --budget-s 200 --out "$REPORT" \
        --command "bash scripts/gpu_check.sh" "${junit[@]}" >"$LOGS/throughput.log" 2>&1
    bench_rc=$?
    grep -v "^fasterdit train:\|^  loss:" "$LOGS/throughput.log" | tail -n 40
fi

if [ "$REPORT" != "$LOGS" ]; then
    cp "$REPORT/gpu.md" "$REPORT/gpu.json" "$LOGS/" 2>/dev/null
fi
echo "gpu_check: tests rc=$tests_rc, throughput rc=$bench_rc (124 = cut at its time limit), $((SECONDS - t0)) s; report $REPORT/gpu.md, logs in $LOGS"
[ "$tests_rc" = 0 ] || [ "$tests_rc" = skipped ] || exit 1
[ "$bench_rc" = 0 ] || [ "$bench_rc" = skipped ] || exit 1
exit 0
