#!/usr/bin/env bash
# The main job: a synthetic dataset, then the quickstart study (search, slice selection,
# test score) on the embedded default (local Ray, ./mlruns, ./runs). About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
[ -f data/synth/samsnet-synth.json ] || "$BIN/samsnet-search" data synth data/synth
exec "$BIN/samsnet-search" run search_spaces/quickstart.yaml "$@"
