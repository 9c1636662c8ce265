"""Server side of the live prompt inspector (js/inspector.js): POST /zimage_lab/inspect.

Tokenises with ComfyUI's own Z-Image tokenizer (the one CLIPLoader type lumina2 builds, with the
same embeddings folders), so the count is what the encoder will see: its front end un-escapes
``\\(`` ``\\)`` and treats ``embedding:name`` words the way CLIPTextEncode does. The tokenizer is
loaded once, on the first request, in a worker thread; no model is loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ..core import inspector as core
from . import formatter
from ._internals import server
from ._internals.text import tokenize_exact, z_image_qwen_tokenizer

ROUTE = "/zimage_lab/inspect"


EMBEDDING_PIECE = "<embedding vector>"


def tokenize(text: str) -> tuple[list[tuple], str]:
    """(id, piece) per token the Z-Image encoder gets for this exact text (no template added), and the
    text those tokens spell."""
    qwen = z_image_qwen_tokenizer()
    tokens = [(t, qwen.decode([t])) if isinstance(t, int) else (None, EMBEDDING_PIECE)
              for t, _weight in tokenize_exact(text)]
    runs, ids = [], []
    for token_id, _piece in tokens:  # decode runs of ids whole, so characters split over tokens survive
        if token_id is None:
            runs += [qwen.decode(ids), EMBEDDING_PIECE]
            ids = []
        else:
            ids.append(token_id)
    return tokens, "".join(runs) + qwen.decode(ids)


async def handle_inspect(request):
    """POST {prompt, system_prompt, preset, think_mode, thinking, assistant_prefill, raw} -> inspection JSON."""
    from aiohttp import web

    try:
        query = core.Request.from_json(await request.json())
        presets = formatter.presets()
        core.preset_text(query.preset, presets)
    except json.JSONDecodeError:
        return web.json_response({"error": "the request body is not JSON"}, status=400)
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=400)
    try:
        result = await asyncio.to_thread(core.inspect, query, tokenize, presets)
    except Exception as e:  # a tokenizer failure must not take the route down with a bare 500
        logging.exception("Z-Image Lab prompt inspector failed")
        return web.json_response({"error": f"tokenizing failed: {e}"}, status=500)
    return web.json_response(result)


def on_load():
    """Register the route on ComfyUI's server (served at /zimage_lab/inspect and /api/zimage_lab/inspect)."""
    routes = server.routes()
    if routes is None:  # loaded without a web server (scripts, node scanners): nothing to serve
        return
    routes.post(ROUTE)(handle_inspect)


NODES = []
