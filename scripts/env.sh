#!/usr/bin/env bash
# Creates or reuses the Python environment for Z-Image Lab's tests and demo with one ComfyUI, and prints its python.
# Environment: COMFYUI_PATH (default: the ComfyUI this pack is installed in, else ~/comfy/ComfyUI);
# ZLAB_VENV (default: one environment per ComfyUI minor version, built from that ComfyUI's requirements.txt:
# ~/.cache/zimage-lab/venv for 0.18.x, the oldest version we support, ~/.cache/zimage-lab/venv-<major.minor>
# for any other, e.g. venv-0.30 for 0.30.2).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
comfy="${COMFYUI_PATH:-}"
if [ -z "$comfy" ] && [ "$(basename "$(dirname "$repo")")" = "custom_nodes" ]; then comfy="$(dirname "$(dirname "$repo")")"; fi
[ -n "$comfy" ] || comfy="$HOME/comfy/ComfyUI"
venv="${ZLAB_VENV:-}"
if [ -z "$venv" ]; then
  version="$(sed -n 's/^__version__ *= *"\([0-9]*\.[0-9]*\).*/\1/p' "$comfy/comfyui_version.py" 2>/dev/null || true)"
  case "$version" in
    ""|0.18) venv="$HOME/.cache/zimage-lab/venv" ;;
    *) venv="$HOME/.cache/zimage-lab/venv-$version" ;;
  esac
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# The browser tests drive Debian's chromium through Playwright; install it when missing and we can (root + apt).
if [ ! -x /usr/bin/chromium ] && [ -z "${ZLAB_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium: the browser tests will be skipped" >&2
fi
# Torch as the tested ComfyUI versions use it (the registry's build; its CPU fallback works without a GPU).
"${pip[@]}" torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 2>&1 | grep -v "^WARNING: Location" >&2 || true
if [ -f "$comfy/requirements.txt" ]; then
  "${pip[@]}" -r "$comfy/requirements.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
else
  echo "note: no ComfyUI at $comfy (set COMFYUI_PATH): integration tests will be skipped" >&2
fi
"${pip[@]}" -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c "import torch, safetensors, transformers, pytest" >&2
echo "$venv/bin/python"
