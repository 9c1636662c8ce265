"""What a Z-Image LoRA file is: trainer layout, adapter kind, rank, alpha, blocks, and keys that cannot load.

Plain Python over key names and tensor shapes (no ComfyUI). Layouts, from the trainers' sources
(docs/models_and_loras.md cites them):

| layout | example module key |
|---|---|
| ai-toolkit | ``diffusion_model.layers.0.attention.to_q`` + ``.lora_A.weight`` / ``.lora_B.weight`` |
| musubi-tuner / sd-scripts | ``lora_unet_layers_0_attention_to_q`` + ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` |
| ComfyUI-native kohya | ``lora_unet_layers_0_attention_qkv`` (fused; musubi's convert_z_image_lora_to_comfy output) |
| DiffSynth-Studio / ModelScope | ``layers.0.attention.to_q`` + ``.lora_A.default.weight`` (or ``.lora_A.weight``) |
| diffusers / PEFT | ``transformer.layers.0.attention.to_q`` (+ ``base_model.model.`` from PEFT) |
| LyCORIS / SimpleTuner | ``lycoris_layers_0_attention_to_q`` + ``.lokr_w1`` ... or ``.hada_w1_a`` ... |
"""

from __future__ import annotations

import math
import re
from collections import Counter

PARAM_SUFFIXES = (
    ".lora_A.default.weight", ".lora_B.default.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight",
    ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".lora_A.weight", ".lora_B.weight",
    "_lora.down.weight", "_lora.up.weight", ".lora.down.weight", ".lora.up.weight", ".lora_A", ".lora_B",
    ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_w1", ".lokr_w2", ".lokr_t2",
    ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".oft_blocks", ".oft_diag", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight",
    ".alpha", ".dora_scale", ".diff_b", ".diff", ".set_weight", ".w_norm", ".b_norm", ".reshape_weight",
)
DOWN = (".lora_A.default.weight", ".lora_linear_layer.down.weight", ".lora_down.weight", ".lora_A.weight",
        "_lora.down.weight", ".lora.down.weight", ".lora_A")
UP = (".lora_B.default.weight", ".lora_linear_layer.up.weight", ".lora_up.weight", ".lora_B.weight",
      "_lora.up.weight", ".lora.up.weight", ".lora_B")
TEXT_ENCODER = re.compile(r"^(lora_te\d?_|text_encoder|te\d?\.|text_encoders\.|cond_stage_model\.|conditioner\.)")
_BLOCK = re.compile(r"(?:^|[._])(layers|context_refiner|noise_refiner)[._](\d+)(?=[._])")
_SPLIT_QKV = re.compile(r"[._]to_[qkv](?:$|[._])")


def split_key(key: str) -> tuple[str, str]:
    """(module name, parameter suffix) of a file key; suffix '' when it is not a known LoRA parameter."""
    for suffix in PARAM_SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)], suffix
    return key, ""


def block_of_module(module: str) -> str:
    """'layers.12', 'context_refiner.0', 'noise_refiner.1' or 'other' for a module name in any layout."""
    match = _BLOCK.search(module)
    return f"{match.group(1)}.{match.group(2)}" if match else "other"


def adapter_kind(params: set[str]) -> str:
    """'LoRA', 'LoKr', 'LoHa', 'OFT', 'GLoRA', 'diff', 'set' or '?' from one module's parameter suffixes."""
    if any(p.startswith(".lokr_") for p in params):
        return "LoKr"
    if any(p.startswith(".hada_") for p in params):
        return "LoHa"
    if any(p.startswith(".oft_") for p in params):
        return "OFT"
    if ".a1.weight" in params:
        return "GLoRA"
    if params & set(UP) and params & set(DOWN):
        return "LoRA"
    if params & {".diff", ".diff_b", ".w_norm", ".b_norm"}:
        return "diff"
    if ".set_weight" in params:
        return "set"
    return "?"


def layout(modules: list[str], params: set[str]) -> str:
    """The trainer layout of a file's module names (see the table in this module's docstring)."""
    dit = [m for m in modules if not TEXT_ENCODER.match(m)]
    if not dit:
        return "text encoder only"
    first = Counter(m.split(".")[0] if "." in m else m.split("_")[0] for m in dit).most_common(1)[0][0]
    split = any(_SPLIT_QKV.search(m) or "to_out" in m for m in dit)
    if any("base_model.model." in m for m in dit):
        return "PEFT (base_model.model. prefix, diffusers names)"
    if first == "lora" and dit[0].startswith("lora_unet_"):
        return ("musubi-tuner / kohya sd-scripts (lora_unet_, split to_q/to_k/to_v)" if split
                else "kohya, ComfyUI names (lora_unet_, fused qkv)")
    if first == "lycoris":
        return "LyCORIS / SimpleTuner (lycoris_ prefix, diffusers names)"
    if first == "diffusion_model":
        return ("ai-toolkit (diffusion_model. prefix, diffusers names)" if split
                else "ComfyUI native (diffusion_model. prefix, fused qkv)")
    if first == "transformer":
        return "diffusers / PEFT (transformer. prefix)"
    if first in ("layers", "context_refiner", "noise_refiner", "x_embedder", "cap_embedder", "t_embedder", "final_layer"):
        if any(p.endswith(".default.weight") for p in params):
            return "DiffSynth-Studio / ModelScope (no prefix, PEFT .default names)"
        return "DiffSynth-Studio / ModelScope (no prefix)"
    return f"unknown (module names start with '{first}')"


def _number(value) -> float | None:
    try:
        return float(value.reshape(-1)[0]) if hasattr(value, "reshape") else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def module_rank(kind: str, shapes: dict[str, tuple]) -> int | None:
    """Rank of one module: LoRA down rows, LoHa w1_b rows, LoKr low-rank factor rows (None for full LoKr)."""
    if kind == "LoRA":
        down = next(shapes[s] for s in DOWN if s in shapes)
        return down[0]
    if kind == "LoHa" and ".hada_w1_b" in shapes:
        return shapes[".hada_w1_b"][0]
    if kind == "LoKr":
        for s in (".lokr_w2_b", ".lokr_w1_b"):
            if s in shapes:
                return shapes[s][0]
    return None


def describe(tensors: dict) -> dict:
    """Summary of a LoRA state dict: layout, kinds, ranks, alphas, blocks, modules and keys that cannot load."""
    modules: dict[str, dict[str, tuple]] = {}
    values: dict[str, dict] = {}
    unknown = []
    for key, tensor in tensors.items():
        module, suffix = split_key(key)
        if not suffix:
            unknown.append(key)
            continue
        modules.setdefault(module, {})[suffix] = tuple(getattr(tensor, "shape", ()))
        values.setdefault(module, {})[suffix] = tensor
    params = {p for shapes in modules.values() for p in shapes}
    rows, not_loadable = [], {k: "not a LoRA parameter name this loader knows" for k in unknown}
    for module in sorted(modules):
        shapes = modules[module]
        if TEXT_ENCODER.match(module):
            for suffix in shapes:
                not_loadable[module + suffix] = "text-encoder key: load it with a CLIP LoRA loader (LoraLoader)"
            continue
        kind = adapter_kind(set(shapes))
        if kind == "?":
            for suffix in shapes:
                not_loadable[module + suffix] = "an alpha / scale without the weights it belongs to"
            continue
        alpha = _number(values[module][".alpha"]) if ".alpha" in shapes else None
        rows.append({"module": module, "kind": kind, "rank": module_rank(kind, shapes), "alpha": alpha,
                     "block": block_of_module(module), "keys": len(shapes)})
    return {"layout": layout(list(modules) + unknown, params), "kinds": dict(Counter(r["kind"] for r in rows)),
            "ranks": sorted({r["rank"] for r in rows if r["rank"] is not None}),
            "alphas": sorted({r["alpha"] for r in rows if r["alpha"] is not None and math.isfinite(r["alpha"])}),
            "blocks": sorted({r["block"] for r in rows}), "modules": rows, "not_loadable": not_loadable,
            "n_keys": len(tensors)}


def scale_rule(kind: str) -> str:
    """The formula ComfyUI (and the trainer) uses for one adapter kind."""
    return {"LoRA": "strength * (alpha / rank) * up @ down   (alpha absent: scale 1)",
            "LoKr": "strength * (alpha / rank) * kron(w1, w2), w1 = w1_a @ w1_b, w2 = w2_a @ w2_b when factored "
                    "(full w1 and w2: scale 1)",
            "LoHa": "strength * (alpha / rank) * (w1_a @ w1_b) * (w2_a @ w2_b)   (Hadamard product)",
            "diff": "strength * diff", "set": "weight replaced"}.get(kind, "ComfyUI's weight adapter formula")


def format_report(name: str, info: dict, blocks_text: str) -> str:
    """Human-readable report of describe()'s summary; blocks_text is the compressed block list."""
    lines = [f"{name}: {info['n_keys']} keys, layout: {info['layout']}",
             "adapters: " + (", ".join(f"{n} {k}" for k, n in sorted(info["kinds"].items())) or "none"),
             "rank: " + (", ".join(map(str, info["ranks"])) or "n/a (full factors)"),
             "alpha: " + (", ".join(f"{a:g}" for a in info["alphas"]) or "none (scale 1)"),
             f"blocks touched: {blocks_text or 'none'}"]
    for kind in sorted(info["kinds"]):
        lines.append(f"{kind} delta = {scale_rule(kind)}")
    bad = info["not_loadable"]
    if bad:
        lines.append(f"{len(bad)} keys will not load:")
        lines.extend(f"  {key}: {why}" for key, why in sorted(bad.items()))
    else:
        lines.append("every key is accounted for")
    return "\n".join(lines)
