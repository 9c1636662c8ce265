"""Conventions every Z-Image Lab node shares for ComfyUI CONDITIONING (no ComfyUI import).

A CONDITIONING is a list of ``[tokens, extras]``: ``tokens`` is ``[batch, L, width]`` (Qwen3
hidden states, width 2560 for Z-Image) and ``extras`` a dict. ComfyUI derives the DiT's caption
length from ``extras["attention_mask"]`` (Lumina2.extra_conds: num_tokens = mask.sum()), so a
node that changes L must replace the mask, or the model silently reads the wrong number of tokens.

Our nodes record what they did under ``extras["zimage_lab"]`` (layer, template, content span,
steering vectors, ...), so a result can be reproduced and the next node knows which tokens are
the prompt's own (content) and which are chat-template tokens.
"""

from __future__ import annotations

import torch

LAB_KEY = "zimage_lab"

DEFAULT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
"""ComfyUI's Z-Image template (comfy/text_encoders/z_image.py); the official pipelines' default."""

DEFAULT_PREFIX_TOKENS = 3  # <|im_start|> "user" "\n"
DEFAULT_SUFFIX_TOKENS = 5  # <|im_end|> "\n" <|im_start|> "assistant" "\n"


def lab_metadata(extras: dict) -> dict:
    """The Z-Image Lab record carried by a conditioning entry (empty for stock conditioning)."""
    return dict(extras.get(LAB_KEY) or {})


def with_metadata(extras: dict, **updates) -> dict:
    """A copy of extras whose Z-Image Lab record has these keys updated (the input is not mutated)."""
    out = dict(extras)
    out[LAB_KEY] = {**lab_metadata(extras), **updates}
    return out


def content_span(extras: dict, num_tokens: int) -> tuple[int, int]:
    """[start, end) of the prompt's own tokens: recorded by our encoder, else the default template's."""
    span = lab_metadata(extras).get("content_span")
    start, end = span if span is not None else (DEFAULT_PREFIX_TOKENS, num_tokens - DEFAULT_SUFFIX_TOKENS)
    if not 0 <= start < end <= num_tokens:
        raise ValueError(f"the conditioning has no content tokens ({num_tokens} tokens in all, all of them "
                         "chat-template tokens): encode a non-empty prompt")
    return int(start), int(end)


def with_tokens(extras: dict, tokens: torch.Tensor) -> dict:
    """Extras fitted to a new token tensor: a full attention mask of the new length when L changed."""
    out = dict(extras)
    mask = extras.get("attention_mask")
    if mask is not None and mask.shape[-1] != tokens.shape[1]:
        out["attention_mask"] = torch.ones(tokens.shape[0], tokens.shape[1], dtype=mask.dtype, device=mask.device)
    return out


def map_conditioning(conditioning: list, fn) -> list:
    """New conditioning with ``fn(tokens, extras) -> (tokens, extras)`` applied to every entry."""
    out = []
    for tokens, extras in conditioning:
        new_tokens, new_extras = fn(tokens, dict(extras))
        out.append([new_tokens, with_tokens(new_extras, new_tokens)])
    return out


def require_tokens(conditioning: list, name: str) -> None:
    """Raise ValueError naming the input when a conditioning is empty or not Z-Image shaped."""
    if not conditioning:
        raise ValueError(f"{name} is an empty conditioning: connect a text encoder's output")
    for tokens, _ in conditioning:
        if tokens.ndim != 3 or tokens.shape[1] == 0:
            raise ValueError(f"{name} has token tensor of shape {tuple(tokens.shape)}: expected [batch, tokens, width]")
