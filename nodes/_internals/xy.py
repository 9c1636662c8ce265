"""ComfyUI internals used by the XY grid and the learned-metric nodes [metrics].

Checked against ComfyUI 0.18.1 and 0.30.2 (same names and signatures in both).
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import comfy.utils


def sampler_names() -> list[str]:
    """comfy/samplers.py ``KSampler.SAMPLERS``: every sampler KSampler accepts."""
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    """comfy/samplers.py ``KSampler.SCHEDULERS``: every scheduler KSampler accepts."""
    return list(comfy.samplers.KSampler.SCHEDULERS)


def torch_device():
    """comfy/model_management.py ``get_torch_device``: where ComfyUI runs models (the GPU when there is one)."""
    return comfy.model_management.get_torch_device()


def free_memory_for(bytes_needed: int, device) -> None:
    """comfy/model_management.py ``free_memory``: unload ComfyUI's models to make room for a metric model."""
    comfy.model_management.free_memory(bytes_needed, device)


def progress_bar(total: int):
    """comfy/utils.py ``ProgressBar``: the node's progress in the frontend (``update(1)`` per unit)."""
    return comfy.utils.ProgressBar(total)
