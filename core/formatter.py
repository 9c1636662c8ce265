"""Qwen3 chat formatting for Z-Image prompts: system prompt, think block, prefill, earlier turns.

Builds the exact string the Qwen3 encoder reads. With no system prompt, no earlier turns and no
think block the result is byte-equal to ComfyUI's Z-Image template
``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``, which is also what the
official pipelines produce: Qwen3's ``apply_chat_template(enable_thinking=True)`` adds no think
block. Strings are built by hand on purpose: the chat_template inside ComfyUI's
qwen25_tokenizer files is Qwen2.5's and would add a default system turn.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_MODES = ("none", "empty", "with content")
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a multi-turn prompt."""

    user: str
    assistant: str


def think_block(mode: str, thinking: str = "") -> str:
    """The think block Qwen3's template writes for an assistant turn with this reasoning."""
    if mode == "none":
        return ""
    if mode == "empty":
        return EMPTY_THINK_BLOCK
    if mode == "with content":
        return f"<think>\n{thinking.strip(chr(10))}\n</think>\n\n"
    raise ValueError(f"think_mode is {mode!r}: choose one of {', '.join(THINK_MODES)}")


def format_prompt(prompt: str, system_prompt: str = "", think_mode: str = "none", thinking: str = "",
                  assistant_prefill: str = "", history: tuple[Turn, ...] = ()) -> str:
    """The exact text the encoder reads for this prompt and chat settings."""
    return "".join(format_parts(prompt, system_prompt, think_mode, thinking, assistant_prefill, history))


def format_parts(prompt, system_prompt="", think_mode="none", thinking="", assistant_prefill="", history=()):
    """(before, prompt, after): the formatted text split around the user's prompt."""
    before = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
    for turn in history:
        before += f"<|im_start|>user\n{turn.user}<|im_end|>\n<|im_start|>assistant\n{turn.assistant}<|im_end|>\n"
    before += "<|im_start|>user\n"
    after = "<|im_end|>\n<|im_start|>assistant\n" + think_block(think_mode, thinking) + assistant_prefill
    return before, prompt, after


def content_char_span(prompt, system_prompt="", think_mode="none", thinking="", assistant_prefill="", history=()):
    """[start, end) character offsets of the user's prompt inside the formatted text."""
    before, text, _ = format_parts(prompt, system_prompt, think_mode, thinking, assistant_prefill, history)
    return len(before), len(before) + len(text)


@dataclass(frozen=True)
class Chat:
    """A conversation so far (system prompt and finished turns) that a later prompt continues."""

    system_prompt: str = ""
    turns: tuple[Turn, ...] = ()

    def then(self, user: str, assistant: str, system_prompt: str | None = None) -> "Chat":
        """This conversation with one more finished turn (and this system prompt, when given)."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return Chat(system, (*self.turns, Turn(user, assistant)))


FORMATTED_PREFIX = "<|im_start|>"


def is_formatted(text: str) -> bool:
    """True when text is already a chat-formatted prompt (it begins, after whitespace, with <|im_start|>)."""
    return text.lstrip().startswith(FORMATTED_PREFIX)


def encoder_text(text: str) -> tuple[str, str]:
    """(the exact text the encoder reads, "default" or "formatted"): plain prompts get ComfyUI's template once.

    Already formatted text is used as it is, less any whitespace before its first <|im_start|>, so a
    prompt from the formatter node is never templated twice.
    """
    if is_formatted(text):
        return text.lstrip(), "formatted"
    return format_prompt(text), "default"


def prompt_char_span(text: str) -> tuple[int, int] | None:
    """[start, end) of the last user turn's content in formatted text, or None when it has no user turn."""
    header = "<|im_start|>user\n"
    start = text.rfind(header)
    if start < 0:
        return None
    start += len(header)
    end = text.find("<|im_end|>", start)
    return start, (len(text) if end < 0 else end)


def combine_system_prompts(preset_text: str, system_prompt: str, history_system: str = "") -> str:
    """The system prompt a formatter writes: its preset, then its own text; the history's when both are empty."""
    own = "\n".join(part for part in (preset_text.strip("\n"), system_prompt.strip("\n")) if part)
    return own or history_system


def read_presets(folders) -> dict[str, str]:
    """System-prompt presets: every ``*.txt`` in these folders, named by file stem (later folders win)."""
    from pathlib import Path

    presets = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.txt")):
            presets[path.stem] = path.read_text(encoding="utf-8").strip("\n")
    return dict(sorted(presets.items()))
