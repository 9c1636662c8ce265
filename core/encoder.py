"""Qwen3 hidden-layer encoding for Z-Image: layer choice and blends, long-prompt modes, a hidden-state cache.

Layers are counted like transformers' ``hidden_states`` of a Qwen3 with ``n`` decoder layers: index 0
is the token embeddings, index ``i`` the output of decoder layer ``i - 1``, index ``n`` (layer -1) the
last layer's output after Qwen3's final RMSNorm. Layer ``-k`` is ``hidden_states[n + 1 - k]``;
Z-Image reads layer -2 (the output of decoder layer n - 2, before the final norm), exactly what
ComfyUI's CLIPTextEncode gives for it. One forward pass yields every layer, so a layer sweep or a
blend encodes the text once.

Long prompts are fitted to a token budget (512: the caption length Z-Image was trained with) by
truncating, interpolating, pooling or importance-pooling the prompt's own tokens; the chat-template
tokens around it are kept as they are when they fit, and the first and last token are always kept.
"""

from __future__ import annotations

import itertools
import math
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DEFAULT_LAYER = -2
DEFAULT_BUDGET = 512
LONG_PROMPT_MODES = ("none", "truncate", "interpolate", "pool", "attention_pool")
ATTENTION_POOL_WINDOW = 2
"""Neighbours on each side a token is compared with to score how much it differs from them."""
ATTENTION_POOL_TEMPERATURE = 0.1
"""Softmax temperature over those scores (1 - mean cosine similarity, in [0, 2]) within a region."""


# ---------------------------------------------------------------- layers

def check_layer(layer: int, num_layers: int, name: str = "layer") -> int:
    """The layer if it exists in a Qwen3 of num_layers decoder layers, else a ValueError naming the range."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -num_layers <= layer <= -1:
        raise ValueError(f"{name} {layer!r} is out of range: this Qwen3 has {num_layers} layers, "
                         f"choose -1 (last, after the final norm) ... -{num_layers} (first); Z-Image reads -2")
    return layer


def hidden_index(layer: int, num_layers: int) -> int:
    """Index into the num_layers + 1 hidden states (embeddings first) of a negative layer number."""
    return num_layers + 1 + check_layer(layer, num_layers)


_BLEND_ITEM = re.compile(r"^\s*([+-]?\d+)\s*(?::\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*)?$")


def parse_layer_blend(spec: str, num_layers: int) -> list[tuple[int, float]]:
    """``"-2:0.7, -5:0.3"`` -> [(-2, 0.7), (-5, 0.3)] with weights normalised to sum 1 (empty -> [])."""
    if not spec or not spec.strip():
        return []
    pairs = []
    for item in re.split(r"[,;]", spec.strip().strip(",;")):
        match = _BLEND_ITEM.match(item)
        if match is None:
            raise ValueError(f"layer_blend {spec!r} is malformed at {item.strip()!r}: write layer:weight pairs "
                             "separated by commas, e.g. \"-2:0.7, -5:0.3\" (a layer without :weight counts 1)")
        layer, weight = int(match.group(1)), float(match.group(2) if match.group(2) is not None else 1.0)
        check_layer(layer, num_layers, name="layer_blend layer")
        if any(layer == seen for seen, _ in pairs):
            raise ValueError(f"layer_blend {spec!r} names layer {layer} twice: give each layer once")
        pairs.append((layer, weight))
    total = sum(w for _, w in pairs)
    if abs(total) < 1e-12:
        raise ValueError(f"layer_blend {spec!r} has weights summing to 0: they are normalised by their sum, "
                         "so the sum must not be 0")
    return [(layer, w / total) for layer, w in pairs]


def layer_recipe(layer: int, layer_blend: str, num_layers: int) -> list[tuple[int, float]]:
    """The (layer, weight) list to read: the blend when one is given, else the single layer."""
    return parse_layer_blend(layer_blend, num_layers) or [(check_layer(layer, num_layers), 1.0)]


def select_layers(hidden_states: torch.Tensor, recipe: list[tuple[int, float]]) -> torch.Tensor:
    """[B, n+1, L, W] hidden states -> [B, L, W]: one layer exactly, or the weighted sum of a blend."""
    num_layers = hidden_states.shape[1] - 1
    if len(recipe) == 1 and recipe[0][1] == 1.0:
        return hidden_states[:, hidden_index(recipe[0][0], num_layers)].clone()
    out = torch.zeros_like(hidden_states[:, 0])
    for layer, weight in recipe:
        out += weight * hidden_states[:, hidden_index(layer, num_layers)]
    return out


def describe_recipe(recipe: list[tuple[int, float]]) -> str:
    """'-2' or '-2:0.700, -5:0.300'."""
    if len(recipe) == 1 and recipe[0][1] == 1.0:
        return str(recipe[0][0])
    return ", ".join(f"{layer}:{weight:.3f}" for layer, weight in recipe)


# ---------------------------------------------------------------- tokens of the prompt

def token_span(count_tokens, text: str, char_span: tuple[int, int] | None) -> tuple[int, int] | None:
    """[start, end) tokens of text[char_span] given ``count_tokens(prefix) -> int`` of the same tokenizer.

    Chat-template boundaries are special tokens or newlines, so the prompt's tokens start after the
    tokens of the text before it and end with the tokens of the text up to its end.
    """
    if char_span is None:
        return None
    start, end = char_span
    return count_tokens(text[:start]), count_tokens(text[:end])


# ---------------------------------------------------------------- long prompts

def check_budget(mode: str, budget: int) -> None:
    """ValueError for an unknown mode or a budget that cannot keep the first and last token."""
    if mode not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompt_mode is {mode!r}: choose one of {', '.join(LONG_PROMPT_MODES)}")
    if budget < 2:
        raise ValueError(f"token_budget is {budget}: it must be at least 2 (the first and last token are always kept)")


def keep_ends(length: int, budget: int, content: tuple[int, int] | None) -> tuple[int, int]:
    """(head, tail) tokens kept as they are: the template around the prompt when it fits, else 1 and 1."""
    if content is not None:
        head, tail = content[0], length - content[1]
        if head >= 1 and tail >= 1 and head + tail < budget:
            return head, tail
    return 1, 1


def _interpolate(x: torch.Tensor, n: int) -> torch.Tensor:
    """[L, W] -> [n, W] by linear interpolation along the sequence, ends on ends."""
    if n == 1:
        return x[:1].clone()
    return F.interpolate(x.t().unsqueeze(0), size=n, mode="linear", align_corners=True).squeeze(0).t()


def _pool(x: torch.Tensor, n: int) -> torch.Tensor:
    """[L, W] -> [n, W] by adaptive average pooling (region i = tokens floor(iL/n) .. ceil((i+1)L/n))."""
    return F.adaptive_avg_pool1d(x.t().unsqueeze(0), n).squeeze(0).t()


def novelty(x: torch.Tensor, window: int = ATTENTION_POOL_WINDOW) -> torch.Tensor:
    """[L] per token: 1 - mean cosine similarity to its (up to 2*window) neighbours."""
    unit = F.normalize(x.float(), dim=-1)
    length = x.shape[0]
    total = torch.zeros(length, dtype=unit.dtype, device=x.device)
    count = torch.zeros(length, dtype=unit.dtype, device=x.device)
    for offset in itertools.chain(range(-window, 0), range(1, window + 1)):
        lo, hi = max(0, -offset), min(length, length - offset)
        if lo >= hi:
            continue
        total[lo:hi] += (unit[lo:hi] * unit[lo + offset:hi + offset]).sum(-1)
        count[lo:hi] += 1
    return 1.0 - total / count.clamp(min=1)


def _attention_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    """[L, W] -> [n, W]: L split into n consecutive regions, each the softmax(novelty/T)-weighted mean."""
    length = x.shape[0]
    region = torch.div(torch.arange(length, device=x.device) * n, length, rounding_mode="floor")
    score = novelty(x) / ATTENTION_POOL_TEMPERATURE
    peak = torch.full((n,), -math.inf, dtype=score.dtype, device=x.device).scatter_reduce(0, region, score, "amax")
    weight = torch.exp(score - peak[region])
    weight = weight / torch.zeros(n, dtype=score.dtype, device=x.device).scatter_add(0, region, weight)[region]
    out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, region, x.float() * weight.unsqueeze(-1))
    return out.to(x.dtype)


_SHRINK = {"truncate": lambda x, n: x[:n].clone(), "interpolate": _interpolate, "pool": _pool,
           "attention_pool": _attention_pool}


@dataclass
class LongPromptResult:
    tokens: torch.Tensor
    content_span: tuple[int, int] | None
    record: dict = field(default_factory=dict)


def fit_to_budget(tokens: torch.Tensor, mode: str, budget: int, content: tuple[int, int] | None = None) -> LongPromptResult:
    """[B, L, W] -> [B, budget, W] when L > budget (mode != "none"): ends kept, the middle shrunk.

    The kept ends are the chat-template tokens around the prompt (``content`` span) when they fit in
    the budget, else only the first and last token. Prompts within the budget are returned as they are.
    """
    check_budget(mode, budget)
    length = tokens.shape[1]
    record = {"mode": mode, "budget": budget, "tokens_in": length, "over_budget": length > budget}
    if length <= budget or mode == "none":
        return LongPromptResult(tokens, content, {**record, "tokens_out": length})
    head, tail = keep_ends(length, budget, content)
    middle = budget - head - tail
    shrink = _SHRINK[mode]
    rows = [torch.cat([t[:head], shrink(t[head:length - tail], middle) if middle else t[:0], t[length - tail:]])
            for t in tokens]
    out = torch.stack(rows)
    # the prompt's tokens are now the shrunk middle (mixed with the template's when those did not fit)
    new_span = None if content is None else (head, budget - tail)
    return LongPromptResult(out, new_span, {**record, "tokens_out": budget, "kept_head": head, "kept_tail": tail})


def describe_long_prompt(record: dict) -> str:
    """One line on the prompt's length against the budget."""
    n, budget, mode = record["tokens_in"], record["budget"], record["mode"]
    if not record["over_budget"]:
        return f"{n} tokens (budget {budget})"
    if mode == "none":
        return f"OVER BUDGET: {n} tokens > {budget} (long_prompt_mode none: passed on unchanged)"
    return f"OVER BUDGET: {n} tokens > {budget}, {mode} -> {record['tokens_out']} tokens"


# ---------------------------------------------------------------- cache

@dataclass
class Encoded:
    """Every hidden state of one text: [B, n+1, L, W], its attention mask, token count and prompt span."""

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None
    token_count: int
    content_span: tuple[int, int] | None
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.hidden_states.numel() * self.hidden_states.element_size()


class HiddenStateCache:
    """Hidden states per (encoder weights, text), least recently used dropped past max_bytes.

    Entries hang off the encoder module through a weak reference, so they go when ComfyUI drops the
    text encoder (another file loaded, or /free with free_memory).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._owners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._clock = itertools.count()
        self.forward_passes = 0
        self.hits = 0
        self.evictions = 0

    def get_or_encode(self, owner, key, encode) -> tuple[Encoded, bool]:
        """The cached entry for (owner, key), or ``encode()`` counted as one forward pass and stored."""
        entries = self._owners.setdefault(owner, OrderedDict())
        if key in entries:
            self.hits += 1
            entries.move_to_end(key)
            entries[key] = (next(self._clock), entries[key][1])
            value = entries[key][1]
            return value, True
        value = encode()
        self.forward_passes += 1
        if value.nbytes <= self.max_bytes:
            entries[key] = (next(self._clock), value)
            self._shrink()
        return value, False

    def _shrink(self) -> None:
        while self.nbytes > self.max_bytes:
            owner, key = min(((o, k) for o, e in self._owners.items() for k in e), key=lambda ok: self._owners[ok[0]][ok[1]][0])
            del self._owners[owner][key]
            self.evictions += 1

    @property
    def entries(self) -> int:
        return sum(len(e) for e in self._owners.values())

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for e in self._owners.values() for _, v in e.values())

    def clear(self) -> None:
        self._owners.clear()

    def stats(self) -> dict:
        return {"forward_passes": self.forward_passes, "hits": self.hits, "entries": self.entries,
                "bytes": self.nbytes, "max_bytes": self.max_bytes, "evictions": self.evictions,
                "encoders": len(self._owners)}
