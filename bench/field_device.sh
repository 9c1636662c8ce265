#!/bin/bash
# The field benchmark on the lent GPU machine, in one call (docs/performance.md, "How to run the field benchmark").
# It reads an ignored carry folder, shared/ in the repo root, that you prepare on your machine (nothing of ComfyUI
# is committed):
#   shared/comfy-0.18.1.tar.xz, shared/comfy-0.30.2.tar.xz   slim ComfyUI work trees (top folder comfy-<version>)
#   shared/wheels/common/   cp312 wheels ComfyUI needs beyond the machine's torch (torchsde, trampoline, simpleeval,
#                           blake3, sqlalchemy, greenlet, alembic, mako, pydantic + pydantic-core + annotated-types +
#                           typing-inspection, pydantic-settings, python-dotenv, websocket-client)
#   shared/wheels/k18/, k30/  comfy-aimdo + comfy-kitchen as each version pins them (kitchen repacked without its
#                           hip/_C.abi3.so, and for 0.2.26 without cuda/_C.abi3.so too, to fit the 64 MiB carry)
# and bench/stubs/av (committed) stands in for PyAV (no video nodes), so the server starts without it.
# It unpacks the trees to /tmp/c<version>, installs the wheels to /tmp/s18 and /tmp/s30 (skipped when present: a
# warm machine reuses them), writes wrapper Pythons /tmp/py18 and /tmp/py30, the full-size random checkpoints to
# /tmp/models (FP8=1: also the scaled-fp8 DiT), then runs bench/e2e.py within LIMIT seconds of the call.
# usage (run from the repo root, $OUT set by the device tool):
#   LIMIT=<s> bash bench/field_device.sh FP8(0|1) <bench/e2e.py args, e.g. --comfyui /tmp/c0.30.2 --python /tmp/py30>
set -u
start=$SECONDS
fp8=$1; shift
R="$(cd "$(dirname "$0")/.." && pwd)"; S="$R/shared"
nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for v in 0.18.1 0.30.2; do [ -d /tmp/c$v ] || { tar -C /tmp -xJf "$S/comfy-$v.tar.xz" && mv /tmp/comfy-$v /tmp/c$v; } & done; wait
[ -d /tmp/s18 ] || pip install -q --no-index --no-deps --no-compile --target /tmp/s18 "$S"/wheels/common/*.whl "$S"/wheels/k18/*.whl 2>&1 | grep -v WARNING &
[ -d /tmp/s30 ] || pip install -q --no-index --no-deps --no-compile --target /tmp/s30 "$S"/wheels/common/*.whl "$S"/wheels/k30/*.whl 2>&1 | grep -v WARNING &
wait
for k in 18 30; do
  printf '#!/bin/sh\nPYTHONPATH=/tmp/s%s:%s${PYTHONPATH:+:$PYTHONPATH} exec python3 "$@"\n' $k "$R/bench/stubs" > /tmp/py$k
  chmod +x /tmp/py$k
done
/tmp/py30 -c "import comfy_aimdo, comfy_kitchen, sqlalchemy, pydantic, av; print('aimdo', comfy_aimdo.__file__)"
if [ "$fp8" = 1 ]; then what="write_all(sys.argv[1]); write_scaled_fp8(sys.argv[1])"; else what="write_all(sys.argv[1])"; fi
(cd /tmp/c0.18.1 && PYTHONPATH=/tmp/c0.18.1:$R/bench /tmp/py18 -c "import sys; from checkpoints import *; $what" /tmp/models) || exit 1
echo "setup took $((SECONDS - start)) s"
budget=$(( ${LIMIT:-560} - (SECONDS - start) ))
PYTHONUNBUFFERED=1 /tmp/py18 "$R/bench/e2e.py" --models /tmp/models --out "$OUT/field.json" --budget-s $budget "$@"
rc=$?
mkdir -p "$OUT/logs"; for f in "$OUT"/field.*.log; do [ -f "$f" ] && mv "$f" "$OUT/logs/"; done
exit $rc
