#!/usr/bin/env bash
# Sets up the environment (scripts/env.sh) and runs every test: core tests, and integration tests
# against the real ComfyUI at $COMFYUI_PATH or ~/comfy/ComfyUI (skipped, with a line saying so, without one).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/scripts/env.sh")"
cd "$repo"
exec "$python" -m pytest "$@"
