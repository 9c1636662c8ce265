"""Test-only nodes for the live prompt inspector (js/inspector.js) and its token counts."""

from comfy_api.latest import io


def _inspect(field: str) -> dict:
    """Input option that makes js/inspector.js attach the live prompt inspector to this input."""
    return {"zimage_lab_inspect": field}


class PromptProbe(io.ComfyNode):
    """Hosts the live prompt inspector in browser tests through tagged inputs (the opt-in any node can use)."""

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
    """Encodes text exactly as given (no chat template added): the stock CLIP path with template '{}'."""

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


NODES = [PromptProbe, RawEncode]
