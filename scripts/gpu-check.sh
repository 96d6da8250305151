#!/usr/bin/env bash
# One run on one CUDA GPU (under 8 minutes), one summary: paper-config AMP training step,
# attention step at the paper's shapes (slices 1..24, SDPA backends by name), fast BSSEval
# CUDA vs CPU, `separate` of a 3-minute track, two trials sharing the GPU (resources.gpu 0.5).
#   scripts/gpu-check.sh [--out gpu-check.json]
#   scripts/gpu-check.sh --cpu-dry-run      # tiny sizes on CPU: checks the script (tests run it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
exec timeout 480 "$PYTHON" -m samsnet_search.bench.gpu_check "$@"
