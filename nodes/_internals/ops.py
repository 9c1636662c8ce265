"""ComfyUI weight casting (``comfy/ops.py``): get a layer's weights ready for one call as ComfyUI's ops would.

Checked against ComfyUI 0.18.1 and 0.30.2: ``cast_bias_weight(s, input, offloadable=True)`` returns
``(weight, bias, offload_stream)`` and ``uncast_bias_weight(s, weight, bias, offload_stream)`` releases it;
under DynamicVRAM (comfy-aimdo) the same pair streams the weight in and out.
"""

from __future__ import annotations

import comfy.ops
import torch

from . import quant


def _plain(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a module's own parameters can be used as they are: no casting, no on-the-fly patches
    (``comfy.ops`` ``comfy_cast_weights``, ``weight_function``, ``bias_function``; 0.18.1, 0.30.2)."""
    weight = getattr(module, "weight", None)
    return (weight is not None and not getattr(module, "comfy_cast_weights", False)
            and not getattr(module, "weight_function", None) and not getattr(module, "bias_function", None)
            and weight.device == x.device and weight.dtype == x.dtype
            and not quant.is_comfy_quantized(weight) and not quant.is_gguf(weight))  # these report a float dtype


class WeightFetcher:
    """Gets a block's weights ready for one call the way ``comfy.ops`` ``forward_comfy_cast_weights`` does, and
    releases them after (``cast_bias_weight`` / ``uncast_bias_weight``, 0.18.1 and 0.30.2)."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.held = []
        self.all_plain = True

    def get(self, module):
        if module is None or isinstance(module, torch.nn.Identity):
            return None, None
        if _plain(module, self.x):
            return module.weight, module.bias
        self.all_plain = False
        gguf = quant.gguf_layer_weights(module, self.x)  # ComfyUI-GGUF's layers dequantize themselves
        if gguf is not None:
            return gguf
        weight, bias, handle = comfy.ops.cast_bias_weight(module, self.x, offloadable=True)
        self.held.append((module, weight, bias, handle))
        return quant.dequantized(weight, self.x.dtype), bias

    def release(self):
        for module, weight, bias, handle in self.held:
            comfy.ops.uncast_bias_weight(module, weight, bias, handle)
        self.held.clear()


ATTENTION_OVERRIDE = "optimized_attention_override"
"""``transformer_options`` key read by ``comfy/ldm/modules/attention.py`` ``wrap_attn`` (0.18.1, 0.30.2): a function
``(func, q, k, v, heads, ...)`` that replaces the attention call. Core's ModelAttentionBackend and
BlockSparseAttention (later releases) set it too."""


def attention_override_of(model):
    """The attention override a MODEL already carries, or None."""
    return model.model_options.get("transformer_options", {}).get(ATTENTION_OVERRIDE)


def set_attention_override(model, override) -> None:
    """Install an attention override on a MODEL clone (its model_options are the clone's own)."""
    model.model_options.setdefault("transformer_options", {})[ATTENTION_OVERRIDE] = override
