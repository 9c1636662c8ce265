"""Prompt inspection: the exact text the Qwen3 encoder reads, its tokens, and Z-Image's length limits.

The live prompt inspector in the browser asks the server what a prompt becomes: the chat-formatted
text (core.formatter), the token stream ComfyUI's Z-Image tokenizer makes of it, and how its length
sits against the limits that matter for Z-Image-Turbo:

- 512 tokens: the caption length the model was trained with; the official pipelines (diffusers
  ``max_sequence_length``) truncate there. ComfyUI does not truncate, so past it the DiT sees
  caption positions it was never trained on.
- 1504 tokens: the longest caption diffusers' precomputed RoPE tables hold (axis-0 table of 1536
  positions, caption padded to a multiple of 32, image placed after it). ComfyUI computes RoPE on
  the fly and has no hard limit.

Tokenising is passed in as a function, so this module stays free of ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import formatter

TRAINED_LENGTH = 512
PAD_MULTIPLE = 32
ROPE_AXIS_LENGTH = 1536


@dataclass(frozen=True)
class Limit:
    """A caption length past which something changes for Z-Image."""

    name: str
    tokens: int
    meaning: str


LIMITS = (
    Limit("trained", TRAINED_LENGTH,
          "caption length Z-Image-Turbo was trained with; official pipelines truncate here, ComfyUI does not"),
    Limit("diffusers", (ROPE_AXIS_LENGTH - 1) // PAD_MULTIPLE * PAD_MULTIPLE,
          "longest (padded) caption diffusers' RoPE tables hold; ComfyUI itself has no hard limit"),
)

TEXT_FIELDS = ("prompt", "system_prompt", "preset", "thinking", "assistant_prefill")
NO_PRESET = "none"

Tokenize = Callable[[str], tuple[Sequence[tuple], str]]
"""text -> ([(token id, or None for an embedding vector; readable piece), ...], the text those tokens spell)."""


@dataclass(frozen=True)
class Request:
    """What the inspector was asked about: a prompt and the chat settings of the formatter."""

    prompt: str
    system_prompt: str = ""
    preset: str = NO_PRESET
    think_mode: str = "none"
    thinking: str = ""
    assistant_prefill: str = ""
    raw: bool | str = False

    @classmethod
    def from_json(cls, payload) -> "Request":
        """Validate a decoded JSON request; a clear ValueError names the bad field."""
        if not isinstance(payload, dict):
            raise ValueError("the request body must be a JSON object like {\"prompt\": \"a cat\"}")
        if "prompt" not in payload:
            raise ValueError("'prompt' is missing: send {\"prompt\": \"...\"} (other fields are optional)")
        values = {}
        for name in TEXT_FIELDS:
            value = payload.get(name)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
            values[name] = value
        values["preset"] = values["preset"] or NO_PRESET
        think_mode = payload.get("think_mode", "none") or "none"
        if think_mode not in formatter.THINK_MODES:
            raise ValueError(f"'think_mode' is {think_mode!r}: choose one of {', '.join(formatter.THINK_MODES)}")
        raw = payload.get("raw", False)
        if not (raw is False or raw is True or raw == "auto"):
            raise ValueError(f"'raw' is {raw!r}: use false (apply the chat template), true (text as is) or \"auto\"")
        return cls(think_mode=think_mode, raw=raw, **values)


def formatted_text(request: Request, presets: dict[str, str] | None = None) -> tuple[str, tuple[int, int]]:
    """The exact text the encoder reads, and the [start, end) characters of the user's own prompt in it.

    raw "auto" follows the Qwen3 Encoder node: text that starts with <|im_start|> is used as is,
    anything else gets ComfyUI's template. A preset's text comes before the typed system prompt, as
    the Prompt Formatter writes it.
    """
    if request.raw is True:
        return request.prompt, (0, len(request.prompt))
    if request.raw == "auto":
        text, template = formatter.encoder_text(request.prompt)
        if template == "formatted":
            return text, formatter.prompt_char_span(text) or (0, len(text))
        return text, formatter.content_char_span(request.prompt)
    system = formatter.combine_system_prompts(preset_text(request.preset, presets or {}), request.system_prompt)
    args = (request.prompt, system, request.think_mode, request.thinking, request.assistant_prefill)
    return formatter.format_prompt(*args), formatter.content_char_span(*args)


def preset_text(name: str, presets: dict[str, str]) -> str:
    """The system-prompt text of a preset ("none" has none); a clear error for an unknown name."""
    if name == NO_PRESET:
        return ""
    if name not in presets:
        raise ValueError(f"'preset' is {name!r}: choose one of {', '.join([NO_PRESET, *presets])}")
    return presets[name]


def padded_length(count: int) -> int:
    """Caption length after NextDiT pads it with cap_pad_token to a multiple of 32."""
    return -(-count // PAD_MULTIPLE) * PAD_MULTIPLE


def budget(count: int) -> dict:
    """How a caption of this many tokens sits against each limit; level ok / warn (past trained) / over."""
    limits = [{"name": l.name, "tokens": l.tokens, "meaning": l.meaning, "over": count > l.tokens} for l in LIMITS]
    over = [l["name"] for l in limits if l["over"]]
    level = "ok" if not over else ("warn" if over == ["trained"] else "over")
    return {"count": count, "padded_count": padded_length(count), "trained_length": TRAINED_LENGTH,
            "limits": limits, "over_limits": over, "over_budget": count > TRAINED_LENGTH, "level": level}


def inspect(request: Request, tokenize: Tokenize, presets: dict[str, str] | None = None) -> dict:
    """Everything the inspector shows: text, prompt span, tokens (ids and pieces), count and limits.

    ``encoder_text`` is what the tokens spell; it differs from ``text`` where ComfyUI's tokenizer front
    end rewrites the prompt (``\\(`` -> ``(``, ``embedding:name`` words), and ``rewritten`` says so.
    """
    text, span = formatted_text(request, presets)
    tokens, encoder_text = tokenize(text)
    tokens = list(tokens)
    return {"text": text, "prompt_span": list(span), "encoder_text": encoder_text, "rewritten": encoder_text != text,
            "ids": [t[0] for t in tokens], "tokens": [t[1] for t in tokens], **budget(len(tokens))}
