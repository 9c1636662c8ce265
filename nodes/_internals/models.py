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


def check_zimage_model(model, caption_width: int | None = None):
    """The NextDiT of a Z-Image MODEL; ValueError naming the input otherwise."""
    dm = model.get_model_object("diffusion_model") if model is not None else None
    if dm is None or not all(hasattr(dm, a) for a in ZIMAGE_ATTRIBUTES):
        raise ValueError("model is not a Z-Image (NextDiT) diffusion model: load z_image_turbo_bf16.safetensors with "
                         "UNETLoader")
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
