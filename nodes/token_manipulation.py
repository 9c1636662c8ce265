"""Caption token manipulations: shuffle, reverse, duplicate, keep/drop or move the prompt's own tokens."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..core import conditioning as cc
from ..core import token_manipulation as core
from . import CATEGORY


def manipulate_conditioning(conditioning, mode, seed, repeats, positions):
    """New CONDITIONING with every entry's content tokens re-indexed; returns (conditioning, records)."""
    records = []

    def fn(tokens, extras):
        span = cc.content_span(extras, tokens.shape[1])
        count = span[1] - span[0]
        chosen = core.parse_positions(positions, count, "positions") if mode in core.NEEDS_POSITIONS else []
        order = core.content_order(mode, count, seed=seed, repeats=repeats, positions=chosen)
        new_tokens, index = core.manipulate(tokens, span, order)
        mask = extras.get("attention_mask")
        if mask is not None:  # the caption length comes from the mask: re-index it with the rows
            extras["attention_mask"] = mask.index_select(mask.ndim - 1, index.to(mask.device))
        record = {"mode": mode, "content_span_before": list(span), "order": order}
        if mode == "shuffle":
            record["seed"] = seed
        if mode == "duplicate":
            record["repeats"] = repeats
        records.append(record)
        new_span = [span[0], span[0] + len(order)]
        return new_tokens, cc.with_metadata(extras, content_span=new_span, token_manipulation=record)

    return cc.map_conditioning(conditioning, fn), records


class TokenManipulate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTokenManipulate",
            display_name="Z-Image Caption Token Manipulate",
            category=f"{CATEGORY}/prompt",
            description=(
                "Token ablations on a Z-Image conditioning: shuffle (seeded), reverse, duplicate, keep or drop "
                "positions, or move positions to the front or back, acting on the prompt's own tokens only (the "
                "chat-template tokens stay in place; the attention mask follows the new length). 'none' = identity."
            ),
            search_aliases=["token shuffle", "token ablation", "reverse tokens", "duplicate prompt"],
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="A Z-Image conditioning (CLIPTextEncode or Z-Image Lab encoder)."),
                io.Combo.Input("mode", options=list(core.MODES), default="shuffle",
                               tooltip="none = identity; shuffle = seeded random order; reverse; duplicate = content "
                                       "repeated 'repeats' times; keep / drop = keep only / remove 'positions'; "
                                       "front_load / back_load = move 'positions' to the start / end."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the shuffle permutation (shuffle only): same seed, same order."),
                io.Int.Input("repeats", default=2, min=1, max=core.MAX_REPEATS,
                             tooltip="How many times the content appears (duplicate only); 1 = identity."),
                io.String.Input("positions", default="0-3",
                                tooltip="Content-token positions for keep / drop / front_load / back_load, counted from "
                                        "0 after the template prefix, inclusive ranges: e.g. '0-3, 7'."),
            ],
            outputs=[
                io.Conditioning.Output("CONDITIONING", tooltip="The manipulated conditioning (template tokens untouched)."),
                io.String.Output("info", tooltip="JSON record of what was done (mode, spans, the content order)."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, mode, seed, repeats, positions) -> io.NodeOutput:
        cc.require_tokens(conditioning, "conditioning")
        if mode == "none":
            info = {"node": "ZImageLabTokenManipulate", "mode": "none", "entries": []}
            return io.NodeOutput(conditioning, json.dumps(info), ui={"text": ["none: conditioning unchanged"]})
        out, records = manipulate_conditioning(conditioning, mode, seed, repeats, positions)
        info = {"node": "ZImageLabTokenManipulate", "mode": mode, "entries": records}
        lines = [core.describe(mode, r["content_span_before"][1] - r["content_span_before"][0], r["order"], seed, repeats)
                 for r in records]
        return io.NodeOutput(out, json.dumps(info), ui={"text": ["\n".join(lines)]})


NODES = [TokenManipulate]
