"""Test-only loader nodes for tiny random Z-Image / Qwen3 models. Never shipped with the pack.

The stock UNETLoader only recognises Z-Image at width 3840 and CLIPLoader always builds the
full Qwen3-4B, so the integration tests load their tiny models through these two nodes.
"""

import os
import sys

import folder_paths
from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, os.path.dirname(__file__))
import inspector_probes  # noqa: E402
import lab_probes  # noqa: E402
import model_probes  # noqa: E402
import quant_models  # noqa: E402
import robustness_probes  # noqa: E402
import tiny_models  # noqa: E402
from probe_model import ProbeModel  # noqa: E402
from prompt_probes import ConditioningProbe  # noqa: E402


class TinyZImageLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestTinyUNETLoader",
            display_name="Tiny Z-Image Loader (tests)",
            category="Z-Image Lab/testing",
            description="Loads a tiny random Z-Image DiT made by the Z-Image Lab tests.",
            inputs=[io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models")),
                    io.Combo.Input("weight_dtype", options=["default"], default="default", optional=True)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, unet_name, weight_dtype="default") -> io.NodeOutput:
        return io.NodeOutput(tiny_models.load_dit(folder_paths.get_full_path_or_raise("diffusion_models", unet_name)))


class TinyQwen3Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestTinyCLIPLoader",
            display_name="Tiny Qwen3 Loader (tests)",
            category="Z-Image Lab/testing",
            description="Loads a tiny random Qwen3 text encoder made by the Z-Image Lab tests.",
            inputs=[io.Combo.Input("clip_name", options=folder_paths.get_filename_list("text_encoders")),
                    io.Combo.Input("type", options=["lumina2"], default="lumina2", optional=True),
                    io.Combo.Input("device", options=["default"], default="default", optional=True)],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_name, type="lumina2", device="default") -> io.NodeOutput:
        return io.NodeOutput(tiny_models.load_qwen3(folder_paths.get_full_path_or_raise("text_encoders", clip_name),
                                                    embedding_directory=folder_paths.get_folder_paths("embeddings")))


class TestingExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyZImageLoader, TinyQwen3Loader, ProbeModel, ConditioningProbe, *lab_probes.NODES, *model_probes.NODES,
                *inspector_probes.NODES, *robustness_probes.NODES, *quant_models.NODES]


async def comfy_entrypoint():
    return TestingExtension()
