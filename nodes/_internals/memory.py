"""ComfyUI model memory internals: DynamicVRAM (comfy-aimdo) state on modules, resident clones.

Checked against ComfyUI 0.18.1 (comfy-aimdo 0.6.0) and 0.30.2 (comfy-aimdo 0.4.11).
"""

from __future__ import annotations

import copy

import torch

AIMDO_ATTRIBUTES = ("_v", "_v_signature", "_v_weight", "_v_bias")
"""Per-module DynamicVRAM state set by ``comfy/model_patcher.py`` ``ModelPatcherDynamic.load`` (a comfy-aimdo
virtual-memory allocation and its cached cast weights; 0.18.1 and 0.30.2). The allocation wraps ctypes pointers:
it cannot be pickled (0.18.1: ``ValueError``) and a second Python owner double-frees it in
``comfy_aimdo/model_vbar.py`` ``__del__`` (0.30.2: segmentation fault)."""

PATCH_HOOK_SUFFIX = "_lowvram_function"
"""``setattr(m, param + "_lowvram_function", ...)`` in ``ModelPatcherDynamic.load`` (0.18.1, 0.30.2)."""


def _model_state(module: torch.nn.Module) -> dict:
    """{attribute: value} of the patcher's per-module state that must stay with the model."""
    state = {}
    for name, value in vars(module).items():
        if name in AIMDO_ATTRIBUTES or name.endswith(PATCH_HOOK_SUFFIX):
            state[name] = value
        elif name in ("weight_function", "bias_function") and isinstance(value, list):
            state[name] = value
    return state


def detached_copy(module: torch.nn.Module, parameters: dict) -> torch.nn.Module:
    """A copy of a ComfyUI module that shares nothing with the model it came from.

    ``parameters`` maps each parameter name to the tensor the copy should hold (the patched weight).
    DynamicVRAM allocations, weight-patch hooks and the cast-on-the-fly flag (``comfy.ops``
    ``comfy_cast_weights``, set by lowvram / DynamicVRAM loading) are left with the model: the copy
    runs its own weights as plain modules, and freeing it frees only its own tensors.
    """
    memo = {id(p): torch.nn.Parameter(parameters[name], requires_grad=False)
            for name, p in module.named_parameters()}
    held = [(m, _model_state(m)) for m in module.modules()]
    for m, state in held:  # set aside while copying: the copy must not own them
        for name in state:
            del m.__dict__[name]
    try:
        copied = copy.deepcopy(module, memo)
    finally:
        for m, state in held:
            m.__dict__.update(state)
    for (_, state), dst in zip(held, copied.modules()):
        for name in ("weight_function", "bias_function"):
            if name in state:
                setattr(dst, name, [])
        if getattr(dst, "comfy_cast_weights", False):
            dst.comfy_cast_weights = False
        dst.__dict__.pop("prev_comfy_cast_weights", None)
    return copied


def is_dynamic(model) -> bool:
    """Whether a MODEL streams its weights through DynamicVRAM (``ModelPatcher.is_dynamic``, 0.18.1 and 0.30.2)."""
    return bool(getattr(model, "is_dynamic", lambda: False)())


def can_reload_resident(model) -> bool:
    """Whether ComfyUI can rebuild this MODEL with resident weights (``cached_patcher_init``, set by the loaders)."""
    return getattr(model, "cached_patcher_init", None) is not None


def resident_clone(model):
    """ComfyUI's own non-dynamic clone: the checkpoint reloaded for the legacy ModelPatcher
    (``ModelPatcher.clone(disable_dynamic=True)``, as ``comfy_extras/nodes_torch_compile.py`` TorchCompileModel)."""
    return model.clone(disable_dynamic=True)
