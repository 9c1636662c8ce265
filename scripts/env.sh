#!/usr/bin/env bash
# Creates or reuses the Python environment for Z-Image Lab's tests and demo, and prints its python.
# Environment: ZLAB_VENV (default ~/.cache/zimage-lab/venv), COMFYUI_PATH (default ~/comfy/ComfyUI).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZLAB_VENV:-$HOME/.cache/zimage-lab/venv}"
comfy="${COMFYUI_PATH:-}"
if [ -z "$comfy" ] && [ "$(basename "$(dirname "$repo")")" = "custom_nodes" ]; then comfy="$(dirname "$(dirname "$repo")")"; fi
[ -n "$comfy" ] || comfy="$HOME/comfy/ComfyUI"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# The browser tests drive Debian's chromium through Playwright; install it when missing and we can (root + apt).
if [ ! -x /usr/bin/chromium ] && [ -z "${ZLAB_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium: the browser tests will be skipped" >&2
fi
# Torch as ComfyUI 0.18.1's tests use it (the registry's build; its CPU fallback works without a GPU).
"${pip[@]}" torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 2>&1 | grep -v "^WARNING: Location" >&2 || true
if [ -f "$comfy/requirements.txt" ]; then
  "${pip[@]}" -r "$comfy/requirements.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
else
  echo "note: no ComfyUI at $comfy (set COMFYUI_PATH): integration tests will be skipped" >&2
fi
"${pip[@]}" -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c "import torch, safetensors, transformers, pytest" >&2
echo "$venv/bin/python"
