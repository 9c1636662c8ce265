"""Synthetic Z-Image LoRA files in each trainer's key layout, with their expected weight deltas.

The deltas are computed here from the formulas of the trainers (LoRA: (alpha / rank) * up @ down;
LoKr: (alpha / rank) * kron(w1, w2_a @ w2_b); LoHa: (alpha / rank) * (w1_a @ w1_b) * (w2_a @ w2_b)),
never by ComfyUI, so a test comparing them with the weights ComfyUI patched checks the loader.
Layouts and their sources: docs/models_and_loras.md.
"""

from __future__ import annotations

import torch

BLOCKS = ("context_refiner.1", "noise_refiner.0", "layers.2", "layers.29")
# (projection in diffusers names, native weight, which third of the fused qkv or None)
PROJECTIONS = (("attention.to_q", "attention.qkv", 0), ("attention.to_k", "attention.qkv", 1),
               ("attention.to_v", "attention.qkv", 2), ("attention.to_out.0", "attention.out", None),
               ("feed_forward.w1", "feed_forward.w1", None), ("feed_forward.w2", "feed_forward.w2", None))
LAYOUT_NAMES = {  # what core.lora_formats.layout() must call each file
    "ai-toolkit": "ai-toolkit", "musubi": "musubi-tuner", "kohya-fused": "kohya, ComfyUI names",
    "diffsynth": "DiffSynth-Studio", "peft": "PEFT (base_model.model.", "diffusers": "diffusers / PEFT (transformer.",
    "lokr": "LyCORIS", "loha": "musubi-tuner", "musubi-lokr": "musubi-tuner",
}
LAYOUTS = tuple(LAYOUT_NAMES)


def _module_name(layout: str, block: str, projection: str) -> str:
    dotted = f"{block}.{projection}"
    if layout == "ai-toolkit":
        return "diffusion_model." + dotted
    if layout in ("musubi", "loha", "musubi-lokr"):
        return "lora_unet_" + dotted.replace(".", "_")
    if layout == "diffsynth":
        return dotted
    if layout == "peft":
        return "base_model.model." + dotted
    if layout == "diffusers":
        return "transformer." + dotted
    if layout == "lokr":
        return "lycoris_" + dotted.replace(".", "_")
    raise ValueError(layout)


def _lora(gen, out_f, in_f, rank):
    return 0.1 * torch.randn(out_f, rank, generator=gen), 0.1 * torch.randn(rank, in_f, generator=gen)


def make(layout: str, shapes: dict, blocks=BLOCKS, rank: int = 4, seed: int = 0):
    """(state dict, {native weight key: [(row slice or None, delta at strength 1)]}) for a layout.

    shapes maps native weight keys (``layers.2.attention.qkv.weight``) to their shapes."""
    gen = torch.Generator().manual_seed(seed)
    sd, deltas = {}, {}

    def add(native, third, delta):
        rows = None if third is None else slice(third * delta.shape[0], (third + 1) * delta.shape[0])
        deltas.setdefault(native, []).append((rows, delta))

    for block in blocks:
        if layout == "kohya-fused":  # ComfyUI-native fused names, what musubi's converter writes
            for native in ("attention.qkv", "attention.out"):
                out_f, in_f = shapes[f"{block}.{native}.weight"]
                up, down = _lora(gen, out_f, in_f, rank)
                name = "lora_unet_" + f"{block}.{native}".replace(".", "_")
                sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = up, down
                sd[f"{name}.alpha"] = torch.tensor(2.0)
                add(f"{block}.{native}.weight", None, (2.0 / rank) * up @ down)
            continue
        for projection, native, third in PROJECTIONS:
            out_f, in_f = shapes[f"{block}.{native}.weight"]
            if third is not None:
                out_f //= 3
            name = _module_name(layout, block, projection)
            native_key = f"{block}.{native}.weight"
            if layout in ("lokr", "musubi-lokr"):
                f = 4  # Kronecker factor: w1 is f x f, w2 is (out/f) x (in/f), factored at this rank
                w1 = 0.5 * torch.randn(f, f, generator=gen)
                w2a, w2b = _lora(gen, out_f // f, in_f // f, rank)
                sd[f"{name}.lokr_w1"], sd[f"{name}.lokr_w2_a"], sd[f"{name}.lokr_w2_b"] = w1, w2a, w2b
                sd[f"{name}.alpha"] = torch.tensor(8.0)
                add(native_key, third, (8.0 / rank) * torch.kron(w1, w2a @ w2b))
            elif layout == "loha":
                w1a, w1b = _lora(gen, out_f, in_f, rank)
                w2a, w2b = _lora(gen, out_f, in_f, rank)
                sd.update({f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a,
                           f"{name}.hada_w2_b": w2b, f"{name}.alpha": torch.tensor(2.0)})
                add(native_key, third, (2.0 / rank) * (w1a @ w1b) * (w2a @ w2b))
            else:
                up, down = _lora(gen, out_f, in_f, rank)
                if layout in ("ai-toolkit", "peft", "diffusers"):
                    sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = down, up
                    add(native_key, third, up @ down)
                elif layout == "diffsynth":
                    sd[f"{name}.lora_A.default.weight"], sd[f"{name}.lora_B.default.weight"] = down, up
                    add(native_key, third, up @ down)
                else:  # musubi: kohya names with alpha
                    sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
                    sd[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
                    add(native_key, third, 0.5 * up @ down)
    return {k: v.contiguous() for k, v in sd.items()}, deltas


def expected(base: dict, deltas: dict, strength: float, multipliers: dict | None = None) -> dict:
    """base weights plus strength * block multiplier * delta, computed in float64."""
    out = dict(base)
    for key, parts in deltas.items():
        block = ".".join(key.split(".")[:2])
        scale = strength * (multipliers or {}).get(block, 1.0)
        w = out[key].double().clone()
        for rows, delta in parts:
            if rows is None:
                w += scale * delta.double()
            else:
                w[rows] += scale * delta.double()
        out[key] = w.float()
    return out
