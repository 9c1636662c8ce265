"""ComfyUI model memory internals: DynamicVRAM (comfy-aimdo) state on modules, resident clones.

Mirrors ``comfy/model_patcher.py`` ``ModelPatcherDynamic`` (``__init__``, ``register_load_device``,
``_vbar_get``, ``load``), ``ModelPatcher.clone(disable_dynamic=True)`` / ``get_non_dynamic_delegate`` and
``comfy/ops.py`` ``CastWeightBiasOp``. Checked against ComfyUI 0.18.1 (comfy-aimdo 0.6.0) and 0.30.2
(comfy-aimdo 0.4.11).

How the refiner trainer gets its weights. A DynamicVRAM load hangs on every cast module objects that own
native memory: ``_v`` = ``(ModelVBAR, address, size)`` (``comfy_aimdo/model_vbar.py``), on 0.30.2 also
``_pin_state`` = the model's ``dynamic_pins[device]`` dict of ``comfy_aimdo/host_buffer.py`` ``HostBuffer``s,
and ``*_lowvram_function`` patch objects that point at the same pin state. ``ModelVBAR`` / ``HostBuffer``
keep their native pointer as a plain int and free it in ``__del__``: a deep copy makes a second owner of
the same pointer, and whichever copy is collected second frees it again (0.30.2: segmentation fault in
``model_vbar.py`` ``__del__`` after training, no Python traceback); on 0.6.0 the pointers are ctypes
objects and the copy fails at once (``ctypes objects containing pointers cannot be pickled``).
ComfyUI's own answer for code that needs ordinary modules is the non-dynamic delegate
(``clone(disable_dynamic=True)``, used by TorchCompileModel): it reloads the whole checkpoint through
``cached_patcher_init`` (a second full DiT in memory for two small blocks, and impossible for models from
loaders that register no factory, e.g. GGUF). The trainer needs only the caption path's weights, so it
takes them as tensors (the patcher's patched weights, copied to the compute device) and builds
:func:`detached_copy` modules that are new objects field by field: module structure and plain settings
(ints, floats, strings, dtypes...) are carried, every other attribute (aimdo allocations, pin state, patch
hooks, ComfyUI's forward hooks) is left with the model. Nothing of the model is copied, pickled or owned
by the copy, so freeing the copy (ordinary garbage collection, in any order) frees only its own tensors,
and the model's allocations are freed by ComfyUI alone when it unloads the model.
"""

from __future__ import annotations

import contextlib
import types

import torch

AIMDO_ATTRIBUTES = ("_v", "_v_signature", "_v_weight", "_v_bias", "_pin_state")
"""Per-module DynamicVRAM state set by ``comfy/model_patcher.py`` ``ModelPatcherDynamic.load`` (0.18.1:
``_v``, ``_v_signature``; 0.30.2 adds ``_pin_state``, the model's HostBuffer pins). Never copied."""

PATCH_HOOK_SUFFIX = "_lowvram_function"
"""``setattr(m, param + "_lowvram_function", ...)`` in ``ModelPatcherDynamic.load`` (0.18.1, 0.30.2)."""

PATCH_HOOK_LISTS = ("weight_function", "bias_function")
"""``comfy/ops.py`` ``CastWeightBiasOp`` per-module weight patch lists (0.18.1, 0.30.2): empty in a copy."""


def _plain(value) -> bool:
    """Whether an attribute is a plain setting a copy may share (no object that could own memory)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list, frozenset)):
        return all(_plain(v) for v in value)
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) and not getattr(value, "__closure__", None)


def _fresh_module(module: torch.nn.Module, parameters: dict, prefix: str) -> torch.nn.Module:
    """A new module of the same class: plain settings, the given parameters, cloned buffers, fresh children."""
    new = object.__new__(type(module))
    torch.nn.Module.__init__(new)  # torch's own (empty) hook and state tables
    for name, value in vars(module).items():
        if name in vars(new) or name in AIMDO_ATTRIBUTES or name.endswith(PATCH_HOOK_SUFFIX):
            continue
        if _plain(value):
            new.__dict__[name] = list(value) if isinstance(value, list) else value
    new.training = module.training
    for name, p in module._parameters.items():
        new._parameters[name] = None if p is None else torch.nn.Parameter(parameters[prefix + name], requires_grad=False)
    for name, b in module._buffers.items():
        new._buffers[name] = None if b is None else b.detach().clone()
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, child in module._modules.items():
        new._modules[name] = None if child is None else _fresh_module(child, parameters, f"{prefix}{name}.")
    for name in PATCH_HOOK_LISTS:
        if name in vars(module):
            new.__dict__[name] = []
    if getattr(new, "comfy_cast_weights", False):  # a class attribute on manual_cast ops
        new.comfy_cast_weights = False
    new.__dict__.pop("prev_comfy_cast_weights", None)
    return new


def detached_copy(module: torch.nn.Module, parameters: dict) -> torch.nn.Module:
    """A copy of a ComfyUI module that shares and owns nothing of the model it came from.

    ``parameters`` maps each parameter name to the tensor the copy should hold (the patched weight).
    Built field by field (no ``copy.deepcopy``, no pickling): DynamicVRAM allocations and pins, patch hooks,
    forward hooks and the cast-on-the-fly flag (``comfy.ops`` ``comfy_cast_weights``) stay with the model;
    the copy runs its own weights as plain modules.
    """
    missing = sorted(set(n for n, _ in module.named_parameters()) - set(parameters))
    if missing:
        raise KeyError(f"detached_copy: no weight given for {', '.join(missing)}")
    return _fresh_module(module, parameters, "")


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


@contextlib.contextmanager
def training_flag(model_management):
    """``comfy.model_management.in_training`` set for the block and restored after, as ``comfy_extras/nodes_train.py``
    TrainLoraNode sets it around its loop: NextDiT then takes its autograd-capable paths (0.18.1: ``comfy/ldm/flux/
    math.py`` ``apply_rope``; 0.30.2 also ``comfy/ldm/lumina/model.py`` JointAttention's q/k norm + RoPE instead of
    comfy-kitchen's fused ``rms_rope``). A ComfyUI without the flag has none of those switches: nothing is set."""
    if not hasattr(model_management, "in_training"):
        yield False
        return
    was = model_management.in_training
    model_management.in_training = True
    try:
        yield True
    finally:
        model_management.in_training = was
