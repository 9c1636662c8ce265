"""Test-only probe nodes: record what reaches parts of the DiT, or its weights, into output files.

Never shipped. Each probe writes safetensors files under the server's output folder, named by
``filename_prefix``, so a test can read exactly what the model computed.
"""

import json
import os

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io
from safetensors.torch import save_file


def _target(prefix: str) -> str:
    path = os.path.join(folder_paths.get_output_directory(), prefix)
    os.makedirs(path, exist_ok=True)
    return path


def _output_file(filename_prefix: str) -> str:
    """<output dir>/<prefix>.safetensors, its folder created."""
    path = os.path.join(folder_paths.get_output_directory(), filename_prefix + ".safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _save(tensors: dict, path: str) -> None:
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, path)


class RecordingRoPE(torch.nn.Module):
    """Wraps the rope embedder in use; saves the ids and the frequencies of every call."""

    def __init__(self, inner, folder):
        super().__init__()
        self.inner, self.folder, self.calls = inner, folder, 0

    def forward(self, ids):
        out = self.inner(ids)
        _save({"ids": ids, "freqs": out}, os.path.join(self.folder, f"call_{self.calls:04d}.safetensors"))
        self.calls += 1
        return out


class RoPEProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestRoPEProbe", display_name="RoPE Probe (tests)", category="Z-Image Lab/testing",
            description="Records the ids and frequencies of every rope embedder call into output/<prefix>/.",
            inputs=[io.Model.Input("model"), io.String.Input("filename_prefix", default="rope_probe")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, filename_prefix) -> io.NodeOutput:
        m = model.clone()
        inner = m.get_model_object("diffusion_model.rope_embedder")
        m.add_object_patch("diffusion_model.rope_embedder", RecordingRoPE(inner, _target(filename_prefix)))
        return io.NodeOutput(m)


class RefinedCaptionProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestRefinedProbe", display_name="Refined Caption Probe (tests)",
            category="Z-Image Lab/testing",
            description="Records the context refiner's output (the caption the main layers see) on every forward.",
            inputs=[io.Model.Input("model"), io.String.Input("filename_prefix", default="refined_probe")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, filename_prefix) -> io.NodeOutput:
        folder = _target(filename_prefix)
        calls = [0]

        def record(args):
            if args["block_index"] == 0:
                _save({"txt": args["txt"]}, os.path.join(folder, f"call_{calls[0]:04d}.safetensors"))
                calls[0] += 1
            return {}

        m = model.clone()
        m.set_model_noise_refiner_patch(record)
        return io.NodeOutput(m)


class SaveWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestSaveWeights", display_name="Save DiT Weights (tests)", category="Z-Image Lab/testing",
            description="Loads the model with its patches applied and saves every diffusion_model weight.",
            inputs=[io.Model.Input("model"), io.String.Input("filename_prefix", default="weights")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix) -> io.NodeOutput:
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        state = model.model.diffusion_model.state_dict()
        path = _output_file(filename_prefix)
        _save(state, path)
        return io.NodeOutput(ui={"text": [path]})


NODES = [RoPEProbe, RefinedCaptionProbe, SaveWeights]


def patch_state(model) -> dict:
    """What a ModelPatcher carries: weight patches, object patches, wrappers and model options."""
    to = model.model_options.get("transformer_options", {})
    return {
        "patches": {k: len(v) for k, v in sorted(model.patches.items())},
        "object_patches": sorted(model.object_patches),
        "weight_wrappers": sorted(model.weight_wrapper_patches),
        "transformer_options": sorted(to),
        "wrappers": sorted(to.get("wrappers", {})),
        "patch_lists": {k: len(v) for k, v in sorted(to.get("patches", {}).items())},
        "model_options": sorted(model.model_options),
    }


class PatchState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestPatchState", display_name="Model Patch State (tests)", category="Z-Image Lab/testing",
            description="Reports the patches, object patches and options a MODEL carries, as JSON ui text.",
            inputs=[io.Model.Input("model"), io.String.Input("tag", default="")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # always run: the point is to look at the model as it is now

    @classmethod
    def execute(cls, model, tag) -> io.NodeOutput:
        return io.NodeOutput(ui={"text": [json.dumps(patch_state(model), sort_keys=True)]})


NODES.append(PatchState)


class SaveConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestSaveConditioningFile", display_name="Save Conditioning File (tests)",
            category="Z-Image Lab/testing",
            description="Saves each conditioning entry's token tensor (and attention mask) as safetensors.",
            inputs=[io.Conditioning.Input("conditioning"), io.String.Input("filename_prefix", default="cond")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix) -> io.NodeOutput:
        path = _output_file(filename_prefix)
        tensors = {}
        for i, (tokens, extras) in enumerate(conditioning):
            tensors[f"tokens_{i}"] = tokens
            if extras.get("attention_mask") is not None:
                tensors[f"mask_{i}"] = extras["attention_mask"]
        _save(tensors, path)
        meta = [json.dumps(extras.get("zimage_lab", {}), default=str) for _, extras in conditioning]
        return io.NodeOutput(ui={"text": [path], "zimage_lab": meta})


NODES.append(SaveConditioning)


class SaveImageTensor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestSaveImageTensor", display_name="Save Image Tensor (tests)",
            category="Z-Image Lab/testing",
            description="Saves an IMAGE exactly as it is (dtype, layout, contiguity) as safetensors.",
            inputs=[io.Image.Input("images"), io.String.Input("filename_prefix", default="image")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix) -> io.NodeOutput:
        path = _output_file(filename_prefix)
        _save({"images": images.contiguous()}, path)
        info = {"dtype": str(images.dtype), "shape": list(images.shape), "device": str(images.device),
                "strides": list(images.stride())}
        return io.NodeOutput(ui={"text": [path], "info": [json.dumps(info)]})


NODES.append(SaveImageTensor)
