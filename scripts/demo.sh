#!/usr/bin/env bash
# Sets up the environment and runs the main shipped workflow (workflows/api/zimage_turbo_lab.json)
# through the API client on a real ComfyUI server started with tiny random models; images go to out/.
# With real weights, run the client against your own server instead:
#   python -m zlab run workflows/api/zimage_turbo_lab.json --server http://127.0.0.1:8188 --prompt "..."
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/scripts/env.sh")"
cd "$repo"
exec "$python" tests/harness.py demo "${1:-$repo/out}"
