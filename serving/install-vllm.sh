#!/usr/bin/env bash
# Install vLLM (CPU build) with the YuRen plugin into serving/yuren_vllm/.venv, from its own lock.
# vLLM pins other torch and transformers releases than the main workspace, so it gets its own project;
# `serving/yuren_vllm/.venv/bin/yuren-vllm serve DIR` then serves a YuRen checkpoint (the README's command; the CPU
# build's own `vllm` command fails, see yuren_vllm/cli.py).
set -euo pipefail
cd "$(dirname "$0")/yuren_vllm"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
uv sync --locked --python 3.11 --quiet
