"""Full-size Z-Image checkpoints with random weights, in the official file formats, for field benchmarks.

Writes ``diffusion_models/z_image_turbo_bf16.safetensors`` (NextDiT, bf16, the keys UNETLoader detects as
Z-Image), ``text_encoders/qwen_3_4b.safetensors`` (Qwen3-4B, bf16, ``model.layers.N...`` keys CLIPLoader detects
as QWEN3_4B) and ``vae/ae.safetensors`` (the Flux autoencoder, float32) under a models folder. Tensor names and
shapes come from ComfyUI's own classes built on the meta device; values are drawn on the GPU (linear weights
N(0, 0.02), norm weights 1 + N(0, 0.1)), so images are noise but every kernel does its real work.

    python bench/checkpoints.py MODELS_DIR      (with ComfyUI importable, e.g. run from its work tree)
"""

from __future__ import annotations

import os
import sys
import time

import torch

FULL_UNET = {  # comfy/model_detection.py for a Z-Image checkpoint (cap_embedder.1.weight of shape [3840, 2560])
    "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
    "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}
FILES = {"dit": ("diffusion_models", "z_image_turbo_bf16.safetensors"),
         "qwen3": ("text_encoders", "qwen_3_4b.safetensors"), "vae": ("vae", "ae.safetensors")}


def dit_shapes() -> dict:
    """{name: (shape, dtype)} of Z-Image's NextDiT state dict (comfy/ldm/lumina/model.py)."""
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    with torch.device("meta"):
        model = NextDiT(**FULL_UNET, dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
    return {k: (tuple(v.shape), torch.bfloat16) for k, v in model.state_dict().items()}


def qwen3_shapes() -> dict:
    """Qwen3-4B as comfy/text_encoders/llama.py Qwen3_4B names it (``model.embed_tokens``, ``model.layers.N``)."""
    import comfy.ops
    from comfy.text_encoders.llama import Qwen3_4B

    with torch.device("meta"):
        model = Qwen3_4B({}, dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
    return {k: (tuple(v.shape), torch.bfloat16) for k, v in model.state_dict().items()}


def vae_shapes() -> dict:
    """The Flux autoencoder (16 latent channels) as comfy/ldm/models/autoencoder.py AutoencodingEngine names it."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        model = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    return {k: (tuple(v.shape), torch.float32) for k, v in model.state_dict().items()}


def random_state(shapes: dict, seed: int, device) -> dict:
    """Random CPU tensors of these shapes, drawn on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, (shape, dtype) in sorted(shapes.items()):
        values = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        if "norm" in name and name.endswith("weight") or name.endswith("scale"):
            values = 1.0 + 0.1 * values
        else:
            values = 0.02 * values
        out[name] = values.to(dtype).cpu()
    return out


def write_all(models_dir: str, device=None) -> dict:
    """Write the three files (skipping those present); returns {kind: path}."""
    from safetensors.torch import save_file

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = {}
    for seed, (kind, shapes) in enumerate((("dit", dit_shapes), ("qwen3", qwen3_shapes), ("vae", vae_shapes))):
        folder, name = FILES[kind]
        path = os.path.join(models_dir, folder, name)
        paths[kind] = path
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        start = time.perf_counter()
        state = random_state(shapes(), seed, device)
        save_file(state, path + ".part")
        os.replace(path + ".part", path)
        size = sum(t.numel() * t.element_size() for t in state.values()) / 1e9
        print(f"wrote {path}: {len(state)} tensors, {size:.2f} GB in {time.perf_counter() - start:.1f} s", flush=True)
    return paths


SCALED_FP8_FILE = "z_image_turbo_fp8_scaled.safetensors"
BLOCK_LINEARS = ("attention.qkv.weight", "attention.out.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
                 "feed_forward.w3.weight")


def write_scaled_fp8(models_dir: str, device=None) -> str:
    """ComfyUI's scaled-fp8 checkpoint of the bf16 DiT (``scaled_fp8`` marker + per-tensor ``scale_weight``, what
    comfy/utils.py ``convert_old_quants`` reads, 0.18.1 and 0.30.2): every block linear in float8_e4m3fn."""
    from safetensors.torch import load_file, save_file

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = os.path.join(models_dir, "diffusion_models")
    path = os.path.join(folder, SCALED_FP8_FILE)
    if os.path.exists(path):
        return path
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, w in load_file(os.path.join(folder, FILES["dit"][1])).items():
        if key.split(".")[0] in ("layers", "context_refiner", "noise_refiner") and key.endswith(BLOCK_LINEARS):
            w = w.to(device, torch.float32)
            scale = (w.abs().max() / 448.0).clamp(min=1e-12)
            out[key] = (w / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).cpu()
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(()).cpu()
        else:
            out[key] = w
    save_file(out, path + ".part")
    os.replace(path + ".part", path)
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    write_all(sys.argv[1])
    write_scaled_fp8(sys.argv[1])
