"""The accelerator's stand-in for a Z-Image transformer block, and what its blocks share (options, FP8 copies,
graphs, statistics). A helper module of nodes/accelerate.py (the leading underscore keeps it out of node discovery).

``AcceleratedBlock.forward`` takes the arguments of ``comfy/ldm/lumina/model.py`` ``JointTransformerBlock.forward``
(0.18.1, 0.30.2) and runs ``core.accelerate.joint_block`` on the block's own weights, or the block itself where
the fast path does not apply. Uncompiled, joint_block takes the running ComfyUI's q/k norm + RoPE and attention call
(``_internals/dit.py``), so it computes what the stock block computes; compiled, it runs core's arithmetic with the
running version's q/k epsilon.
"""

from __future__ import annotations

import torch

from ..core import accelerate as core
from ._internals import dit
from ._internals.ops import ATTENTION_OVERRIDE, WeightFetcher


def _state(t: torch.Tensor) -> tuple:
    """Where a tensor's data lives and how often it was written (inference tensors keep no counter)."""
    try:
        version = t._version
    except RuntimeError:  # created under torch.inference_mode, as ComfyUI's loaders do
        version = None
    return t.data_ptr(), version


class Fp8Cache:
    """FP8 copies of resident Linear weights, remade when a weight is replaced or moved (LoRA patches)."""

    def __init__(self):
        self._entries: dict = {}
        self.generation = 0

    def get(self, weight: torch.Tensor):
        key = id(weight)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is weight and entry[1] == _state(weight):
            return entry[2]
        fp8 = core.quantize_weight(weight)
        self._entries[key] = (weight, _state(weight), fp8)
        self.generation += 1
        return fp8

    def clear(self):
        self._entries.clear()
        self.generation += 1


class Runtime:
    """What every accelerated block of one patched MODEL shares: options, stats, caches."""

    def __init__(self, options: core.AccelerateOptions):
        self.options = options
        self.stats = core.AccelerateStats()
        self.timer = core.ShapeTimer(self.stats)
        self.fp8 = Fp8Cache()
        self.graphs = core.GraphRunner()
        self.compiled = options.compile_blocks
        self.block_fn = core.compiled_joint_block(options.compile_tuning) if options.compile_blocks else core.joint_block
        self._backends: dict = {}
        self.resident_copy = False
        self.notes: list[str] = []

    def backend(self, x: torch.Tensor, shape: core.BlockShape) -> str:
        """The SDPA backend for this call: measured once per shape for "auto", else as set."""
        choice = self.options.attention
        if choice == "off":
            return "auto"
        if choice != "auto":
            return choice
        key = (tuple(x.shape), shape.n_heads, shape.head_dim, x.dtype, str(x.device))
        if key not in self._backends:
            b, seqlen = x.shape[0], x.shape[1]
            q = torch.randn(b, seqlen, shape.n_heads, shape.head_dim, device=x.device, dtype=x.dtype).transpose(1, 2)
            self._backends[key] = core.ATTENTION.choose(q, q, q)
            self.stats.attention[f"{b}x{seqlen}"] = self._backends[key]
        return self._backends[key]


def _block_shape(block) -> core.BlockShape:
    att = block.attention
    adaln_silu = bool(block.modulation) and isinstance(block.adaLN_modulation[0], torch.nn.SiLU)
    q_eps, k_eps = dit.stock_qk_eps(att)  # the running ComfyUI's q/k epsilons
    return core.BlockShape(att.n_local_heads, att.n_local_kv_heads, att.head_dim, block.attention_norm1.eps,
                           q_eps, bool(block.modulation), adaln_silu, k_eps, k_eps != q_eps)


def stock_ops(block, options: dict) -> dict:
    """qk_rope / attend for core.joint_block's uncompiled path: the running ComfyUI's own q/k norm + RoPE and
    attention call (``nodes/_internals/dit.py`` ``stock_qk_norm_rope``, ``stock_attention``)."""
    att = block.attention
    return {"qk_rope": lambda q, k, freqs: dit.stock_qk_norm_rope(att, q, k, freqs),
            "attend": lambda q, k, v: dit.stock_attention(att, q, k, v, None, options)}


class AcceleratedBlock(torch.nn.Module):
    """Stands in for a JointTransformerBlock; shares its submodules, so weight names and LoRA keys are unchanged."""

    def __init__(self, block: torch.nn.Module, runtime: Runtime):
        super().__init__()
        self._modules = dict(block._modules)
        object.__setattr__(self, "original", block)
        object.__setattr__(self, "runtime", runtime)
        for name in ("layer_id", "dim", "head_dim", "modulation"):
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))
        self.shape = _block_shape(block)

    def _weights(self, fetch: WeightFetcher, fp8: bool) -> core.BlockWeights:
        att, ff = self.attention, self.feed_forward

        def lin(module):
            weight, bias = fetch.get(module)
            if fp8 and fetch.all_plain and weight is not None and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0:
                weight = self.runtime.fp8.get(weight)
            return weight, bias

        qkv, _ = lin(att.qkv)
        out, out_bias = lin(att.out)
        w1, _ = lin(ff.w1)
        w2, _ = lin(ff.w2)
        w3, _ = lin(ff.w3)
        adaln, adaln_bias = fetch.get(self.adaLN_modulation[-1]) if self.shape.modulation else (None, None)
        return core.BlockWeights(
            qkv=qkv, out=out, out_bias=out_bias, q_norm=fetch.get(att.q_norm)[0], k_norm=fetch.get(att.k_norm)[0],
            w1=w1, w2=w2, w3=w3, attention_norm1=fetch.get(self.attention_norm1)[0],
            attention_norm2=fetch.get(self.attention_norm2)[0], ffn_norm1=fetch.get(self.ffn_norm1)[0],
            ffn_norm2=fetch.get(self.ffn_norm2)[0], adaln=adaln, adaln_bias=adaln_bias)

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, timestep_zero_index=None, transformer_options={}):
        rt = self.runtime
        reason = None
        if x_mask is not None:
            reason = "attention mask"
        elif timestep_zero_index is not None:
            reason = "omni reference latents"
        elif ATTENTION_OVERRIDE in transformer_options and not getattr(
                transformer_options[ATTENTION_OVERRIDE], "zimage_lab", False):
            reason = "another attention override (its attention is kept: block runs as ComfyUI's)"
        elif self.shape.modulation and adaln_input is None:
            reason = "no adaLN input"
        elif torch.is_grad_enabled() and (x.requires_grad or self.attention.qkv.weight.requires_grad):
            reason = "autograd (training) call"
        if reason is not None:
            rt.stats.fallback(reason)
            return self.original(x, x_mask, freqs_cis, adaln_input, timestep_zero_index=timestep_zero_index,
                                 transformer_options=transformer_options)
        fetch = WeightFetcher(x)
        try:
            fp8 = rt.options.fp8_matmul and (x.device.type == "cpu" or core.fp8_supported(x.device))
            if rt.options.fp8_matmul and not fp8:
                rt.stats.fallback("fp8 needs compute capability 9.0 (Hopper) or newer")
            weights = self._weights(fetch, fp8)
            if fp8 and not isinstance(weights.qkv, core.Fp8Weight):
                rt.stats.fallback("fp8 needs resident weights (no DynamicVRAM streaming or on-the-fly patches)")
            backend = rt.backend(x, self.shape)
            key = (tuple(x.shape), str(x.dtype), self.shape.modulation, backend, isinstance(weights.qkv, core.Fp8Weight))
            exact = {} if rt.compiled else stock_ops(self, transformer_options)
            with rt.timer.first_call(key):
                out = rt.block_fn(x, freqs_cis, adaln_input if self.shape.modulation else None, weights, self.shape,
                                  backend, **exact)
            rt.stats.fast_calls += 1
            return out
        finally:
            fetch.release()


def attention_override(backend: str, runtime: Runtime):
    """An optimized_attention_override that runs unmasked attention through the chosen SDPA backend."""

    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                 **kwargs):
        if mask is not None or q.shape != k.shape or q.shape != v.shape:
            return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)
        if skip_reshape:
            b, _, _, dim_head = q.shape
        else:
            b, _, inner = q.shape
            dim_head = inner // heads
            q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
        name = backend
        if name == "auto":
            name = core.ATTENTION.choose(q, k, v)
            runtime.stats.attention[f"{b}x{q.shape[2]}"] = name
        out = core.sdpa(q, k, v, name)
        if not skip_output_reshape:
            out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
        return out

    override.zimage_lab = True
    return override
