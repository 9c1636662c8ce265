"""Test-only probe: a MODEL clone whose diffusion model records every call (input, sigma, caption, output).

The integration tests use it to measure what the sampler really asked of the model, independently
of the node under test. Each call appends to output/probe/<name>.safetensors (rewritten whole).
"""

import os

import comfy.patcher_extension
import folder_paths
import torch
from comfy_api.latest import io
from safetensors.torch import save_file


class Recording:
    def __init__(self, path: str):
        self.path = path
        self.tensors: dict[str, torch.Tensor] = {}
        self.calls = 0

    def __call__(self, executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        out = executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)
        i = self.calls
        self.calls += 1
        for key, value in (("x", x), ("t", timesteps), ("context", context), ("out", out)):
            self.tensors[f"{key}.{i}"] = value.detach().float().cpu().contiguous()
        self.tensors[f"num_tokens.{i}"] = torch.tensor([int(num_tokens)])
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        save_file(self.tensors, self.path)
        return out


class ProbeModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestProbe",
            display_name="Diffusion Model Probe (tests)",
            category="Z-Image Lab/testing",
            description="Records every diffusion-model call of the returned MODEL clone to output/probe/<name>.safetensors.",
            inputs=[io.Model.Input("model"), io.String.Input("name", default="probe")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, name) -> io.NodeOutput:
        path = os.path.join(folder_paths.get_output_directory(), "probe", f"{name}.safetensors")
        if os.path.exists(path):
            os.remove(path)
        probed = model.clone()
        probed.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "zimage_lab_test_probe",
                                    Recording(path))
        return io.NodeOutput(probed)
