"""ModelPatcher wrapper kinds and the call conventions of the wrappers the pack installs.

Mirrors ``comfy/patcher_extension.py`` (``WrappersMP``) and the argument order of the calls those
wrappers intercept. Checked: 0.18.1, 0.30.2 (0.30.2 adds the multi-GPU callbacks
``ON_DEEPCLONE_MULTIGPU`` / ``ON_MATCH_MULTIGPU_CLONES``; the wrapper kinds used here are unchanged).
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.utils

DIFFUSION_MODEL = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
"""Wraps ``BaseModel.diffusion_model`` calls: ``(executor, x, timesteps, context, num_tokens, attention_mask=None,
**kwargs)`` for NextDiT (``comfy/ldm/lumina/model.py`` ``NextDiT.forward``); ``executor.class_obj`` is the NextDiT."""

APPLY_MODEL = comfy.patcher_extension.WrappersMP.APPLY_MODEL
"""Wraps ``BaseModel.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)``
(``comfy/model_base.py``); ``executor.class_obj`` is the BaseModel."""


def has_wrapper(model, kind: str, key: str) -> bool:
    """Whether this ModelPatcher already carries a wrapper of this kind under this key."""
    return bool(model.get_wrappers(kind, key))


def add_wrapper_once(model, kind: str, key: str, wrapper) -> bool:
    """Install a wrapper on a (cloned) ModelPatcher unless one with this key is there; True if added."""
    if has_wrapper(model, kind, key):
        return False
    model.add_wrapper_with_key(kind, key, wrapper)
    return True


def apply_model_options(args: tuple, kwargs: dict) -> dict:
    """transformer_options of an APPLY_MODEL wrapper call (the 4th positional argument after x, t).

    Mirrors the call in ``comfy/model_base.py`` ``BaseModel.apply_model``: ``(x, t, c_concat, c_crossattn,
    control, transformer_options)``. Checked: 0.18.1, 0.30.2.
    """
    options = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
    return options or {}


ON_DEEPCLONE_MULTIGPU = getattr(comfy.patcher_extension.CallbacksMP, "ON_DEEPCLONE_MULTIGPU", None)
"""``comfy/patcher_extension.py`` ``CallbacksMP.ON_DEEPCLONE_MULTIGPU`` (0.30.2; absent in 0.18.1, which has no
``comfy/multigpu.py``): called ``(original, clone)`` at the end of ``ModelPatcher.deepclone_multigpu``, whose clone
has a freshly loaded model but the original's object patches (pointing at the first GPU's modules)."""


def own_module(model, name: str):
    """The module at a dotted name in this ModelPatcher's own model, ignoring its object patches
    (``comfy/utils.py`` ``get_attr`` on ``model.model``). Checked: 0.18.1, 0.30.2."""
    return comfy.utils.get_attr(model.model, name)


def rebuild_on_multigpu_clone(model, key: str, rebuild) -> bool:
    """Make a patch clone-safe: on a multi-GPU deep clone, ``rebuild(clone)`` re-makes the object patches from the
    clone's own modules (feature-detected ON_DEEPCLONE_MULTIGPU callback); False where ComfyUI has no such clone."""
    if ON_DEEPCLONE_MULTIGPU is None:
        return False
    model.add_callback_with_key(ON_DEEPCLONE_MULTIGPU, key, lambda original, clone: rebuild(clone))
    return True
