#!/usr/bin/env bash
# One-time set-up on a fresh machine: Debian packages, a virtualenv, CPU torch, the package.
# Idempotent: re-running only installs what changed (pyproject.toml and the torch index are the key).
#
# A CUDA build of torch (for a GPU machine):
#   scripts/setup.sh --cuda                  # the CUDA 12.8 wheels (CUDA_INDEX_URL below)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 make setup   # any PyTorch wheel index
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128  # CUDA ships in the wheel: the host needs only the driver
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
for arg in "$@"; do
  case "$arg" in
    --cuda) TORCH_INDEX_URL=${TORCH_INDEX_URL:-$CUDA_INDEX_URL} ;;
    *) echo "setup: unknown argument $arg (use --cuda, or TORCH_INDEX_URL=...)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)           # stempeg decodes MUSDB18 .stem.mp4 with it
command -v chromium >/dev/null || need_apt+=(chromium)       # headless browser for the HTML report test
command -v cc >/dev/null || need_apt+=(gcc)                  # builds the fused CPU attention kernel (model/sliced_attention.c)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (Debian: apt-get install ${need_apt[*]})" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.samsnet-installed"
key=$( (cat pyproject.toml; echo "$TORCH_INDEX_URL") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  if [ -n "$TORCH_INDEX_URL" ]; then
    # torch from the given index first (a CUDA build), so the package's `torch>=2.13` is satisfied.
    "$VENV/bin/pip" install -q torch==2.13.0 --index-url "$TORCH_INDEX_URL"
  else
    # The CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
    "$VENV/bin/pip" install -q torch==2.13.0
  fi
  "$VENV/bin/pip" install -q -e ".[dev]"
  echo "$key" > "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "| torch.version.cuda", torch.version.cuda, "| CUDA available:", torch.cuda.is_available())'))"
