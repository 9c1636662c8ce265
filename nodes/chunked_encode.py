"""Z-Image Chunked Encode: encode a long prompt in overlapping template-wrapped windows and join them."""

from __future__ import annotations

from comfy_api.latest import io

from ..core import chunked_encode as core
from ..core import conditioning as cc
from ..core import validation
from . import CATEGORY
from ._internals.server import progress_bar

MAX_WINDOWS = 64
"""Most encoder passes one prompt may take (64 default windows hold about 26,000 tokens)."""


def prompt_tokens(clip, text: str):
    """ComfyUI's tokenization of the prompt in the default template: (encoder key, [(id, weight), ...])."""
    tokens = clip.tokenize(text)
    if len(tokens) != 1:
        raise ValueError(f"clip has {len(tokens)} text encoders ({', '.join(tokens)}): connect Z-Image's Qwen3 "
                         "(CLIPLoader qwen_3_4b.safetensors, type lumina2)")
    (key, rows), = tokens.items()
    if len(rows) != 1:
        raise ValueError(f"the tokenizer split the prompt into {len(rows)} rows: connect Z-Image's Qwen3 "
                         "(CLIPLoader type lumina2), which reads a prompt as one sequence")
    pairs = list(rows[0])
    if len(pairs) < cc.DEFAULT_PREFIX_TOKENS + cc.DEFAULT_SUFFIX_TOKENS:
        raise ValueError("clip did not wrap the prompt in Z-Image's chat template: connect Z-Image's Qwen3 (type lumina2)")
    return key, pairs


def encode_one(clip, key: str, pairs: list):
    """[tokens, extras] for one token list, encoded as CLIPTextEncode encodes (layer -2 for Z-Image)."""
    scheduled = clip.encode_from_tokens_scheduled({key: [pairs]})
    if len(scheduled) != 1:
        raise ValueError("clip has scheduled hooks: chunked encoding joins one encoding per window; remove the CLIP hooks")
    return scheduled[0]


def chunked_encode(clip, text: str, window: int, overlap: int, join: str):
    """(CONDITIONING, content token count, report line)."""
    core.validate(window, overlap, join)
    if clip is None:
        raise ValueError("clip is empty: connect a CLIP loader (qwen_3_4b.safetensors, type lumina2)")
    key, pairs = prompt_tokens(clip, text)
    n_prefix, n_suffix = cc.DEFAULT_PREFIX_TOKENS, cc.DEFAULT_SUFFIX_TOKENS
    n = len(pairs) - n_prefix - n_suffix
    windows = core.plan_windows(n, window, overlap)
    validation.bounded_count(len(windows), "text", MAX_WINDOWS, f"windows of {window} tokens",
                             "each window is one encoder pass; raise window or shorten the prompt")
    record = {"chunked": {"windows": [list(w) for w in windows], "window": window, "overlap": overlap, "join": join},
              "content_span": [n_prefix, n_prefix + n]}
    if len(windows) == 1:
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))  # exactly CLIPTextEncode
        return [[t, cc.with_metadata(e, **record)] for t, e in conditioning], n, core.describe(n, windows, join)
    bar = progress_bar(len(windows))
    encoded = []
    for tokens in core.window_tokens(pairs, windows, n_prefix, n_suffix):
        encoded.append(encode_one(clip, key, tokens))
        bar.update(1)
    states = [t for t, _ in encoded]
    content = core.join_windows([s[:, n_prefix:s.shape[1] - n_suffix] for s in states], windows, n, join)
    caption = core.assemble(states[0], states[-1], content, n_prefix, n_suffix)
    extras = cc.with_tokens(cc.with_metadata(encoded[0][1], **record), caption)
    return [[caption, extras]], n, core.describe(n, windows, join)


class ZImageChunkedEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabChunkedEncode",
            display_name="Z-Image Chunked Encode (long prompts)",
            category=f"{CATEGORY}/prompt",
            description=(
                "Encodes a long prompt in overlapping windows, each wrapped in Z-Image's chat template and read "
                "by Qwen3 on its own (hidden layer -2, as CLIPTextEncode), then joins the windows on the token "
                "axis: the first window's template prefix, the blended content, the last window's template "
                "suffix. Every encoder pass stays prompt-sized. A prompt that fits one window gives exactly "
                "CLIPTextEncode's conditioning. The joined caption keeps the prompt's length: add Z-Image RoPE "
                "Extend for captions past 512 tokens."
            ),
            search_aliases=["long prompt", "chunk", "sliding window", "window encode"],
            inputs=[
                io.Clip.Input("clip", tooltip="Z-Image's text encoder (CLIPLoader qwen_3_4b.safetensors, type lumina2)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt, of any length."),
                io.Int.Input("window", default=480, min=8, max=32768,
                             tooltip="Prompt tokens per window (the 8 template tokens come on top). Prompts up to this "
                                     "length are encoded in one pass, identical to CLIPTextEncode."),
                io.Int.Input("overlap", default=64, min=0, max=16384,
                             tooltip="Tokens shared by neighbouring windows (at least this many; less than half the window)."),
                io.Combo.Input("join", options=list(core.JOIN_MODES), default="crossfade",
                               tooltip="How overlapping windows are blended: crossfade ramps from the earlier window to the "
                                       "later one across the overlap; average weighs them equally."),
            ],
            outputs=[
                io.Conditioning.Output("CONDITIONING", tooltip="The joined caption, with a full attention mask."),
                io.Int.Output("token_count", tooltip="The prompt's own tokens (template tokens not counted)."),
                io.String.Output("info", tooltip="The windows used."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, window, overlap, join) -> io.NodeOutput:
        conditioning, n, info = chunked_encode(clip, text, window, overlap, join)
        return io.NodeOutput(conditioning, n, info, ui={"text": [info]})


NODES = [ZImageChunkedEncode]
