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
  ``tensor_shape`` and the LoRA ``patches`` it applies on dequantization in ``GGMLLayer.get_weight``);
  its default ``dequant_dtype`` computes the dequantization in float16 (``dequant.py``), so the weights
  a GGUF model uses are the float16 rounding of the file's values, not gguf.quants.dequantize's float32;
- nunchaku SVDQuant (nunchaku-tech/ComfyUI-nunchaku): its own transformer and layers (``nunchaku.*``
  modules, ``SVDQW4A4Linear``, ``ZImageModelPatcher``), not ComfyUI's NextDiT: detected by class and
  module names (:func:`is_nunchaku`) and refused by every MODEL-patching node (:func:`check_patchable`).

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


NUNCHAKU_MARKERS = ("nunchaku", "svdq", "awqw4a16")


def _nunchaku_class(obj) -> bool:
    cls = type(obj)
    return any(m in f"{cls.__module__}.{cls.__name__}".lower() for m in NUNCHAKU_MARKERS)


def is_nunchaku(model) -> bool:
    """Whether a ModelPatcher holds a nunchaku SVDQuant model (its patcher, model or any layer is nunchaku's)."""
    inner = getattr(model, "model", None)
    dm = getattr(inner, "diffusion_model", None)
    if _nunchaku_class(model) or (inner is not None and _nunchaku_class(inner)):
        return True
    if type(model).__name__ == "ZImageModelPatcher" or hasattr(model, "svdq_backup"):
        return True
    return isinstance(dm, torch.nn.Module) and any(_nunchaku_class(m) for m in dm.modules())


def check_patchable(model, node: str) -> None:
    """ValueError before anything is patched if a MODEL-patching node cannot work on this model (nunchaku)."""
    if is_nunchaku(model):
        raise ValueError(f"{node} does not support nunchaku SVDQuant models (4-bit SVDQuant layers replace the "
                         "Z-Image blocks it patches): load the bf16, fp8 or GGUF checkpoint with UNETLoader or "
                         "ComfyUI-GGUF's Unet Loader (GGUF) instead")


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


def logical_shapes(model) -> dict:
    """{state-dict key: shape} of a ModelPatcher's model with GGUF weights at their logical shape.

    ``ModelPatcher.model_state_dict()`` is not enough: ComfyUI-GGUF's ``ggml_save_to_state_dict`` gives
    meta tensors shaped like the raw blocks (a Q8_0 [N, 256] weight reads as [N, 272])."""
    shapes = {k: tuple(v.shape) for k, v in model.model_state_dict().items()}
    for name, param in model.model.named_parameters():
        if is_gguf(param):
            shapes[name] = tuple(param.tensor_shape)
    return shapes


def gguf_layer_weights(module: torch.nn.Module, x: torch.Tensor):
    """(weight, bias) of a ComfyUI-GGUF layer for one call on x, dequantized with its LoRA patches
    (``GGMLLayer.cast_bias_weight``), or None for any other layer. ``comfy.ops.cast_bias_weight`` would
    cast the raw blocks."""
    if not is_gguf(getattr(module, "weight", None)) or not hasattr(module, "cast_bias_weight"):
        return None
    return module.cast_bias_weight(x)


def dequantized(weight, dtype):
    """A weight from ``comfy.ops.cast_bias_weight`` as a plain tensor: a QuantizedTensor is dequantized."""
    return weight.dequantize().to(dtype) if is_comfy_quantized(weight) else weight


def float_state_dict(diffusion_model: torch.nn.Module, dtype=torch.float32) -> dict:
    """Every parameter of a (loaded) diffusion model as a float tensor, dequantized, patches included."""
    out = {}
    for prefix, module in diffusion_model.named_modules():
        for name in list(module._parameters):
            value = float_weight(module, name, dtype)
            if value is not None:
                out[f"{prefix}.{name}" if prefix else name] = value.detach().cpu().contiguous()
    return out


def patched_float_weight(model, key: str, device, dtype=torch.float32) -> torch.Tensor:
    """A diffusion-model weight as sampling would use it (the patcher's LoRAs etc. applied), dequantized, on
    device. Mirrors ``ModelPatcher.patch_weight_to_device(key, device_to, return_weight=True)`` (0.18.1, 0.30.2)
    for plain / fp8 / scaled weights; GGUF: dequantized by ComfyUI-GGUF's layer, then the patcher's patches
    for key through ``comfy.lora.calculate_weight`` (what ``GGMLLayer.get_weight`` does while loaded)."""
    import comfy.lora
    import comfy.utils

    owner, _, name = key.rpartition(".")
    module = comfy.utils.get_attr(model.model, owner) if owner else model.model
    tensor = getattr(module, name)
    if is_gguf(tensor):
        weight = float_weight(module, name, dtype, with_patches=False)
        if key in model.patches:
            weight = comfy.lora.calculate_weight(model.patches[key], weight, key)
        return weight.detach().to(device=device, dtype=dtype).clone()
    if key in model.patches and key not in model.backup:
        tensor = model.patch_weight_to_device(key, device_to=device, return_weight=True)
    if is_comfy_quantized(tensor):
        tensor = tensor.dequantize()
    return tensor.detach().to(device=device, dtype=dtype).clone()


def refuse_quantized(model, node: str, instead: str) -> None:
    """ValueError naming the model's weight kind, for a node that cannot handle quantized weights."""
    check_patchable(model, node)
    if is_quantized(model):
        raise ValueError(f"{node} does not support this model's weights ({model_kind(model)}): {instead}")
