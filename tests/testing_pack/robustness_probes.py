"""Test-only guard node for the bad-input test: fingerprints of the upstream objects a node was given,
and whether what it returned is finite. Never shipped with the pack."""

from __future__ import annotations

import hashlib
import json
import math
import uuid

import torch
from comfy_api.latest import io

UPSTREAM = tuple(f"upstream_{i}" for i in range(12))
"""Generic slots: the test wires every upstream node of its prompts here and names them in ``names``."""
RESULTS = tuple(f"result_{i}" for i in range(6))


def tensor_hash(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous()
    if data.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        data = data.float()
    return f"{tuple(t.shape)}:{t.dtype}:" + hashlib.sha1(data.numpy().tobytes()).hexdigest()[:16]


def describe(value, depth: int = 0):
    """A JSON-able content fingerprint: tensors hashed, containers walked, objects by type and id."""
    if depth > 6:
        return "..."
    if isinstance(value, torch.Tensor):
        return tensor_hash(value)
    if isinstance(value, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [describe(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return f"{type(value).__name__}@{id(value)}"


def fingerprint_model(model) -> dict:
    return {"id": id(model), "patches": {k: len(v) for k, v in model.patches.items()},
            "patches_uuid": str(model.patches_uuid), "object_patches": describe(model.object_patches),
            "model_options": describe(model.model_options), "wrappers": describe(getattr(model, "wrappers", {}))}


def fingerprint_clip(clip) -> dict:
    """A CLIP (or the pack's transformers Qwen3 CLIP, which has no cond_stage_model but may carry a projector)."""
    inner = getattr(clip, "cond_stage_model", None)
    modules = inner.named_modules() if inner is not None else []
    return {"id": id(clip), "layer_idx": clip.layer_idx, "tokenizer_options": describe(clip.tokenizer_options),
            "patches": {k: len(v) for k, v in clip.patcher.patches.items()},
            "object_patches": describe(clip.patcher.object_patches), "model_options": describe(clip.patcher.model_options),
            "projector": describe(getattr(clip, "projector", None)),
            "clip_options": describe({k: getattr(m, a, None) for k, m in modules if k.count(".") < 1
                                      for a in ("layer", "layer_idx") if hasattr(m, a)})}


def fingerprint_vector(vector) -> dict:
    return {"tensor": tensor_hash(vector.vector), "record": describe(vector.record())}


def fingerprint(value) -> object:
    """By what the object is: a MODEL (ModelPatcher), a CLIP, a steering vector, else its content."""
    if hasattr(value, "model_options") and hasattr(value, "object_patches"):
        return fingerprint_model(value)
    if hasattr(value, "tokenizer_options") and hasattr(value, "patcher"):
        return fingerprint_clip(value)
    if hasattr(value, "vector") and hasattr(value, "record"):
        return fingerprint_vector(value)
    return describe(value)


def base_weights(patcher) -> str:
    """Hash of a ModelPatcher's module weights as loaded from the file: where a loaded clone has patched a weight
    in place (``comfy/model_patcher.py`` keeps the original in ``backup``), the backup is hashed instead.
    Checked: ComfyUI 0.18.1, 0.30.2 (CPU)."""
    import comfy.model_management as mm

    backups = {}
    for loaded in list(mm.current_loaded_models):
        other = getattr(loaded, "model", None)
        if other is not None and getattr(other, "model", None) is patcher.model:
            backups.update({k: getattr(v, "weight", v) for k, v in getattr(other, "backup", {}).items()})
    digest = hashlib.sha1()
    for name, tensor in sorted(patcher.model.state_dict(keep_vars=True).items()):
        digest.update(f"{name}:{tensor_hash(backups.get(name, tensor))};".encode())
    return digest.hexdigest()[:16]


def finite(value) -> bool:
    """False when a tensor in the value (walked like describe) holds NaN or inf."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


class InputGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestInputGuard",
            display_name="Input Guard (tests)",
            category="Z-Image Lab/testing",
            description="Fingerprints upstream objects (to prove a node left them untouched) and checks results are finite.",
            inputs=[io.String.Input("names", default="", tooltip="Comma-separated names of the upstream slots."),
                    io.Boolean.Input("weights", default=False, tooltip="Also hash the MODEL / CLIP weights (slow)."),
                    *(io.AnyType.Input(name, optional=True) for name in UPSTREAM),
                    *(io.AnyType.Input(name, optional=True) for name in RESULTS)],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, names="", weights=False, **kwargs) -> io.NodeOutput:
        prints = {}
        for label, slot in zip(names.split(","), UPSTREAM):
            value = kwargs.get(slot)
            if value is None:
                continue
            prints[label] = fingerprint(value)
            if weights and isinstance(prints[label], dict) and "patches_uuid" in prints[label]:
                prints[label]["weights"] = base_weights(value)
            elif weights and isinstance(prints[label], dict) and "tokenizer_options" in prints[label]:
                prints[label]["weights"] = base_weights(value.patcher)
        results = [kwargs[name] for name in RESULTS if name in kwargs]
        report = {"fingerprints": prints, "finite": all(finite(r) for r in results), "results": len(results)}
        return io.NodeOutput(ui={"guard": [json.dumps(report, sort_keys=True)]})


NODES = [InputGuard]
