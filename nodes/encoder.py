"""Z-Image Qwen3 Encoder: any hidden layer or blend of layers, long-prompt modes, one forward pass per text."""

from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io

from ..core import conditioning as cond
from ..core import encoder as core
from ..core import formatter
from . import CATEGORY
from ._internals import server
from ._internals.models import intermediate_device
from ._internals.text import StockQwen3, has_scheduled_hooks, is_stock_qwen3

CACHE_MB = int(os.environ.get("ZIMAGE_LAB_ENCODER_CACHE_MB", "1024"))
CACHE = core.HiddenStateCache(CACHE_MB * 2**20)
"""Every hidden state of each (encoder weights, text) this server encoded, so a text is encoded once."""


def _first_batch(tokens: dict) -> list:
    """The single token list of a ComfyUI tokenize() result ({name: [[(token, weight), ...]]})."""
    (batches,) = tokens.values()
    return [entry for batch in batches for entry in batch]


def adapter_for(clip):
    """Our view of a CLIP input: ComfyUI's Qwen3, or a transformers Qwen3 from ZImageLabHFQwen3Loader."""
    if clip is None:
        raise ValueError("clip is not connected: load Qwen3-4B with CLIPLoader (type lumina2) or Load HF Qwen3")
    if getattr(clip, "zimage_lab_encoder", False):
        return clip
    if not is_stock_qwen3(clip):
        raise ValueError("clip is not a Qwen3 text encoder: load qwen_3_4b.safetensors with CLIPLoader type lumina2 "
                         "(Z-Image's encoder), or a Hugging Face Qwen3 folder with Load HF Qwen3")
    if has_scheduled_hooks(clip):
        raise ValueError("clip carries scheduled hooks (CLIP Set Hooks), which this encoder does not apply: "
                         "use CLIPTextEncode for hooked text encoders")
    return StockQwen3(clip)


def encode_text(adapter, text: str) -> core.Encoded:
    """All hidden states of the exact text, with its token count and the prompt's token span."""
    tokens = adapter.tokenize_exact(text)
    entries = _first_batch(tokens)

    def count(prefix: str) -> int:
        return len(_first_batch(adapter.tokenize_exact(prefix)))

    span = core.token_span(count, text, formatter.prompt_char_span(text))
    hidden, mask = adapter.hidden_states(tokens)
    if mask is not None:
        mask = mask.clone()
    return core.Encoded(hidden, mask, len(entries), span)


def check_text(text: str) -> tuple[str, str]:
    """(encoder text, template) after rejecting prompts with nothing to encode."""
    if not text.strip():
        raise ValueError("text is empty: type a prompt, or connect a Prompt Formatter's text")
    full, template = formatter.encoder_text(text)
    span = formatter.prompt_char_span(full)
    if template == "formatted" and (span is None or not full[span[0]:span[1]].strip()):
        raise ValueError("text is chat-formatted but its last user turn is empty or missing: "
                         "write the prompt inside <|im_start|>user\\n...<|im_end|>")
    return full, template


def encode(clip, text: str, layer: int = core.DEFAULT_LAYER, layer_blend: str = "", long_prompt_mode: str = "none",
           token_budget: int = core.DEFAULT_BUDGET):
    """(CONDITIONING, token count, record): the node's work, usable from other nodes."""
    adapter = adapter_for(clip)
    full, template = check_text(text)
    recipe = core.layer_recipe(layer, layer_blend, adapter.num_layers)
    core.check_budget(long_prompt_mode, token_budget)
    encoded, hit = CACHE.get_or_encode(adapter.owner, (full, *adapter.identity()), lambda: encode_text(adapter, full))
    tokens = adapter.project(core.select_layers(encoded.hidden_states, recipe))
    fitted = core.fit_to_budget(tokens, long_prompt_mode, token_budget, encoded.content_span)
    record = {
        "encoder": adapter.name, "layer": recipe[0][0] if len(recipe) == 1 else None,
        "layer_blend": [[l, w] for l, w in recipe] if len(recipe) > 1 else None,
        "template": template, "text": full, "token_count": encoded.token_count,
        "long_prompt": fitted.record, "cache": "hit" if hit else "miss",
    }
    if fitted.content_span is not None:
        record["content_span"] = list(fitted.content_span)
    projector = getattr(adapter, "projector", None)
    if projector is not None:
        record["projector"] = projector.describe()
    extras = {"pooled_output": None}
    if encoded.attention_mask is not None:
        extras["attention_mask"] = encoded.attention_mask
    extras = cond.with_tokens(cond.with_metadata(extras, **record), fitted.tokens)
    out = fitted.tokens.to(intermediate_device())
    return [[out, extras]], encoded.token_count, record


def describe(record: dict) -> str:
    layers = core.describe_recipe([(record["layer"], 1.0)] if record["layer"] is not None else record["layer_blend"])
    span = record.get("content_span")
    prompt = f" (prompt {span[1] - span[0]})" if span else ""
    lines = [f"layer {layers} · {record['template']} template · {record['token_count']} tokens{prompt} · "
             f"encoder {record['encoder']} · cache {record['cache']}",
             core.describe_long_prompt(record["long_prompt"])]
    if record.get("projector"):
        lines.append(record["projector"])
    return "\n".join(lines)


class Qwen3Encode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabQwen3Encode",
            display_name="Z-Image Qwen3 Encoder",
            category=f"{CATEGORY}/prompt",
            description=(
                "Encodes a prompt with Qwen3 and reads any hidden layer (or a weighted blend of layers) instead of "
                "Z-Image's fixed layer -2. A plain prompt is wrapped in ComfyUI's Z-Image template; text that starts "
                "with <|im_start|> (from the Prompt Formatter) is used as is. At layer -2 with a plain prompt the "
                "output is identical to CLIPTextEncode. Every layer comes from one forward pass and is cached, so the "
                "same text is never encoded twice by this server (layer sweeps are free after the first). Prompts over "
                "the token budget can be truncated, interpolated, pooled or attention-pooled to exactly the budget."
            ),
            search_aliases=["hidden layer", "layer blend", "clip skip", "long prompt", "qwen3 encode", "zimage text encode"],
            inputs=[
                io.Clip.Input("clip", tooltip="Qwen3-4B from CLIPLoader (type lumina2), or a Qwen3 from Load HF Qwen3."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                tooltip="A plain prompt (wrapped in the default template) or the Prompt Formatter's text "
                                        "(starts with <|im_start|>; used exactly as written)."),
                io.Int.Input("layer", default=core.DEFAULT_LAYER, min=-64, max=-1,
                             tooltip="Hidden layer to read, counted from the end like transformers' hidden_states: -1 = last "
                                     "layer after the final norm, -2 = Z-Image's (identical to CLIPTextEncode), down to "
                                     "-36 for Qwen3-4B. Ignored when layer_blend is set."),
                io.String.Input("layer_blend", default="",
                                tooltip="Optional weighted blend of layers, e.g. \"-2:0.7, -5:0.3\" (weights are normalised "
                                        "to sum 1; a layer without :weight counts 1). Overrides layer. Empty = use layer."),
                io.Combo.Input("long_prompt_mode", options=list(core.LONG_PROMPT_MODES), default="none",
                               tooltip="What to do when the text has more tokens than token_budget. none: pass it on "
                                       "(ComfyUI has no limit; shown as over budget). truncate: drop the end of the prompt. "
                                       "interpolate: resample the prompt's tokens linearly. pool: average neighbouring "
                                       "tokens. attention_pool: average them weighted by how much each differs from its "
                                       "neighbours. Template tokens and the first and last token are kept."),
                io.Int.Input("token_budget", default=core.DEFAULT_BUDGET, min=2, max=16384,
                             tooltip="Tokens the conditioning may hold; 512 is the caption length Z-Image was trained "
                                     "with (diffusers truncates there). Modes other than none return exactly this many."),
            ],
            outputs=[
                io.Conditioning.Output("CONDITIONING", tooltip="Conditioning for the Z-Image sampler (records layer, "
                                       "template and the prompt's token span under extras['zimage_lab'])."),
                io.Int.Output("token_count", tooltip="Tokens the encoder read (before any long-prompt mode)."),
                io.String.Output("info", tooltip="JSON record of what was encoded: layer or blend, template, text, "
                                                 "token counts, long-prompt result, cache hit."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, layer, layer_blend, long_prompt_mode, token_budget) -> io.NodeOutput:
        conditioning, count, record = encode(clip, text, layer, layer_blend, long_prompt_mode, token_budget)
        if record["long_prompt"]["over_budget"]:
            logging.info("Z-Image Lab encoder: %s", core.describe_long_prompt(record["long_prompt"]))
        return io.NodeOutput(conditioning, count, json.dumps(record), ui={"text": [describe(record)]})


def on_load() -> None:
    """GET /zimage_lab/encoder_cache (counts of forward passes and hits) and POST .../clear."""
    from aiohttp import web

    routes = server.routes()
    if routes is None:  # loaded without a web server: nothing to serve
        return

    @routes.get("/zimage_lab/encoder_cache")
    async def cache_stats(request):
        return web.json_response(CACHE.stats())

    @routes.post("/zimage_lab/encoder_cache/clear")
    async def cache_clear(request):
        CACHE.clear()
        return web.json_response(CACHE.stats())


NODES = [Qwen3Encode]
