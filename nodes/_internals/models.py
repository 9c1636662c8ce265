"""Model management (devices, loading, casting), ModelPatcher construction and model-type checks."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

from .memory import training_flag


def load_models(models: list, full: bool = False) -> None:
    """Load ModelPatchers onto their device (``comfy/model_management.py`` ``load_models_gpu``).
    Checked: 0.18.1, 0.30.2."""
    mm.load_models_gpu(models, force_full_load=full)


def cast_to_device(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    """``comfy/model_management.py`` ``cast_to_device``. Checked: 0.18.1, 0.30.2."""
    return mm.cast_to_device(tensor, device, dtype)


def intermediate_device():
    """Where node outputs live between nodes (``comfy/model_management.py`` ``intermediate_device``)."""
    return mm.intermediate_device()


def text_encoder_devices() -> tuple:
    """(load device, offload device) ComfyUI gives text encoders (``text_encoder_device``,
    ``text_encoder_offload_device``). Checked: 0.18.1, 0.30.2."""
    return mm.text_encoder_device(), mm.text_encoder_offload_device()


def default_dtype(device) -> torch.dtype:
    """float32 on the CPU, else bfloat16 where ``should_use_bf16`` says so, else float16."""
    if mm.is_device_cpu(device):
        return torch.float32
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float16


def model_patcher(module: torch.nn.Module, load_device, offload_device):
    """A ModelPatcher over a plain torch module, so ComfyUI loads and offloads it like its own models
    (``comfy/model_patcher.py`` ``ModelPatcher.__init__(model, load_device, offload_device)``).
    Checked: 0.18.1, 0.30.2."""
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


ZIMAGE_ATTRIBUTES = ("context_refiner", "cap_embedder", "layers", "cap_pad_token")
"""NextDiT attributes a Z-Image model has (``comfy/ldm/lumina/model.py`` ``NextDiT.__init__`` with
``z_image_modulation``). Checked: 0.18.1, 0.30.2."""


def other_nextdit(dm) -> str | None:
    """Why a NextDiT with Z-Image's attributes is another model the pack's techniques cannot handle, or None.

    Mirrors ``comfy/ldm/lumina/model.py`` ``NextDiT.__init__``: Ming-Image registers a ``__ming_image__`` buffer
    and takes 5-D latents / ``ref_frames`` (0.36+); ``masked_pad_multiple`` shifts image positions (0.36+); Lumina 2
    variants with ``clip_text_pooled_proj``; pixel-space or other latent widths (``in_channels`` not 16). Attributes
    read with getattr, so absent ones (0.18.1, 0.30.2) mean Z-Image. Checked: 0.18.1, 0.30.2, 0.36-0.38 read.
    """
    if "__ming_image__" in getattr(dm, "_buffers", {}):
        return "a Ming-Image model (5-D latents, reference frames)"
    if getattr(dm, "masked_pad_multiple", None) is not None:
        return "a NextDiT with masked caption padding (masked_pad_multiple)"
    if getattr(dm, "clip_text_pooled_proj", None) is not None:
        return "a Lumina 2 variant with pooled CLIP text input"
    if getattr(dm, "in_channels", 16) != 16:
        return f"a NextDiT on {dm.in_channels}-channel inputs (pixel-space or another VAE), not Z-Image's 16"
    return None


UNSUPPORTED_CALL_INPUTS = ("ref_latents", "direct_context", "ref_frames", "siglip_feats")
"""``NextDiT.forward`` / ``patchify_and_embed`` keyword inputs the techniques do not handle (reference latents of
Omni, ``direct_context`` and Ming-Image ``ref_frames`` in 0.36+). Checked: 0.18.1, 0.30.2, 0.36-0.38 read."""


def unsupported_call(kwargs: dict) -> str | None:
    """The first non-empty unsupported input of a diffusion-model call (see UNSUPPORTED_CALL_INPUTS), or None."""
    for name in UNSUPPORTED_CALL_INPUTS:
        value = kwargs.get(name)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0):
            return name
    return None


def check_zimage_model(model, caption_width: int | None = None):
    """The NextDiT of a Z-Image MODEL; ValueError naming the input otherwise (checked before anything is patched)."""
    dm = model.get_model_object("diffusion_model") if model is not None else None
    if dm is None or not all(hasattr(dm, a) for a in ZIMAGE_ATTRIBUTES):
        raise ValueError("model is not a Z-Image (NextDiT) diffusion model: load z_image_turbo_bf16.safetensors with "
                         "UNETLoader")
    other = other_nextdit(dm)
    if other is not None:
        raise ValueError(f"model is {other}: this node works on Z-Image (Turbo / Base) only; load "
                         "z_image_turbo_bf16.safetensors with UNETLoader")
    if caption_width is not None and dm.cap_embedder[1].in_features != caption_width:
        raise ValueError(f"the text encoder gives width {caption_width} but the model's caption embedder expects "
                         f"{dm.cap_embedder[1].in_features}: use the text encoder that belongs to this model")
    return dm


def torch_device():
    """The device ComfyUI computes on (``comfy/model_management.py`` ``get_torch_device``). Checked: 0.18.1, 0.30.2."""
    return mm.get_torch_device()


def module_attribute(module: torch.nn.Module, dotted: str):
    """``comfy/utils.py`` ``get_attr``: the object at a dotted path inside a module. Checked: 0.18.1, 0.30.2."""
    return comfy.utils.get_attr(module, dotted)


def training_mode():
    """Sets ``comfy.model_management.in_training`` for the block, restoring it after (feature-detected, see
    ``memory.training_flag``): NextDiT then takes its autograd-safe paths. Checked: 0.18.1, 0.30.2."""
    return training_flag(mm)
