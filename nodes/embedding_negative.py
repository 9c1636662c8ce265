"""Embedding Negative: steer the positive conditioning away from a negative prompt, for cfg 1."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..core import conditioning as cc
from ..core import embedding_negative as core
from ..core import validation
from . import CATEGORY


def negative_entries(negative) -> list:
    """(tokens, content span) of every negative entry; ValueError naming 'negative' when it has no content."""
    cc.require_tokens(negative, "negative")
    entries = []
    for tokens, extras in negative:
        try:
            entries.append((tokens, cc.content_span(extras, tokens.shape[1])))
        except ValueError as err:
            raise ValueError(f"negative: {err}") from None
    return entries


class EmbeddingNegative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabEmbeddingNegative",
            display_name="Embedding Negative",
            category=f"{CATEGORY}/negative",
            description=(
                "A negative prompt that works at cfg 1: moves every positive token away from the negative prompt's "
                "pooled direction (mean of its content tokens). subtract: x - s*n. orthogonal: removes s times the "
                "component along n (s = 1 leaves every token orthogonal to it). contrastive: subtracts s times the "
                "unit direction from each token's unit direction and restores the token's norm. Strength 0 returns "
                "the positive unchanged. Positive and negative may have different token counts."),
            search_aliases=["negative prompt", "cfg 1 negative", "orthogonal negative"],
            inputs=[
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning."),
                io.Conditioning.Input("negative", tooltip="What to steer away from (encode it like the positive)."),
                io.Combo.Input("mode", options=list(core.MODES), default="orthogonal",
                               tooltip="subtract, orthogonal (project the negative direction out) or contrastive "
                                       "(move each token's direction, keep its norm)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, round=0.0001,
                               tooltip="s in the formulas; 0 changes nothing. orthogonal: 1 removes the whole component. "
                                       "subtract / contrastive: start around 0.1-0.5."),
                io.Combo.Input("scope", options=list(core.SCOPES), default="all tokens",
                               tooltip="Which positive tokens to change: all tokens, or only the prompt's content tokens."),
            ],
            outputs=[
                io.Conditioning.Output("positive", tooltip="The positive conditioning moved away from the negative."),
                io.String.Output("info", tooltip="JSON record: mode, strength, and the tokens' cosine to the negative "
                                                 "direction before and after."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, mode, strength, scope) -> io.NodeOutput:
        strength = validation.finite(strength, "strength", "0 changes nothing, 1 is the usual orthogonal setting")
        cc.require_tokens(positive, "positive")
        if mode not in core.MODES:
            raise ValueError(f"mode is {mode!r}: choose one of {', '.join(core.MODES)}")
        if scope not in core.SCOPES:
            raise ValueError(f"scope is {scope!r}: choose one of {', '.join(core.SCOPES)}")
        direction = core.pooled_direction(negative_entries(negative))
        width = positive[0][0].shape[-1]
        if direction.shape[-1] != width:
            raise ValueError(f"negative has width {direction.shape[-1]} but positive has width {width}: encode both "
                             "with the same text encoder")
        record = {"mode": mode, "strength": float(strength), "scope": scope, "negative_norm": float(direction.norm())}
        before, after = [], []

        def steer(tokens, extras):
            span = cc.content_span(extras, tokens.shape[1]) if scope == "content tokens" else None
            out = core.apply_negative(tokens, direction, mode, strength, span)
            rows = slice(None) if span is None else slice(*span)
            before.append(core.cosine_to(tokens[:, rows], direction).abs().max().item())
            after.append(core.cosine_to(out[:, rows], direction).abs().max().item())
            return out, cc.with_metadata(extras, embedding_negative=record)

        out = cc.map_conditioning(positive, steer)
        info = {"node": "ZImageLabEmbeddingNegative", **record, "max_abs_cos_before": max(before),
                "max_abs_cos_after": max(after), "cos_over": scope}
        text = (f"{mode} x {strength:g} on {scope}: max |cos(token, negative)| {max(before):.3g} -> {max(after):.3g}")
        return io.NodeOutput(out, json.dumps(info), ui={"text": [text]})


NODES = [EmbeddingNegative]
