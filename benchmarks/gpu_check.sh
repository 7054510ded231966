#!/usr/bin/env bash
# The GPU check: a few minutes on a lent GPU machine, no network, no dataset (see benchmarks/gpu_check.py).
# Uses the project's venv when it exists; on a bare machine install the pinned requirements first
# (a CUDA machine needs a CUDA build of torch 2.13.0 instead of the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 "$PY" benchmarks/gpu_check.py "$@"
