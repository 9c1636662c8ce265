"""Which kind of weights a Z-Image model holds, and any of its weights as a float tensor.

The kinds users load, and where ComfyUI (or a pack) keeps them:
- plain float32 / bfloat16 / float16 tensors (UNETLoader ``weight_dtype`` default);
- fp8 tensors from UNETLoader ``fp8_e4m3fn`` / ``fp8_e4m3fn_fast`` / ``fp8_e5m2``: every parameter is
  stored in that dtype (``comfy/sd.py load_diffusion_model_state_dict`` builds the model with
  ``dtype``), layers are ``comfy.ops.manual_cast`` (or ``fp8_ops`` when ``_fast`` and the GPU has
  fp8 matmul: ``comfy/ops.py pick_operations``), and ``model_config.optimizations["fp8"]`` marks ``_fast``;
- scaled fp8 / mixed-precision checkpoints (``scaled_fp8`` + ``.scale_weight`` keys, converted by
  ``comfy.utils.convert_old_quants``, or ``.comfy_quant`` + ``.weight_scale`` keys): weights are
  ``comfy.quant_ops.QuantizedTensor`` (comfy_kitchen) under ``mixed_precision_ops``;
- GGUF through city96/ComfyUI-GGUF: weights are its ``GGMLTensor`` (raw blocks plus ``tensor_type``,
  ``tensor_shape`` and the LoRA ``patches`` it applies on dequantization in ``GGMLLayer.get_weight``).

Code that reads weights itself (not through the layer's forward) must go through :func:`float_weight`.
Checked against ComfyUI 0.18.1 and 0.30.2 and ComfyUI-GGUF main (2026-12).
"""

from __future__ import annotations

from collections import Counter

import torch

FP8_DTYPES = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


def is_gguf(tensor) -> bool:
    """Whether a tensor is ComfyUI-GGUF's GGMLTensor (duck-typed: the pack need not be installed)."""
    return hasattr(tensor, "tensor_type") and hasattr(tensor, "tensor_shape")


def is_comfy_quantized(tensor) -> bool:
    """Whether a tensor is ComfyUI's QuantizedTensor (scaled fp8 / mixed precision layers)."""
    try:
        from comfy.quant_ops import QuantizedTensor
    except ImportError:  # a ComfyUI without quant_ops has no such tensors
        return False
    return isinstance(tensor, QuantizedTensor)


def tensor_kind(tensor) -> str:
    """'GGUF Q8_0', 'scaled fp8', 'fp8_e4m3fn', 'float32', ... for one stored tensor."""
    if is_gguf(tensor):
        return "GGUF " + getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
    if is_comfy_quantized(tensor):
        stored = getattr(tensor, "storage_dtype", None)
        return "scaled " + FP8_DTYPES.get(stored, str(stored).replace("torch.", ""))
    return FP8_DTYPES.get(tensor.dtype, str(tensor.dtype).replace("torch.", ""))


def weight_kinds(model) -> Counter:
    """How many diffusion-model weights of each kind a ModelPatcher holds."""
    kinds = Counter()
    for module in model.model.diffusion_model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None:
            kinds[tensor_kind(weight)] += 1
    return kinds


def model_kind(model) -> str:
    """One phrase naming a model's weights, e.g. 'fp8_e4m3fn_fast', 'GGUF (F32 120, Q8_0 240)', 'bfloat16'."""
    kinds = weight_kinds(model)
    if any(k.startswith("GGUF") for k in kinds):
        return "GGUF (" + ", ".join(f"{k[5:]} {n}" for k, n in sorted(kinds.items()) if k.startswith("GGUF")) + ")"
    if any(k.startswith("scaled") for k in kinds):
        return "scaled fp8 / mixed precision (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"
    main = kinds.most_common(1)[0][0] if kinds else "empty"
    optimizations = getattr(getattr(model.model, "model_config", None), "optimizations", {}) or {}
    return main + "_fast" if main == "fp8_e4m3fn" and optimizations.get("fp8") else main


def is_quantized(model) -> bool:
    """Whether any diffusion-model weight is stored in fp8, as a QuantizedTensor or as GGUF."""
    return any(not k.startswith(("float", "bfloat")) for k in weight_kinds(model))


def float_weight(module: torch.nn.Module, name: str = "weight", dtype=torch.float32, with_patches: bool = True):
    """A module's parameter as a plain float tensor, dequantized (None if absent).

    GGUF: ``GGMLLayer.get_weight`` (dequantizes and, with_patches, applies the LoRA patches that
    ComfyUI-GGUF keeps on the tensor); QuantizedTensor: ``dequantize()``; fp8 and others: a cast.
    ComfyUI's own weight patches are already in the stored tensor while the model is loaded.
    """
    tensor = getattr(module, name, None)
    if tensor is None:
        return None
    if is_gguf(tensor):
        if with_patches and hasattr(module, "get_weight"):
            return torch.Tensor(module.get_weight(tensor, dtype)).to(dtype)
        from importlib import import_module

        dequant = import_module(type(tensor).__module__.rsplit(".", 1)[0] + ".dequant")
        return torch.Tensor(dequant.dequantize_tensor(tensor, dtype)).to(dtype)
    if is_comfy_quantized(tensor):
        return tensor.dequantize().to(dtype)
    return tensor.detach().to(dtype)


def float_state_dict(diffusion_model: torch.nn.Module, dtype=torch.float32) -> dict:
    """Every parameter of a (loaded) diffusion model as a float tensor, dequantized, patches included."""
    out = {}
    for prefix, module in diffusion_model.named_modules():
        for name in list(module._parameters):
            value = float_weight(module, name, dtype)
            if value is not None:
                out[f"{prefix}.{name}" if prefix else name] = value.detach().cpu().contiguous()
    return out


def refuse_quantized(model, node: str, instead: str) -> None:
    """ValueError naming the model's weight kind, for a node that cannot handle quantized weights."""
    if is_quantized(model):
        raise ValueError(f"{node} does not support this model's weights ({model_kind(model)}): {instead}")
