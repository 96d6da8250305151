#!/usr/bin/env bash
# One-time set-up on a fresh machine: Debian packages, a virtualenv, CPU torch, the package.
# Idempotent: re-running only installs what changed (pyproject.toml is the key).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

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
key=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  # The CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e ".[dev]"
  echo "$key" > "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
