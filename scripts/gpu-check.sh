#!/usr/bin/env bash
# One run on one CUDA GPU (about 5 minutes on an H100, stopped at 7), one summary: the paper's
# training step at batch 8 (peak memory vs the memory model), SDPA kernels actually used, data
# wait, chunked validation, resume (fp16 scaler), gpu: 0 placement beside a GPU task under Ray,
# a 2-trial study sharing the GPU, an export moved to CUDA, MLflow GPU metrics, BSSEval, separate.
# Sections and their estimated times: samsnet_search/bench/gpu_check.py.
#   scripts/gpu-check.sh [--out gpu-check.json] [--only SECTION ...]
#   scripts/gpu-check.sh --cpu-dry-run      # tiny sizes on CPU: checks the script (tests run it)
# PYTHON picks the interpreter (default: this checkout's .venv, else python3); this checkout's
# package wins over an installed copy (python -m puts the working directory first on the path).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout 420 "$PYTHON" -m samsnet_search.bench.gpu_check "$@"
