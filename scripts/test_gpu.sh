#!/bin/sh
# `make test-gpu`: the CUDA tests, a short GPU benchmark and a short training run on cuda.
# Without a CUDA device each part says it is skipped and the script exits 0.
set -e
PY="${PYTHON:-.venv/bin/python}"
RUN_DIR="${TMPDIR:-/tmp}/curvlab-test-gpu-$$"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    reason="no CUDA device (torch.cuda.is_available() is False)"
    echo "test-gpu: CUDA tests (pytest -m gpu) skipped: $reason"
    echo "test-gpu: GPU benchmark (scripts/bench_solvers.py --device cuda) skipped: $reason"
    echo "test-gpu: training run on cuda skipped: $reason"
    exit 0
fi
"$PY" -c "import torch; print('test-gpu: on', torch.cuda.get_device_name(0))"

echo "=== test-gpu: CUDA tests (pytest -m gpu)"
"$PY" -m pytest -q -m gpu

echo "=== test-gpu: GPU benchmark (scripts/bench_solvers.py --device cuda --quick)"
"$PY" scripts/bench_solvers.py --device cuda --quick

echo "=== test-gpu: training run on cuda (EA-CG, 30 steps, Hessian errors logged) -> $RUN_DIR"
"$PY" -m curvlab.cli train device=cuda solver=eacg train.max_steps=30 log.hessian_every=10 \
    log.progress=false run_dir="$RUN_DIR"
grep -q '"status": "completed"' "$RUN_DIR/summary.json"
grep -q '"device": "cuda' "$RUN_DIR/summary.json"
rm -rf "$RUN_DIR"
echo "test-gpu: all passed"
