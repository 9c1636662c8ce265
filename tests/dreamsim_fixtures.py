"""Full-size random DreamSim checkpoints of the real architecture, in the files ``dreamsim.dreamsim`` reads (the
release zip's layout) plus DINO's torch.hub backbone file; and DreamSim's embedding written out with tensor ops."""

from __future__ import annotations

import json
import os

import torch

BRANCHES = {  # dreamsim_type -> [(backbone, patch)] in the package's order (dreamsim.config)
    "ensemble": [("dino", 16), ("clip", 16), ("open_clip", 16)],
    "dino_vitb16": [("dino", 16)],
    "open_clip_vitb32": [("open_clip", 32)],
    "clip_vitb32": [("clip", 32)],
}
LORA = {"r": 16, "lora_alpha": 0.5, "lora_dropout": 0.3, "bias": "none", "target_modules": ["qkv"]}  # DreamSim's
WIDTH, DEPTH, HEADS = 768, 12, 12
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def random_vit(patch: int, gen: torch.Generator, clip_ln_pre: bool) -> dict:
    """A ViT-B/patch state dict in DINO's vision_transformer names (as the package's files hold it)."""
    tokens = (224 // patch) ** 2 + 1

    def w(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    state = {"cls_token": w(1, 1, WIDTH, std=0.5), "pos_embed": w(1, tokens, WIDTH, std=0.5),
             "patch_embed.proj.weight": w(WIDTH, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
             "patch_embed.proj.bias": w(WIDTH)}
    if clip_ln_pre:  # CLIP's ln_pre lives in pos_drop (load_clip_as_dino / load_open_clip_as_dino)
        state.update({"pos_drop.weight": 1 + w(WIDTH, std=0.1), "pos_drop.bias": w(WIDTH, std=0.1)})
    for b in range(DEPTH):
        p = f"blocks.{b}"
        state.update({
            f"{p}.norm1.weight": 1 + w(WIDTH, std=0.1), f"{p}.norm1.bias": w(WIDTH, std=0.1),
            f"{p}.attn.qkv.weight": w(3 * WIDTH, WIDTH, std=WIDTH ** -0.5), f"{p}.attn.qkv.bias": w(3 * WIDTH),
            f"{p}.attn.proj.weight": w(WIDTH, WIDTH, std=WIDTH ** -0.5), f"{p}.attn.proj.bias": w(WIDTH),
            f"{p}.norm2.weight": 1 + w(WIDTH, std=0.1), f"{p}.norm2.bias": w(WIDTH, std=0.1),
            f"{p}.mlp.fc1.weight": w(4 * WIDTH, WIDTH, std=WIDTH ** -0.5), f"{p}.mlp.fc1.bias": w(4 * WIDTH),
            f"{p}.mlp.fc2.weight": w(WIDTH, 4 * WIDTH, std=(4 * WIDTH) ** -0.5), f"{p}.mlp.fc2.bias": w(WIDTH),
        })
    state.update({"norm.weight": 1 + w(WIDTH, std=0.1), "norm.bias": w(WIDTH, std=0.1)})
    return state


def save_random_dreamsim(folder: str, dreamsim_type: str = "ensemble", seed: int = 0) -> dict:
    """Write a random DreamSim of the type into folder; returns {backbone: state dict, "lora": adapter state}."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for backbone, patch in BRANCHES[dreamsim_type]:
        state = random_vit(patch, gen, clip_ln_pre=backbone != "dino")
        if backbone == "dino":
            os.makedirs(os.path.join(folder, "checkpoints"), exist_ok=True)
            torch.save(state, os.path.join(folder, "checkpoints", "dino_vitbase16_pretrain.pth"))  # hub's file
            head = {f"module.head.mlp.{k}.{p}": torch.randn(*s, generator=gen) * 0.02
                    for k, (i, o) in {0: (WIDTH, 2048), 2: (2048, 2048), 4: (2048, 256)}.items()
                    for p, s in (("weight", (o, i)), ("bias", (o,)))}
            head["module.head.last_layer.weight"] = torch.randn(2048, 256, generator=gen) * 0.02
            torch.save({"student": head}, os.path.join(folder, "dino_vitb16_pretrain.pth"))  # the DINO head file
        else:
            proj = torch.randn(WIDTH, 512, generator=gen) * WIDTH ** -0.5
            torch.save({"state_dict": {**state, "proj": proj}},
                       os.path.join(folder, f"{backbone}_vitb{patch}_pretrain.pth.tar"))
            state = {**state, "proj": proj}
        written[backbone] = state
    tag = "ensemble_lora" if dreamsim_type == "ensemble" else f"{dreamsim_type}_single_lora"
    adapter = {}
    for i in range(len(BRANCHES[dreamsim_type])):
        for b in range(DEPTH):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{b}.attn.qkv"
            adapter[f"{key}.lora_A.weight"] = torch.randn(LORA["r"], WIDTH, generator=gen) * 0.2
            adapter[f"{key}.lora_B.weight"] = torch.randn(3 * WIDTH, LORA["r"], generator=gen) * 0.2
    os.makedirs(os.path.join(folder, tag), exist_ok=True)
    save_file(adapter, os.path.join(folder, tag, "adapter_model.safetensors"))
    with open(os.path.join(folder, tag, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
                   **LORA}, f)
    written["lora"] = adapter
    return written


def _ln(x, state, prefix, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)


def vit_by_hand(state, lora, index, pixels, backbone, patch):
    """One branch's feature: ViT-B forward in float64 with the LoRA merged into qkv (W + alpha/r * B A).
    DINO: [CLS] after the last block (no final norm); CLIP / OpenCLIP: final norm, [CLS] @ proj."""
    s = {k: v.double() for k, v in state.items()}
    mean, std = IMAGENET if backbone == "dino" else OPENAI
    x = (pixels.double() - torch.tensor(mean, dtype=torch.float64)[:, None, None]) / torch.tensor(
        std, dtype=torch.float64)[:, None, None]
    eps = 1e-6 if backbone == "dino" else 1e-5
    x = torch.nn.functional.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch)
    x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1) + s["pos_embed"]
    if backbone != "dino":
        x = _ln(x, s, "pos_drop", eps)
    n, t, d = x.shape
    for b in range(DEPTH):
        p = f"blocks.{b}"
        key = f"base_model.model.extractor_list.{index}.model.{p}.attn.qkv"
        qkv_w = s[f"{p}.attn.qkv.weight"] + LORA["lora_alpha"] / LORA["r"] * (
            lora[f"{key}.lora_B.weight"].double() @ lora[f"{key}.lora_A.weight"].double())
        h = _ln(x, s, f"{p}.norm1", eps) @ qkv_w.T + s[f"{p}.attn.qkv.bias"]
        q, k, v = h.reshape(n, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) * (d // HEADS) ** -0.5).softmax(-1) @ v
        x = x + a.transpose(1, 2).reshape(n, t, d) @ s[f"{p}.attn.proj.weight"].T + s[f"{p}.attn.proj.bias"]
        h = _ln(x, s, f"{p}.norm2", eps) @ s[f"{p}.mlp.fc1.weight"].T + s[f"{p}.mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h) if backbone == "clip" else torch.nn.functional.gelu(h)  # CLIP: QuickGELU
        x = x + h @ s[f"{p}.mlp.fc2.weight"].T + s[f"{p}.mlp.fc2.bias"]
    if backbone == "dino":
        return x[:, 0]
    return _ln(x, s, "norm", eps)[:, 0] @ s["proj"]


def embedding_by_hand(written: dict, dreamsim_type: str, pixels: torch.Tensor) -> torch.Tensor:
    """DreamSim's embedding: branch features concatenated, minus their mean, divided by their norm (float64)."""
    feats = [vit_by_hand(written[bb], written["lora"], i, pixels, bb, patch)
             for i, (bb, patch) in enumerate(BRANCHES[dreamsim_type])]
    e = torch.cat(feats, -1)
    e = e - e.mean(-1, keepdim=True)
    return e / e.norm(dim=-1, keepdim=True)
