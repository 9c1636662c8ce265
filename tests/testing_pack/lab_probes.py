"""Test-only probe nodes: record which DiT blocks ran, save conditionings, fingerprint a MODEL.

They observe the real model from outside the code under test: the block trace hooks the stock
block objects (captured when the trace node runs), so a block that a patch skipped leaves no
record, and a block that ran (wrapped or repeated) leaves one per call.
"""

from __future__ import annotations

import json
import os
import uuid

import comfy.patcher_extension
import folder_paths
import torch
from comfy_api.latest import io
from safetensors.torch import save_file

GROUPS = ("context_refiner", "noise_refiner", "layers")
TRACES: dict[str, list] = {}
TENSORS: dict[str, dict] = {}


class BlockTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestBlockTrace",
            display_name="Block Trace (tests)",
            category="Z-Image Lab/testing",
            description="Records every DiT call (sigma, batch) and which stock blocks ran, in order.",
            inputs=[io.Model.Input("model"), io.String.Input("label"),
                    io.Boolean.Input("record_tensors", default=False)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, label, record_tensors=False) -> io.NodeOutput:
        blocks = [(model.get_model_object(f"diffusion_model.{g}")[i], f"{g}.{i}")
                  for g in GROUPS for i in range(len(model.get_model_object(f"diffusion_model.{g}")))]
        TRACES[label] = []
        TENSORS[label] = {}

        def wrapper(executor, x, timesteps, context, num_tokens, *args, **kwargs):
            options = kwargs.get("transformer_options", {})
            call = {"sigma": float(options["sigmas"].flatten()[0]), "batch": int(x.shape[0]),
                    "cond_or_uncond": list(options.get("cond_or_uncond", [])), "blocks": []}
            n_call = len(TRACES[label])

            def hook(name):
                def fn(module, inputs, output):
                    k = len(call["blocks"])
                    call["blocks"].append(name)
                    if record_tensors:
                        TENSORS[label][f"{n_call}.{k}.{name}.in"] = inputs[0].detach().float().clone()
                        TENSORS[label][f"{n_call}.{k}.{name}.out"] = output.detach().float().clone()
                return fn

            handles = [block.register_forward_hook(hook(name)) for block, name in blocks]
            try:
                out = executor(x, timesteps, context, num_tokens, *args, **kwargs)
            finally:
                for h in handles:
                    h.remove()
            TRACES[label].append(call)
            return out

        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "zimage_lab_test_trace", wrapper)
        return io.NodeOutput(m)


class TraceReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestTraceReport",
            display_name="Trace Report (tests)",
            category="Z-Image Lab/testing",
            description="After sampling, reports a Block Trace's records (and saves its tensors).",
            inputs=[io.Latent.Input("samples"), io.String.Input("label")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, samples, label) -> io.NodeOutput:
        calls = TRACES.pop(label, [])
        tensors = TENSORS.pop(label, {})
        files = []
        if tensors:
            name = f"trace_{label}_{uuid.uuid4().hex[:8]}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder_paths.get_output_directory(), name))
            files.append(name)
        return io.NodeOutput(ui={"trace": [json.dumps(calls)], "tensor_files": files})


class SaveConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestSaveConditioning",
            display_name="Save Conditioning (tests)",
            category="Z-Image Lab/testing",
            description="Writes a CONDITIONING's token tensors and attention masks to a safetensors file in output/.",
            inputs=[io.Conditioning.Input("conditioning"), io.String.Input("filename_prefix", default="cond")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, conditioning, filename_prefix) -> io.NodeOutput:
        tensors, meta = {}, []
        for i, (tokens, extras) in enumerate(conditioning):
            tensors[f"{i}.tokens"] = tokens.detach().float().contiguous()
            if extras.get("attention_mask") is not None:
                tensors[f"{i}.attention_mask"] = extras["attention_mask"].detach().contiguous()
            meta.append({k: v for k, v in (extras.get("zimage_lab") or {}).items()
                         if isinstance(v, (str, int, float, bool, list, dict, type(None)))})
        name = f"{filename_prefix}_{uuid.uuid4().hex[:8]}.safetensors"
        save_file(tensors, os.path.join(folder_paths.get_output_directory(), name))
        return io.NodeOutput(ui={"files": [name], "meta": [json.dumps(meta)]})


def fingerprint(model) -> dict:
    """What a patch could change on a ModelPatcher: object patches, wrappers, model options, weight patches."""
    def describe(value):
        if isinstance(value, dict):
            return {str(k): describe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [describe(v) for v in value]
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, torch.Tensor):
            return f"tensor{tuple(value.shape)}@{value.data_ptr()}"
        return f"{type(value).__name__}@{id(value)}"

    return {"id": id(model), "object_patches": describe(model.object_patches), "wrappers": describe(model.wrappers),
            "model_options": describe(model.model_options), "patches": sorted(model.patches),
            "patches_uuid": str(model.patches_uuid),
            "blocks": {g: [id(b) for b in model.get_model_object(f"diffusion_model.{g}")] for g in GROUPS}}


class ModelFingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestModelFingerprint",
            display_name="Model Fingerprint (tests)",
            category="Z-Image Lab/testing",
            description="Reports a MODEL's patches, wrappers and options, so a test can prove a node left it untouched.",
            inputs=[io.Model.Input("model")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(ui={"fingerprint": [json.dumps(fingerprint(model), sort_keys=True)]})


class UncondAtCFG1(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestUncondAtCFG1",
            display_name="Unconditional Pass at cfg 1 (tests)",
            category="Z-Image Lab/testing",
            description="A clone that runs the negative even at cfg 1 (ModelPatcher.disable_model_cfg1_optimization), "
                        "so the negative a sampler made shows in its result.",
            inputs=[io.Model.Input("model")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        model = model.clone()
        model.disable_model_cfg1_optimization()
        return io.NodeOutput(model)


class LatentRatios(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestLatentRatios",
            display_name="Latent Downscale Ratios (tests)",
            category="Z-Image Lab/testing",
            description="A LATENT with downscale_ratio_spacial / _temporal set (0: key absent), as video latent nodes make.",
            inputs=[io.Latent.Input("latent"), io.Int.Input("spacial", default=0, min=0, max=64),
                    io.Int.Input("temporal", default=0, min=0, max=64)],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, latent, spacial, temporal) -> io.NodeOutput:
        out = dict(latent)
        for key, value in (("downscale_ratio_spacial", spacial), ("downscale_ratio_temporal", temporal)):
            out.pop(key, None)
            if value:
                out[key] = value
        return io.NodeOutput(out)


NODES = [BlockTrace, TraceReport, SaveConditioning, ModelFingerprint, UncondAtCFG1, LatentRatios]
