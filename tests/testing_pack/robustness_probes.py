"""Test-only guard node for the bad-input test: fingerprints of the upstream objects a node was given,
and whether what it returned is finite. Never shipped with the pack."""

from __future__ import annotations

import hashlib
import json
import math
import uuid

import torch
from comfy_api.latest import io

UPSTREAM = ("model", "clip", "conditioning", "latent", "image", "vector")
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
    inner = clip.cond_stage_model
    return {"id": id(clip), "layer_idx": clip.layer_idx, "tokenizer_options": describe(clip.tokenizer_options),
            "patches": {k: len(v) for k, v in clip.patcher.patches.items()},
            "object_patches": describe(clip.patcher.object_patches), "model_options": describe(clip.patcher.model_options),
            "clip_options": describe({k: getattr(m, a, None) for k, m in inner.named_modules() if k.count(".") < 1
                                      for a in ("layer", "layer_idx") if hasattr(m, a)})}


def fingerprint_vector(vector) -> dict:
    return {"tensor": tensor_hash(vector.vector), "record": describe(vector.record())}


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
            inputs=[*(io.AnyType.Input(name, optional=True) for name in UPSTREAM),
                    *(io.AnyType.Input(name, optional=True) for name in RESULTS)],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        prints = {}
        makers = {"model": fingerprint_model, "clip": fingerprint_clip, "vector": fingerprint_vector}
        for name in UPSTREAM:
            if kwargs.get(name) is not None:
                prints[name] = makers.get(name, describe)(kwargs[name])
        results = [kwargs[name] for name in RESULTS if name in kwargs]
        report = {"fingerprints": prints, "finite": all(finite(r) for r in results), "results": len(results)}
        return io.NodeOutput(ui={"guard": [json.dumps(report, sort_keys=True)]})


NODES = [InputGuard]
