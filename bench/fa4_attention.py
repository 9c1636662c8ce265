"""FlashAttention-4 (CuTe DSL, SM90 path) against cuDNN SDPA on Z-Image's attention shapes.

Needs a Hopper GPU and the flash-attn-4 package (4.0.0b36 was measured; docs/performance.md):
    python bench/fa4_attention.py [--site DIR]     # DIR: a pip --target folder holding flash-attn-4
Prints, per shape [batch, tokens, 30 heads, 128], the median ms of 50 calls, the ms per call over
3 s back to back, and both kernels' relative L2 error against a float32 SDPA.
"""
import argparse
import importlib.util
import site
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--site", help="extra site directory with flash-attn-4 and its dependencies (.pth files honoured)")
args = parser.parse_args()
if args.site:
    site.addsitedir(args.site)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# the pack's CUDA-event timer and SDPA-backend wrapper (core/ imports no ComfyUI)
_spec = importlib.util.spec_from_file_location("zlab_accelerate",
                                               Path(__file__).resolve().parents[1] / "core" / "accelerate.py")
accel = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = accel  # its dataclasses look themselves up there
_spec.loader.exec_module(accel)

t0 = time.time()
from flash_attn.cute.interface import flash_attn_func  # noqa: E402

print(f"import flash_attn.cute: {time.time() - t0:.1f} s", flush=True)


def timeit(fn):
    return accel.time_cuda(fn, warmup=3, repeats=50)


def sustained(fn, seconds=3.0):
    torch.cuda.synchronize()
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        for _ in range(20):
            fn()
        n += 20
        torch.cuda.synchronize()
    return 1e3 * (time.time() - t0) / n


for b, L in [(1, 4224), (1, 4096), (4, 4224), (1, 16512)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = [torch.randn(b, L, 30, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]
    flop = 4 * b * L * L * 128 * 30
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def cudnn():
        return accel.sdpa(qt, kt, vt, "cudnn")

    def fa4():
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    t0 = time.time()
    try:
        o4 = fa4()
        torch.cuda.synchronize()
    except Exception as e:
        print(f"FA4 failed at {b}x{L}: {type(e).__name__}: {e}"[:2000], flush=True)
        sys.exit(1)
    first = time.time() - t0
    oc = cudnn().transpose(1, 2)
    ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)
    ms_c, ms_4 = timeit(cudnn), timeit(fa4)
    sus_c, sus_4 = sustained(cudnn), sustained(fa4)
    rel = lambda a: float((a.float() - ref).norm() / ref.norm())  # noqa: E731
    print(f"{b}x{L}: cuDNN {ms_c:.3f} ms ({flop / ms_c / 1e9:.0f} TFLOP/s, sustained {sus_c:.3f}) | "
          f"FA4 {ms_4:.3f} ms ({flop / ms_4 / 1e9:.0f} TFLOP/s, sustained {sus_4:.3f}, first call {first:.1f} s) | "
          f"rel L2 to fp32: cuDNN {rel(oc):.2e} FA4 {rel(o4):.2e}; FA4 vs cuDNN max abs "
          f"{float((o4.float() - oc.float()).abs().max()):.2e}", flush=True)
