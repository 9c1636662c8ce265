"""Test-only loader nodes for tiny random Z-Image / Qwen3 models. Never shipped with the pack.

The stock UNETLoader only recognises Z-Image at width 3840 and CLIPLoader always builds the
full Qwen3-4B, so the integration tests load their tiny models through these two nodes.
"""

import os
import sys

import folder_paths
from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, os.path.dirname(__file__))
import tiny_models  # noqa: E402


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


def _inspect(role: str) -> dict:
    """Input option that makes js/inspector.js attach the live prompt inspector to this input."""
    return {"zimage_lab_inspect": role}


class PromptProbe(io.ComfyNode):
    """Hosts the live prompt inspector in browser tests (the tag mechanism any node can use)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestPromptProbe",
            display_name="Prompt Probe (tests)",
            category="Z-Image Lab/testing",
            description="Test-only: a prompt with chat settings, tagged for the live prompt inspector.",
            inputs=[io.String.Input("prompt", multiline=True, default="", extra_dict=_inspect("prompt")),
                    io.String.Input("system_prompt", multiline=True, default="", extra_dict=_inspect("system_prompt")),
                    io.Combo.Input("think_mode", options=["none", "empty", "with content"], default="none",
                                   extra_dict=_inspect("think_mode")),
                    io.String.Input("thinking", multiline=True, default="", extra_dict=_inspect("thinking")),
                    io.String.Input("assistant_prefill", default="", extra_dict=_inspect("assistant_prefill"))],
            outputs=[io.String.Output()],
        )

    @classmethod
    def execute(cls, prompt, system_prompt, think_mode, thinking, assistant_prefill) -> io.NodeOutput:
        return io.NodeOutput(prompt)


class RawEncode(io.ComfyNode):
    """Encodes text exactly as given (no chat template added), as a formatter -> encoder chain does."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestRawEncode",
            display_name="Raw Text Encode (tests)",
            category="Z-Image Lab/testing",
            description="Test-only: CLIPTextEncode with the Z-Image template replaced by '{}'.",
            inputs=[io.Clip.Input("clip"), io.String.Input("text", multiline=True)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        return io.NodeOutput(clip.encode_from_tokens_scheduled(clip.tokenize(text, llama_template="{}")))


class ConditioningProbe(io.ComfyNode):
    """Reports the caption length a CONDITIONING carries (tokens and attention-mask sum)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestConditioningProbe",
            display_name="Conditioning Probe (tests)",
            category="Z-Image Lab/testing",
            description="Test-only: reports the token count of each conditioning entry.",
            inputs=[io.Conditioning.Input("conditioning")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning) -> io.NodeOutput:
        lengths = [int(cond.shape[1]) for cond, _ in conditioning]
        masks = [int(extra["attention_mask"].sum()) if extra.get("attention_mask") is not None else None
                 for _, extra in conditioning]
        return io.NodeOutput(ui={"tokens": lengths, "attention": masks})


class TestingExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyZImageLoader, TinyQwen3Loader, PromptProbe, RawEncode, ConditioningProbe]


async def comfy_entrypoint():
    return TestingExtension()
