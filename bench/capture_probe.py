"""Which CUDA-graph captures survive under each PyTorch CUDA allocator (the one ComfyUI picks is cudaMallocAsync).

Each case runs in a fresh process (the allocator is chosen at CUDA start): a small norm + matmul function,
eager or torch.compile'd, captured through core.accelerate.GraphRunner and replayed; after a failed capture the
process must still run CUDA work and exit normally. Prints one JSON line per case.

    python bench/capture_probe.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def case(compiled: bool) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from core.accelerate import GraphRunner

    w = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)

    def fn(x):
        return F.rms_norm(x, (x.shape[-1],)) @ w

    f = torch.compile(fn, dynamic=False, fullgraph=True) if compiled else fn
    x = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16)
    runner = GraphRunner()
    out = {"allocator": torch.cuda.get_allocator_backend(), "compiled": compiled}
    try:
        y, _ = runner.run("k", f, x)
        y2, _ = runner.run("k", f, x + 1)
        out["captured"] = True
        out["replay_matches_eager"] = bool(torch.equal(y2, f(x + 1)))
    except Exception as e:
        out["captured"] = False
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    z = (x @ w).float().sum().item()  # the process still runs CUDA work
    torch.cuda.synchronize()
    out["after"] = z == z
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "case":
        print(json.dumps(case(sys.argv[2] == "compiled")), flush=True)
        return 0
    results = []
    for backend in ("cudaMallocAsync", "native"):
        for compiled in ("eager", "compiled"):
            env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": f"backend:{backend}"}
            proc = subprocess.run([sys.executable, __file__, "case", compiled], env=env, capture_output=True,
                                  text=True, timeout=300)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
            result = json.loads(line) if line else {"allocator": backend, "compiled": compiled == "compiled"}
            result.update(returncode=proc.returncode, stderr_tail=proc.stderr[-600:] if proc.returncode else "")
            results.append(result)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
