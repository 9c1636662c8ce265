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

It also holds :class:`EncodeCache` (one text encode per unique prompt and encoder state across
a sweep) and :class:`GraphRunner` (CUDA-graph replay of a whole forward for fixed shapes).

Nothing here imports ComfyUI; ``nodes/accelerate.py`` fetches the weights from ComfyUI's
modules and installs these functions as model patches.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
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


def attention(x: torch.Tensor, freqs: torch.Tensor, w: BlockWeights, s: BlockShape, backend: str) -> torch.Tensor:
    """Z-Image self-attention: fused qkv, per-head q/k RMSNorm, RoPE, SDPA, output projection."""
    bsz, seqlen, _ = x.shape
    qkv = linear(x, w.qkv)
    q, k, v = torch.split(qkv, [s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.n_kv_heads * s.head_dim], dim=-1)
    q = q.view(bsz, seqlen, s.n_heads, s.head_dim)
    k = k.view(bsz, seqlen, s.n_kv_heads, s.head_dim)
    v = v.view(bsz, seqlen, s.n_kv_heads, s.head_dim)
    if w.q_norm is not None:
        q = rms_norm(q, w.q_norm, s.qk_eps)
        k = rms_norm(k, w.k_norm, s.qk_eps)
    q, k = rope(q, freqs), rope(k, freqs)
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
                s: BlockShape, backend: str = "auto") -> torch.Tensor:
    """One Z-Image transformer block, the maths of ComfyUI's JointTransformerBlock.forward (no mask).

    With modulation (noise refiner, main layers): sandwich RMSNorms, adaLN scales (1 + s) and
    tanh gates; without (context refiner): sandwich norms and plain residuals.
    """
    if s.modulation:
        mod = adaln_input
        if s.adaln_silu:
            mod = F.silu(mod)
        scale_msa, gate_msa, scale_mlp, gate_mlp = F.linear(mod, w.adaln, w.adaln_bias).chunk(4, dim=1)
        h = rms_norm(x, w.attention_norm1, s.norm_eps) * (1 + scale_msa.unsqueeze(1))
        a = clamp_fp16(attention(h, freqs, w, s, backend))
        x = x + gate_msa.unsqueeze(1).tanh() * rms_norm(a, w.attention_norm2, s.norm_eps)
        h = rms_norm(x, w.ffn_norm1, s.norm_eps) * (1 + scale_mlp.unsqueeze(1))
        f = clamp_fp16(feed_forward(h, w))
        return x + gate_mlp.unsqueeze(1).tanh() * rms_norm(f, w.ffn_norm2, s.norm_eps)
    a = clamp_fp16(attention(rms_norm(x, w.attention_norm1, s.norm_eps), freqs, w, s, backend))
    x = x + rms_norm(a, w.attention_norm2, s.norm_eps)
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


@dataclass
class AccelerateStats:
    """What an accelerated model did: compile seconds (first call per shape), calls, fallbacks, choices."""

    compile_seconds: float = 0.0
    compiled_shapes: list = field(default_factory=list)
    fast_calls: int = 0
    fallback_calls: int = 0
    fallback_reasons: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)
    graphs_captured: int = 0
    graph_replays: int = 0

    def fallback(self, reason: str) -> None:
        self.fallback_calls += 1
        self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1

    def to_dict(self) -> dict:
        return asdict(self)


class ShapeTimer:
    """Times the first call of each new input shape (compilation happens there), syncing only then."""

    def __init__(self, stats: AccelerateStats):
        self.stats = stats
        self.seen: set = set()

    @contextlib.contextmanager
    def first_call(self, key):
        if key in self.seen:
            yield
            return
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.seen.add(key)
        self.stats.compile_seconds += time.perf_counter() - start
        self.stats.compiled_shapes.append(str(key))


# --------------------------------------------------------------------------------------------
# CUDA graphs


FAILED_CAPTURES: list = []
"""Everything a failed CUDA-graph capture allocated, never freed (see GraphRunner._capture)."""


class GraphRunner:
    """Captures fn(*tensors) once per key into a CUDA graph and replays it with new input values.

    The caller chooses a key that covers everything the captured work depends on besides the
    tensor values (shapes, Python settings, weight addresses). Keeps the newest ``max_graphs``.
    """

    def __init__(self, max_graphs: int = 4, warmup: int = 2):
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict = OrderedDict()
        self.failed: str | None = None

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """fn(*inputs) through the graph of this key; returns (output clone, whether it was captured now)."""
        entry = self._graphs.get(key)
        captured = False
        if entry is None:
            entry = self._capture(fn, inputs)
            self._graphs[key] = entry
            captured = True
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, inputs):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return _clone_outputs(static_out), captured

    def _capture(self, fn, inputs):
        static_in = [t.clone() if t is not None else None for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = fn(*static_in)
        except Exception as error:
            # What the failed capture allocated must not be freed outside it (under cudaMallocAsync that
            # free aborts the process, measured on an H200): keep the graph, its inputs and the frames that
            # hold its tensors for the life of the process.
            FAILED_CAPTURES.append((graph, static_in, error, error.__traceback__))
            self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            raise GraphCaptureError(f"CUDA graph capture failed ({self.failed}); this runner replays no graphs "
                                    "from now on (later calls run without CUDA graphs).") from None
        return graph, static_in, static_out


class GraphCaptureError(RuntimeError):
    """A CUDA graph capture failed; the prompt stops with this message and later calls run eagerly."""


def _clone_outputs(out):
    """Fresh copies of a captured graph's outputs (a tensor, or a tuple / list holding tensors and None)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_outputs(o) for o in out)
    return out


def pad_tokens(embeds: torch.Tensor, mask: torch.Tensor | None, multiple: int) -> tuple:
    """Pad a causal text encoder's input at the end to a multiple of tokens (fixed shapes for CUDA graphs).

    With causal attention (and the padding masked out) a real token never sees a pad, so its
    hidden states are those of the unpadded input; callers slice the output back to the real length.
    """
    length = embeds.shape[1]
    extra = (-length) % multiple
    if extra == 0:
        return embeds, mask
    embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, *embeds.shape[2:])], dim=1)
    if mask is not None:
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    return embeds, mask


# --------------------------------------------------------------------------------------------
# sampling without host syncs


def res_multistep_sync_free(model, x, sigmas, extra_args: dict, callback, s_noise: float, noise_sampler):
    """ComfyUI's res_multistep (eta 0, no CFG++) with its per-step branches decided on the host.

    ComfyUI's loop tests ``sigma_down == 0`` and ``sigmas[i + 1] > 0`` on GPU tensors, which makes
    the CPU wait for every step to finish before it may queue the next one (the GPU then idles
    while Python prepares it). Here the sigmas are read to the host once, before the loop, and
    every tensor operation is the same one in the same order, so the result is bit-identical.
    """
    levels = sigmas.tolist()
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    def phi1_fn(t):
        return torch.expm1(t) / t

    def phi2_fn(t):
        return (phi1_fn(t) - 1.0) / t

    old_sigma_down = None
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = sigmas[i + 1], 0.0
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if levels[i + 1] == 0 or old_denoised is None:
            d = (x - denoised) / sigmas[i][(...,) + (None,) * (x.ndim - sigmas[i].ndim)]
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_old, t_next, t_prev = t_fn(sigmas[i]), t_fn(old_sigma_down), t_fn(sigma_down), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1_fn(-h), phi2_fn(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            x = sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if levels[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x


# --------------------------------------------------------------------------------------------
# text-encode cache


class EncodeCache:
    """Process-wide memo of text encodes: one encode per (encoder, prompt, settings) across a sweep.

    Entries belong to an owner object (the encoder's weights holder); they are dropped when the
    owner is garbage-collected (its model unloaded from ComfyUI's cache), on :meth:`clear`, and
    least-recently-used first beyond ``max_entries``. Values are returned as stored: callers treat
    them as read-only (ComfyUI's convention for CONDITIONING).
    """

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._store: OrderedDict = OrderedDict()
        self._owners: dict = {}
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.by_kind: dict = {}

    def __len__(self) -> int:
        return len(self._store)

    def get_or_compute(self, owner: object, key, compute: Callable[[], Any]):
        """The cached value of (owner, key), computing and storing it on a miss."""
        full_key = (id(owner), key)
        kind = key[0] if isinstance(key, tuple) and key and isinstance(key[0], str) else "other"
        with self._lock:
            counts = self.by_kind.setdefault(kind, {"hits": 0, "misses": 0})
            if full_key in self._store:
                self._store.move_to_end(full_key)
                self.hits += 1
                counts["hits"] += 1
                return self._store[full_key]
        value = compute()
        with self._lock:
            self.misses += 1
            counts["misses"] += 1
            self._track(owner)
            self._store[full_key] = value
            while len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        return value

    def _track(self, owner: object) -> None:
        owner_id = id(owner)
        if owner_id not in self._owners:
            self._owners[owner_id] = weakref.finalize(owner, self.forget, owner_id)

    def forget(self, owner_id: int) -> None:
        """Drop every entry of one owner (called when the owner is garbage-collected)."""
        with self._lock:
            for key in [k for k in self._store if k[0] == owner_id]:
                del self._store[key]
            finalizer = self._owners.pop(owner_id, None)
        if finalizer is not None:
            finalizer.detach()

    def clear(self) -> None:
        """Drop everything (all owners) and reset the counters."""
        with self._lock:
            self.hits = self.misses = 0
            self.by_kind.clear()
            self._store.clear()
            for finalizer in self._owners.values():
                finalizer.detach()
            self._owners.clear()

    def stats(self) -> dict:
        """Entries, hits and misses (in total and per kind of key: tokenize, encode, scheduled, ...)."""
        with self._lock:
            return {"entries": len(self._store), "hits": self.hits, "misses": self.misses,
                    "by_kind": {k: dict(v) for k, v in self.by_kind.items()}}


ENCODE_CACHE = EncodeCache()
"""The one cache a ComfyUI process shares (accelerated CLIPs and any other encoder node may use it)."""


def freeze(value) -> Any:
    """A hashable, exact snapshot of nested token lists / dicts / tensors, for cache keys."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        return ("tensor", str(value.dtype), tuple(value.shape), t.view(torch.uint8).numpy().tobytes())
    if isinstance(value, float):
        return ("float", value.hex())
    if value is None or isinstance(value, (str, int, bool, bytes)):
        return value
    return ("object", id(value))
