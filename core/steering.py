"""Steering vectors: direction arithmetic on Z-Image's caption tokens (no ComfyUI import).

A steering vector is the difference of two pooled prompt sets,

    v = mean_{a in A} mean_{t in content(a)} h_t(a)  -  mean_{b in B} mean_{t in content(b)} h_t(b)

where h_t is a caption token's hidden state: the Qwen3 embedding at the encoder layer
("embedding" space, width 2560 on the real model) or the same token after Z-Image's caption
embedder and context refiner ("refined" space, width 3840). Only the prompt's own (content)
tokens are pooled: the chat-template tokens (``<|im_start|>user\\n`` ... ``<|im_end|>\\n
<|im_start|>assistant\\n``) are the same in every prompt, so their hidden states carry the
role/format signal rather than the prompt's content, and Qwen3's first tokens have norms many
times larger than content tokens, so including them would let the template dominate the mean.

Applying a vector adds ``alpha * v`` to tokens; several vectors compose by adding. Vectors are
stored as safetensors with their provenance (layer, template, space, prompt counts, norm) in the
file's metadata, and load back bit for bit.

Layers are numbered as everywhere in the pack (core.encoder): like transformers' ``hidden_states``,
-1 is the last layer after Qwen3's final norm and -2 what Z-Image reads (= CLIPTextEncode). The
metadata key ``layer_numbering`` says so ("hidden_states"). Files written before it existed were
read through ComfyUI's ``clip_layer``, which agrees for -2 ... -n but takes -1 as the last layer
BEFORE the final norm, and 0 ... n-1 as decoder outputs counted from the front: such a vector
keeps its layer, and ``pack_layer`` says which pack layer it is (None where there is none).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace

import torch

FORMAT = "zimage_lab.steering_vector/1"
TENSOR_KEY = "steering_vector"
SPACES = ("embedding", "refined")
SCOPES = ("content tokens", "all tokens")
NUMBERING = "hidden_states"
"""Layer numbering of vectors built now (the pack's); "clip_layer" marks files from before it."""
LEGACY_NUMBERING = "clip_layer"


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A direction with the settings it was made at, so it is applied where it means something."""

    vector: torch.Tensor  # [width], float32
    layer: int
    template: str
    space: str = "embedding"
    prompts_a: tuple[str, ...] = ()
    prompts_b: tuple[str, ...] = ()
    normalized: bool = False
    raw_norm: float = 0.0  # norm of mean(A) - mean(B) before any normalisation
    name: str = ""  # file it was loaded from, if any
    numbering: str = NUMBERING  # how `layer` counts (see the module notes)

    @property
    def width(self) -> int:
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        return float(self.vector.double().norm())

    def metadata(self) -> dict[str, str]:
        """safetensors metadata (strings only) that describes this vector completely."""
        return {
            "format": FORMAT,
            "space": self.space,
            "layer": str(self.layer),
            "layer_numbering": self.numbering,
            "template": self.template,
            "width": str(self.width),
            "count_a": str(len(self.prompts_a)),
            "count_b": str(len(self.prompts_b)),
            "prompts_a": json.dumps(list(self.prompts_a), ensure_ascii=False),
            "prompts_b": json.dumps(list(self.prompts_b), ensure_ascii=False),
            "normalized": "true" if self.normalized else "false",
            "norm": repr(self.norm),
            "raw_norm": repr(float(self.raw_norm)),
        }

    @property
    def pack_layer(self) -> int | None:
        """The layer in the pack's numbering, or None for a legacy clip_layer with no equivalent."""
        if self.numbering == NUMBERING or self.layer <= -2:
            return self.layer
        return None

    def layer_label(self) -> str:
        """'-2', or 'clip_layer -1 (...)' for a legacy layer the pack's encoders cannot produce."""
        if self.pack_layer is not None:
            return str(self.layer)
        where = "the last layer before the final norm" if self.layer == -1 else f"decoder layer {self.layer}'s output"
        return f"clip_layer {self.layer} ({where}; saved before the pack used one layer numbering)"

    def describe(self) -> str:
        """One line for a node's report."""
        label = f"'{self.name}' " if self.name else ""
        return (f"steering vector {label}({self.space} space, width {self.width}, layer {self.layer_label()}): "
                f"norm {self.norm:.4g}{' (normalised, raw ' + format(self.raw_norm, '.4g') + ')' if self.normalized else ''}, "
                f"{len(self.prompts_a)} A prompts - {len(self.prompts_b)} B prompts")

    def record(self) -> dict:
        """JSON-able provenance (no tensor) for extras["zimage_lab"] and info outputs."""
        return {"name": self.name, "space": self.space, "layer": self.layer, "layer_numbering": self.numbering,
                "template": self.template,
                "width": self.width, "norm": self.norm, "raw_norm": float(self.raw_norm),
                "normalized": self.normalized, "count_a": len(self.prompts_a), "count_b": len(self.prompts_b)}


def parse_prompts(text: str, name: str) -> list[str]:
    """One prompt per non-empty line; ValueError naming the input when there is none."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{name} is empty: write one prompt per line (at least one)")
    return prompts


def split_template(template: str) -> tuple[str, str]:
    """(prefix, suffix) of a chat template around its single '{}' placeholder."""
    if template.count("{}") != 1:
        raise ValueError(f"template must contain the placeholder '{{}}' exactly once (it has {template.count('{}')}): "
                         "e.g. <|im_start|>user\\n{}<|im_end|>\\n<|im_start|>assistant\\n")
    try:
        template.format("")
    except (KeyError, IndexError, ValueError):
        raise ValueError("template has braces other than the one {} placeholder (ComfyUI fills it with str.format): "
                         "write other braces doubled, {{ and }}") from None
    prefix, suffix = template.split("{}")
    return prefix, suffix


def template_span(ids: list[int], prefix_ids: list[int], suffix_ids: list[int]) -> tuple[int, int]:
    """[start, end) of the content tokens, checking the template tokens really frame them."""
    start, end = len(prefix_ids), len(ids) - len(suffix_ids)
    if ids[:start] != list(prefix_ids) or ids[end:] != list(suffix_ids):
        raise ValueError("the template's text merges with the prompt's first or last token, so content tokens cannot "
                         "be told apart: end the template prefix and begin its suffix with a newline or special token")
    if end <= start:
        raise ValueError("a prompt has no content tokens (only chat-template tokens): remove empty prompts")
    return start, end


def pool_content(tokens: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Mean hidden state of the content tokens (and over the batch), in float32: [width]."""
    start, end = span
    if tokens.ndim != 3 or not 0 <= start < end <= tokens.shape[1]:
        raise ValueError(f"cannot pool tokens {start}..{end} of a tensor of shape {tuple(tokens.shape)}")
    return tokens[:, start:end].float().mean(dim=1).mean(dim=0)


def difference_of_means(pooled_a: list[torch.Tensor], pooled_b: list[torch.Tensor]) -> torch.Tensor:
    """mean(A) - mean(B) of per-prompt pooled vectors."""
    if not pooled_a or not pooled_b:
        raise ValueError("both prompt sets need at least one prompt")
    return torch.stack(pooled_a).mean(dim=0) - torch.stack(pooled_b).mean(dim=0)


def make_vector(pooled_a, pooled_b, *, layer: int, template: str, space: str, prompts_a, prompts_b,
                normalize: bool) -> SteeringVector:
    """Build a SteeringVector from per-prompt pooled vectors, optionally scaled to unit norm."""
    if space not in SPACES:
        raise ValueError(f"space is {space!r}: choose one of {', '.join(SPACES)}")
    diff = difference_of_means(pooled_a, pooled_b)
    raw_norm = float(diff.double().norm())
    if not math.isfinite(raw_norm):
        raise ValueError("the steering vector is not finite: the encoder produced inf/NaN hidden states")
    if normalize:
        if raw_norm == 0.0:
            raise ValueError("prompts A and B pool to the same vector (difference 0): it cannot be normalised")
        diff = diff / diff.norm()
    return SteeringVector(diff.contiguous(), int(layer), template, space, tuple(prompts_a), tuple(prompts_b),
                          bool(normalize), raw_norm)


def save_vector(vector: SteeringVector, path: str) -> None:
    """Write the vector and its metadata as a safetensors file."""
    from safetensors.torch import save_file

    save_file({TENSOR_KEY: vector.vector.detach().to("cpu", torch.float32).contiguous()}, path,
              metadata=vector.metadata())


def load_vector(path: str) -> SteeringVector:
    """Read a vector saved by save_vector; ValueError with the file name when it is not one."""
    from safetensors import safe_open

    name = os.path.basename(path)
    if not name.lower().endswith(".safetensors"):
        raise ValueError(f"{name} is not a .safetensors file: steering vectors are saved as .safetensors "
                         "(by the Save Steering Vector node)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensor = f.get_tensor(TENSOR_KEY) if TENSOR_KEY in keys else None
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{name} is not a readable safetensors file ({err}): steering vectors are saved "
                         "by the Save Steering Vector node") from None
    if meta.get("format") != FORMAT or tensor is None:
        raise ValueError(f"{name} is a safetensors file but not a Z-Image Lab steering vector "
                         f"(format {meta.get('format')!r}, tensors {keys[:4]})")
    return from_metadata(tensor, meta, name=os.path.splitext(name)[0])


def from_metadata(tensor: torch.Tensor, meta: dict[str, str], name: str = "") -> SteeringVector:
    """Rebuild a SteeringVector from its tensor and safetensors metadata, checking they agree."""
    try:
        vector = SteeringVector(
            tensor, int(meta["layer"]), meta["template"], meta["space"],
            tuple(json.loads(meta["prompts_a"])), tuple(json.loads(meta["prompts_b"])),
            meta["normalized"] == "true", float(meta["raw_norm"]), name,
            meta.get("layer_numbering", LEGACY_NUMBERING))
    except (KeyError, ValueError) as err:
        raise ValueError(f"steering vector {name!r} has incomplete metadata ({err})") from None
    if tensor.ndim != 1 or int(meta["width"]) != vector.width:
        raise ValueError(f"steering vector {name!r} has shape {tuple(tensor.shape)} but its metadata says width "
                         f"{meta['width']}: the file is damaged")
    if vector.space not in SPACES:
        raise ValueError(f"steering vector {name!r} has unknown space {vector.space!r}")
    if vector.numbering not in (NUMBERING, LEGACY_NUMBERING):
        raise ValueError(f"steering vector {name!r} has unknown layer_numbering {vector.numbering!r}")
    return vector


def layer_mismatch(vector: SteeringVector, record: dict) -> str | None:
    """A warning when the vector's layer is not the one a conditioning was encoded at (record: its metadata)."""
    label = f"vector {vector.name or ''}".rstrip()
    if vector.pack_layer is None:
        return (f"{label} was made at {vector.layer_label()}, a layer no encoder of the pack produces: "
                "rebuild it with Build Steering Vector")
    if record.get("layer") is None and record.get("layer_blend"):
        return (f"{label} was made at layer {vector.layer} but the conditioning is a blend of layers "
                f"{record['layer_blend']}: directions of different layers do not match")
    layer = record.get("layer", -2)
    if isinstance(layer, int) and layer != vector.pack_layer:
        assumed = "" if "layer" in record else " (assumed: stock encoders use -2)"
        return (f"{label} was made at layer {vector.layer} but the conditioning was encoded at layer {layer}{assumed}: "
                "directions of different layers do not match")
    return None


def check_width(vector: SteeringVector, width: int, what: str) -> None:
    """ValueError when a vector cannot be added to tokens of this width."""
    if vector.width != width:
        label = f" '{vector.name}'" if vector.name else ""
        raise ValueError(f"steering vector{label} has width {vector.width} ({vector.space} space) but {what} has width "
                         f"{width}: embedding-space vectors (text-encoder width) go to Apply Steering, refined-space "
                         "vectors (DiT width) to Refined Steering; build the vector with the same models you sample with")


def combined_delta(vectors: list[tuple[SteeringVector, float]]) -> torch.Tensor | None:
    """sum(alpha_i * v_i) in float32, or None when every alpha is 0 (nothing to add)."""
    active = [(v, a) for v, a in vectors if a != 0.0]
    if not active:
        return None
    widths = {v.width for v, _ in active}
    if len(widths) != 1:
        raise ValueError(f"the steering vectors have different widths {sorted(widths)}: they cannot be added")
    delta = torch.zeros(active[0][0].width, dtype=torch.float32)
    for v, alpha in active:
        delta = delta + float(alpha) * v.vector.float().cpu()
    return delta


def add_to_tokens(tokens: torch.Tensor, delta: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
    """tokens + delta on every token (span None) or on tokens [start, end); others are copied untouched."""
    delta = delta.to(device=tokens.device, dtype=tokens.dtype)
    if span is None:
        return tokens + delta
    start, end = span
    out = tokens.clone()
    out[:, start:end] = tokens[:, start:end] + delta
    return out


def with_name(vector: SteeringVector, name: str) -> SteeringVector:
    return replace(vector, name=name)
