"""Prompt Formatter: the exact Qwen3 chat text Z-Image's encoder reads (system prompt, think block, turns)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..core import formatter as core
from . import CATEGORY
from ._internals.text import tokenize_exact

PACK_PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets", "system_prompts")
NO_PRESET = "none"
Chat = io.Custom("ZIMAGE_CHAT")


def preset_folders() -> list[str]:
    """Where system-prompt presets live: the pack's, then the user's (which wins on a name clash)."""
    return [PACK_PRESETS, user_preset_folder()]


def user_preset_folder() -> str:
    return os.path.join(folder_paths.get_user_directory(), "zimage_lab", "system_prompts")


def presets() -> dict[str, str]:
    return core.read_presets(preset_folders())


def count_tokens(text: str) -> int:
    """Tokens the Qwen3 encoder reads for this formatted text, through ComfyUI's own tokenizer front end.

    That front end un-escapes \\( \\) and looks up ``embedding:name`` files (as CLIPLoader sets it up),
    so this counts what the encoder will actually see, not the raw Qwen tokenizer's count. The
    tokenizer is the one the live prompt inspector uses (nodes/inspector.py), loaded once.
    """
    return len(tokenize_exact(text))


class PromptFormatter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabPromptFormatter",
            display_name="Z-Image Prompt Formatter",
            category=f"{CATEGORY}/prompt",
            description=(
                "Builds the exact Qwen3 chat text Z-Image's text encoder reads: optional system prompt (typed or "
                "from a preset file), earlier turns, your prompt, an optional think block and an assistant prefill. "
                "With no system prompt, no history and think_mode none the text is byte-equal to ComfyUI's Z-Image "
                "template, so the Qwen3 Encoder reproduces CLIPTextEncode exactly. Connect `text` to the "
                "Z-Image Qwen3 Encoder (it uses formatted text as is). `token_count` counts what the encoder will read."
            ),
            search_aliases=["think block", "system prompt", "chat template", "qwen3 template", "zimage prompt"],
            inputs=[
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default="",
                                tooltip="What the image should show (the user turn)."),
                io.String.Input("system_prompt", multiline=True, default="",
                                tooltip="Optional system turn. Written after the preset's text when a preset is chosen; "
                                        "empty with preset none = no system turn (the default, as ComfyUI and the official pipelines)."),
                io.Combo.Input("preset", options=[NO_PRESET, *presets()], default=NO_PRESET,
                               tooltip="A system-prompt preset: every .txt file in the pack's presets/system_prompts "
                                       "folder and in <ComfyUI user dir>/zimage_lab/system_prompts (drop a file there to add one)."),
                io.Combo.Input("think_mode", options=list(core.THINK_MODES), default="none",
                               tooltip="none: no think block (Z-Image's default). empty: <think>\\n\\n</think>\\n\\n after the "
                                       "assistant header (what Qwen3 writes when thinking is off). with content: the block holds `thinking`."),
                io.String.Input("thinking", multiline=True, default="",
                                tooltip="Reasoning written inside the think block; used only with think_mode 'with content'."),
                io.String.Input("assistant_prefill", multiline=True, default="",
                                tooltip="Text the assistant turn starts with, after the think block (left open: no <|im_end|>)."),
                Chat.Input("history", optional=True,
                           tooltip="Earlier turns: connect another formatter's `chat` output. Its system prompt is used "
                                   "when this node has none."),
            ],
            outputs=[
                io.String.Output("text", tooltip="The exact text for the Z-Image Qwen3 Encoder."),
                io.Int.Output("token_count", tooltip="Tokens the encoder will read (ComfyUI's Qwen tokenizer front end)."),
                Chat.Output("chat", tooltip="This conversation with this turn appended (the prefill as the assistant's "
                                            "reply): feed it to the next formatter's history."),
            ],
        )

    @classmethod
    def execute(cls, prompt, system_prompt, preset, think_mode, thinking, assistant_prefill, history=None) -> io.NodeOutput:
        if not prompt.strip():
            raise ValueError("prompt is empty: type what the image should show")
        if think_mode not in core.THINK_MODES:
            raise ValueError(f"think_mode is {think_mode!r}: choose one of {', '.join(core.THINK_MODES)}")
        if think_mode == "with content" and not thinking.strip():
            raise ValueError("thinking is empty but think_mode is 'with content': write the reasoning, "
                             "or choose think_mode 'empty' for an empty block")
        preset_text = ""
        if preset != NO_PRESET:
            available = presets()
            if preset not in available:
                raise ValueError(f"preset {preset!r} not found in {', '.join(preset_folders())}: "
                                 f"choose one of {', '.join(available) or 'none'}")
            preset_text = available[preset]
        chat = history or core.Chat()
        system = core.combine_system_prompts(preset_text, system_prompt, chat.system_prompt)
        text = core.format_prompt(prompt, system, think_mode, thinking, assistant_prefill, chat.turns)
        count = count_tokens(text)
        notes = [f"{count} tokens · think {think_mode} · {len(chat.turns)} earlier turn(s)"
                 + (f" · preset {preset}" if preset_text else "")]
        if thinking.strip() and think_mode != "with content":
            notes.append(f"note: thinking is ignored with think_mode {think_mode!r}")
        return io.NodeOutput(text, count, chat.then(prompt, assistant_prefill, system),
                             ui={"text": ["\n".join(notes) + "\n\n" + text], "formatted_text": [text],
                                 "token_count": [count]})


NODES = [PromptFormatter]
