"""LoRA parsing for Z-Image on ComfyUI's own code, plus the Z-Image key names it lacks.

ComfyUI turns a LoRA file into weight patches in three steps, all reused here:
``comfy.lora_convert.convert_lora`` (whole-file layouts), ``comfy.lora.model_lora_keys_unet``
(file module name -> model weight, with ``(weight, (dim, offset, size))`` slices of the fused
``qkv`` for diffusers ``to_q/to_k/to_v``) and ``comfy.lora.load_lora`` (the adapter classes of
``comfy.weight_adapter``: LoRA, LoHa, LoKr, GLoRA, OFT, BOFT, plus ``diff``/``set`` tensors).
Checked against ComfyUI 0.18.1 and 0.30.2 (same code for these steps; upstream 0.36+ adds a
fused-``to_qkv`` split for Krea2 LoRAs that does not concern Z-Image).

What ComfyUI's key map lacks for Z-Image, added by :func:`key_map`:
- kohya sd-scripts / musubi-tuner names of the split projections, ``lora_unet_layers_N_attention_to_q``
  (``..._to_k``, ``..._to_v``, ``..._to_out_0``): ComfyUI maps ``lora_unet_`` only onto its own
  fused names (``..._attention_qkv``, ``..._attention_out``). ComfyUI issue 11487, musubi-tuner issue 807.
- PEFT's ``base_model.model.`` wrapper prefix (optionally after ``transformer.`` or ``diffusion_model.``).
"""

from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import comfy.utils
import comfy.weight_adapter
import torch

CONSUMED_SUFFIXES = (".alpha", ".dora_scale", ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight", ".reshape_weight")
PEFT_PREFIXES = ("base_model.model.", "transformer.base_model.model.", "diffusion_model.base_model.model.")


def is_zimage(model) -> bool:
    """Whether a ModelPatcher holds a Z-Image NextDiT (Lumina2 family with z_image_modulation)."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    return config.get("image_model") == "lumina2" and bool(config.get("z_image_modulation"))


def key_map(model) -> dict:
    """LoRA module name -> model weight (or fused-qkv slice): ComfyUI's map plus the Z-Image names it lacks.

    Mirrors ``comfy.lora.model_lora_keys_unet`` (its Lumina2 branch built from
    ``comfy.utils.z_image_to_diffusers``); ComfyUI's own entries always win.
    """
    mapping = comfy.lora.model_lora_keys_unet(model.model, {})
    if not is_zimage(model):
        return mapping
    diffusers = comfy.utils.z_image_to_diffusers(model.model.model_config.unet_config, output_prefix="diffusion_model.")
    for name, target in diffusers.items():
        if not name.endswith(".weight"):
            continue
        module = name[:-len(".weight")]
        mapping.setdefault("lora_unet_" + module.replace(".", "_"), target)
        for prefix in PEFT_PREFIXES:
            mapping.setdefault(prefix + module, target)
    return mapping


def convert(lora: dict) -> dict:
    """The file after ComfyUI's whole-file conversions (comfy.lora_convert.convert_lora)."""
    return comfy.lora_convert.convert_lora(lora)


def parse_patches(model, lora: dict):
    """(patches {weight key or (key, slice): adapter}, key map, converted file, file keys no patch used)."""
    mapping = key_map(model)
    converted = convert(lora)
    patches = comfy.lora.load_lora(converted, mapping, log_missing=False)
    used = set()
    for patch in patches.values():
        used |= set(getattr(patch, "loaded_keys", ()) or ())
    for name in mapping:
        used.update(name + s for s in CONSUMED_SUFFIXES if name + s in converted)
    return patches, mapping, converted, sorted(k for k in converted if k not in used)


def is_plain_lora(patch) -> bool:
    """Whether a patch is a plain up/down LoRA (no mid, no DoRA): its shapes can be checked directly."""
    return isinstance(patch, comfy.weight_adapter.LoRAAdapter) and patch.weights[3] is None and patch.weights[5] is None


def lora_factors(patch):
    """(up, down) tensors of a plain LoRA adapter (comfy.weight_adapter.lora.LoRAAdapter.weights[0:2])."""
    return patch.weights[0], patch.weights[1]


def adapter_name(patch) -> str:
    """'lora', 'lokr', 'loha', ... for an adapter, 'diff' / 'set' for ComfyUI's tuple patches."""
    if isinstance(patch, comfy.weight_adapter.WeightAdapterBase):
        return getattr(patch, "name", type(patch).__name__)
    return patch[0] if isinstance(patch, tuple) else type(patch).__name__


def tuple_patch_shape(patch):
    """(kind, shape) of a ('diff' | 'set', (tensor,)) patch, else None."""
    if isinstance(patch, tuple) and patch and patch[0] in ("diff", "set"):
        return patch[0], tuple(patch[1][0].shape)
    return None


def trial_apply(patch, target_shape: tuple, name: str) -> str | None:
    """Let ComfyUI compute an adapter on a zero weight of this shape: None if it gets through, else why not."""
    reached = []

    def record(delta):
        reached.append(True)
        return delta

    try:
        patch.calculate_weight(torch.zeros(target_shape), name, 1.0, 1.0, None, record)
    except Exception as e:  # the adapter's own shape error, e.g. a reshape that cannot happen
        return str(e)
    return None if reached else f"cannot be applied to a weight of shape {target_shape}"
