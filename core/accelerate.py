"""Faster Z-Image inference on NVIDIA GPUs: the same maths, fewer kernels and fewer bytes moved.

A Z-Image block (ComfyUI's ``JointTransformerBlock``) is mostly six matrix multiplies and
attention; the rest is elementwise work that eager PyTorch runs as ~40 separate kernels, each
reading and writing the 4224 x 3840 activation. This module holds the block maths as one plain
function (:func:`joint_block`) that takes its weights as tensors, so that

- ``torch.compile`` can fuse the norms, the adaLN scale, the tanh gates, the residual adds and
  the rotary embedding (written with real numbers: a 2x2 rotation per channel pair) into a few
  kernels around the matrix multiplies, with fixed shapes and no autotuning;
- one compiled graph serves all 30 main layers (weights are inputs, not constants);
- the attention kernel is chosen by timing PyTorch's SDPA backends on the real shapes;
- the matrix multiplies can optionally run in FP8 (e4m3, per-row scales) on Hopper.

It also re-exports, from ``accelerate_runtime``, :class:`EncodeCache` (one text encode per unique prompt
and encoder state across a sweep) and :class:`GraphRunner` (CUDA-graph replay of a whole forward for
fixed shapes).

Nothing here imports ComfyUI; ``nodes/accelerate.py`` fetches the weights from ComfyUI's
modules and installs these functions as model patches.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

ATTENTION_CHOICES = ("off", "auto", "cudnn", "flash", "efficient", "math")
"""Attention settings: off = ComfyUI's own attention, auto = the fastest SDPA backend measured."""

SDPA_BACKENDS = ("cudnn", "flash", "efficient")
"""The fused SDPA kernels worth timing on a GPU (the math backend materialises the score matrix)."""

FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value."""


@dataclass(frozen=True)
class AccelerateOptions:
    """Which accelerations are on. All off reproduces the given model exactly."""

    attention: str = "off"
    compile_blocks: bool = False
    cuda_graphs: bool = False
    fp8_matmul: bool = False
    sync_free_sampling: bool = False
    compile_tuning: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the setting when a combination cannot work."""
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention is {self.attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}.")

    @property
    def any(self) -> bool:
        """Whether any option is on."""
        return (self.compile_blocks or self.cuda_graphs or self.fp8_matmul or self.sync_free_sampling
                or self.attention != "off")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# attention


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention on [B, H, L, D] with one named SDPA backend ("auto" = PyTorch's pick)."""
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_sdpa_backend(backend)]):
        return F.scaled_dot_product_attention(q, k, v)


def time_cuda(fn: Callable[[], Any], warmup: int = 2, repeats: int = 5) -> float:
    """Median milliseconds of fn() on the current CUDA stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def time_attention_backends(q, k, v, backends=SDPA_BACKENDS, repeats: int = 5) -> dict:
    """Milliseconds per call of each SDPA backend that accepts these tensors (CUDA only)."""
    results = {}
    for name in backends:
        try:
            results[name] = time_cuda(lambda: sdpa(q, k, v, name), warmup=2, repeats=repeats)
        except RuntimeError:  # backend does not support this shape / dtype / GPU
            continue
    return results


class AttentionChooser:
    """Picks and remembers the fastest SDPA backend per (shape, dtype, device), by measurement."""

    def __init__(self):
        self._choice: dict = {}
        self.timings: dict = {}
        self._lock = threading.Lock()

    def choose(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
        """The fastest backend for tensors like these; "auto" where nothing can be measured (CPU)."""
        if q.device.type != "cuda":
            return "auto"
        key = (tuple(q.shape), tuple(k.shape), q.dtype, str(q.device))
        with self._lock:
            if key not in self._choice:
                times = time_attention_backends(q, k, v)
                self.timings[str(key)] = times
                self._choice[key] = min(times, key=times.get) if times else "auto"
            return self._choice[key]


ATTENTION = AttentionChooser()


# --------------------------------------------------------------------------------------------
# rotary embedding, norms, FP8 matmul


def rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, H, D] by ComfyUI's rotation matrices freqs [B|1, L, 1, D/2, 2, 2].

    Real-valued RoPE: each pair (x_even, x_odd) becomes R @ (x_even, x_odd), computed in float32
    as column0 * x_even + column1 * x_odd, the arithmetic of ComfyUI's ``apply_rope1``; plain
    broadcasting, so a compiler fuses it with the q/k norms into one pass over q and k.
    """
    xf = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * xf[..., 0] + freqs[..., 1] * xf[..., 1]
    return out.reshape(x.shape).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """RMSNorm over the last axis, exactly torch.nn.RMSNorm (eps None = dtype epsilon)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's overflow guard for float16 activations (a no-op for bf16 / fp32)."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


class Fp8Weight(NamedTuple):
    """A weight [N, K] in float8_e4m3fn with one float32 scale per output row [N, 1]."""

    data: torch.Tensor
    scale: torch.Tensor


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric e4m3 quantization: (t / scale) in float8 and scale = amax / 448 per row."""
    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def quantize_weight(w: torch.Tensor) -> Fp8Weight:
    """FP8 copy of a Linear weight for :func:`linear`."""
    data, scale = quantize_rows(w.detach())
    return Fp8Weight(data.contiguous(), scale.contiguous())


def fp8_supported(device: torch.device) -> bool:
    """Whether torch._scaled_mm with per-row scales runs here (Hopper or newer NVIDIA GPUs)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, or an FP8 matmul with per-row activation and weight scales when weight is an Fp8Weight."""
    if not isinstance(weight, Fp8Weight):
        return F.linear(x, weight, bias)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    xq, xs = quantize_rows(x2)
    if x.is_cuda:
        out = torch._scaled_mm(xq, weight.data.t(), scale_a=xs, scale_b=weight.scale.t(),
                               out_dtype=x.dtype, use_fast_accum=True)
    else:  # reference arithmetic for CPU tests: the same quantized values, float32 products
        out = ((xq.float() * xs) @ (weight.data.float() * weight.scale).t()).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], out.shape[-1])


# --------------------------------------------------------------------------------------------
# the Z-Image block


class BlockWeights(NamedTuple):
    """Every tensor a JointTransformerBlock uses, fetched from its modules (Linear weights may be Fp8Weight)."""

    qkv: Any
    out: Any
    out_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    w1: Any
    w2: Any
    w3: Any
    attention_norm1: torch.Tensor
    attention_norm2: torch.Tensor
    ffn_norm1: torch.Tensor
    ffn_norm2: torch.Tensor
    adaln: torch.Tensor | None
    adaln_bias: torch.Tensor | None


class BlockShape(NamedTuple):
    """The static facts of a block: heads, epsilons, whether adaLN modulation is used."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float | None
    qk_eps: float | None
    modulation: bool
    adaln_silu: bool
    k_eps: float | None = None  # k's epsilon where it is not q's (ComfyUI 0.18.1's k_norm module)
    own_k_eps: bool = False


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor, w: BlockWeights, s: BlockShape) -> tuple:
    """Per-head q/k RMSNorm (epsilon s.qk_eps) and real-valued RoPE: the maths of ComfyUI's two paths."""
    if w.q_norm is not None:
        q = rms_norm(q, w.q_norm, s.qk_eps)
        k = rms_norm(k, w.k_norm, s.k_eps if s.own_k_eps else s.qk_eps)
    return rope(q, freqs), rope(k, freqs)


def attention(x: torch.Tensor, freqs: torch.Tensor, w: BlockWeights, s: BlockShape, backend: str,
              qk_rope: Callable | None = None, attend: Callable | None = None) -> torch.Tensor:
    """Z-Image self-attention: fused qkv, per-head q/k RMSNorm, RoPE, SDPA, output projection.

    qk_rope(q, k, freqs) -> (q, k) and attend(q, k, v) -> [B, L, H * D] replace this module's q/k norm + RoPE
    and attention with the caller's (the running ComfyUI's own, for the exact uncompiled path).
    """
    bsz, seqlen, _ = x.shape
    qkv = linear(x, w.qkv)
    q, k, v = torch.split(qkv, [s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.n_kv_heads * s.head_dim], dim=-1)
    q = q.view(bsz, seqlen, s.n_heads, s.head_dim)
    k = k.view(bsz, seqlen, s.n_kv_heads, s.head_dim)
    v = v.view(bsz, seqlen, s.n_kv_heads, s.head_dim)
    q, k = qk_norm_rope(q, k, freqs, w, s) if qk_rope is None else qk_rope(q, k, freqs)
    if attend is not None:
        return linear(attend(q, k, v), w.out, w.out_bias)
    n_rep = s.n_heads // s.n_kv_heads
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=2)
        v = v.repeat_interleave(n_rep, dim=2)
    out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend)
    out = out.transpose(1, 2).reshape(bsz, seqlen, s.n_heads * s.head_dim)
    return linear(out, w.out, w.out_bias)


def feed_forward(x: torch.Tensor, w: BlockWeights) -> torch.Tensor:
    """SwiGLU: w2(silu(w1 x) * w3 x)."""
    return linear(clamp_fp16(F.silu(linear(x, w.w1)) * linear(x, w.w3)), w.w2)


def joint_block(x: torch.Tensor, freqs: torch.Tensor, adaln_input: torch.Tensor | None, w: BlockWeights,
                s: BlockShape, backend: str = "auto", qk_rope: Callable | None = None,
                attend: Callable | None = None) -> torch.Tensor:
    """One Z-Image transformer block, the maths of ComfyUI's JointTransformerBlock.forward (no mask).

    With modulation (noise refiner, main layers): sandwich RMSNorms, adaLN scales (1 + s) and
    tanh gates; without (context refiner): sandwich norms and plain residuals. qk_rope / attend: see
    :func:`attention` (left None under torch.compile).
    """

    def attn(h):
        return clamp_fp16(attention(h, freqs, w, s, backend, qk_rope, attend))

    if s.modulation:
        mod = adaln_input
        if s.adaln_silu:
            mod = F.silu(mod)
        scale_msa, gate_msa, scale_mlp, gate_mlp = F.linear(mod, w.adaln, w.adaln_bias).chunk(4, dim=1)
        h = rms_norm(x, w.attention_norm1, s.norm_eps) * (1 + scale_msa.unsqueeze(1))
        x = x + gate_msa.unsqueeze(1).tanh() * rms_norm(attn(h), w.attention_norm2, s.norm_eps)
        h = rms_norm(x, w.ffn_norm1, s.norm_eps) * (1 + scale_mlp.unsqueeze(1))
        f = clamp_fp16(feed_forward(h, w))
        return x + gate_mlp.unsqueeze(1).tanh() * rms_norm(f, w.ffn_norm2, s.norm_eps)
    x = x + rms_norm(attn(rms_norm(x, w.attention_norm1, s.norm_eps)), w.attention_norm2, s.norm_eps)
    return x + rms_norm(feed_forward(rms_norm(x, w.ffn_norm1, s.norm_eps), w), w.ffn_norm2, s.norm_eps)


# --------------------------------------------------------------------------------------------
# compilation


def set_recompile_limit(limit: int = 64) -> None:
    """Let dynamo keep one graph per (block kind, shape) of a sweep instead of falling back to eager at 8."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


_COMPILED: dict = {}


def compiled_joint_block(tuning: bool = False) -> Callable:
    """joint_block under torch.compile: static shapes, whole graph (one per process and setting).

    tuning=True lets Inductor tune the launch settings of its fused elementwise / reduction
    kernels by timing them at the real (fixed) shapes (coordinate descent); matrix multiplies stay
    cuBLAS either way. Longer first compile, possibly faster kernels.
    """
    key = "tuned" if tuning else "default"
    if key not in _COMPILED:
        set_recompile_limit()
        options = {"coordinate_descent_tuning": True} if tuning else None
        _COMPILED[key] = torch.compile(joint_block, dynamic=False, fullgraph=True, options=options)
    return _COMPILED[key]


from .accelerate_runtime import (  # noqa: E402,F401  (re-exported: core.accelerate is the public name)
    ENCODE_CACHE, FAILED_CAPTURES, AccelerateStats, EncodeCache, GraphCaptureError, GraphRunner, ShapeTimer, freeze,
    pad_tokens, res_multistep_sync_free)
