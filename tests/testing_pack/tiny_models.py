"""Tiny random Z-Image, Qwen3 and Flux-TAESD models built from ComfyUI's own classes.

Runs inside a process that can import ComfyUI (the test server, or ``python tiny_models.py``
with ComfyUI's folder as cwd). Test-only: never shipped with the pack.

The tiny DiT keeps Z-Image's real structure (30 main layers, 2 + 2 refiners, 128-wide heads
split 32/48/48 for RoPE, theta 256, padding to 32, z_image_modulation) at width 256; the tiny
Qwen3 keeps 36 layers, the real vocabulary and tokenizer at hidden width 128.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

QWEN3_CONFIG = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 36,
                "num_attention_heads": 2, "num_key_value_heads": 1}

UNET_CONFIG = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256,
    "cap_feat_dim": QWEN3_CONFIG["hidden_size"], "n_layers": 30, "qk_norm": True,
    "n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
    "time_scale": 1000.0, "pad_tokens_multiple": 32,
}

DIT_FILE = "tiny_zimage.safetensors"
QWEN3_FILE = "tiny_qwen3.safetensors"
VAE_FILE = "tiny_flux_taesd.safetensors"


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Fill every parameter with seeded values: norms near 1, everything else N(0, std)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            values = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and p.ndim == 1:
                values = 1.0 + 0.1 * values
            else:
                values = std * values
            p.copy_(values.to(p.dtype))


def build_dit(unet_config: dict = UNET_CONFIG, seed: int = 0) -> dict:
    """State dict of a random Z-Image NextDiT made by supported_models.ZImage."""
    import comfy.supported_models

    model_config = comfy.supported_models.ZImage(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    randomize_(model.diffusion_model, seed)
    return {k: v.contiguous() for k, v in model.diffusion_model.state_dict().items()}


def make_clip(qwen3_config: dict, state_dict: dict | None = None, dtype=None, embedding_directory=None):
    """ComfyUI CLIP (Z-Image tokenizer + Qwen3 encoder) at a tiny size, as CLIPLoader lumina2 builds it."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.hunyuan_video
    import comfy.text_encoders.z_image
    import comfy.utils

    state_dict = state_dict or {}
    detect = comfy.text_encoders.hunyuan_video.llama_detect(state_dict, "") if state_dict else {}
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.z_image.ZImageTokenizer,
                                                    comfy.text_encoders.z_image.te(**detect))
    options = {"qwen3_4b_model_config": dict(qwen3_config)}
    if dtype is not None:
        options["dtype"] = dtype
    return comfy.sd.CLIP(target, embedding_directory=embedding_directory,
                         state_dict=[state_dict] if state_dict else [], model_options=options,
                         parameters=comfy.utils.calculate_parameters(state_dict) if state_dict else 0)


def build_qwen3(qwen3_config: dict = QWEN3_CONFIG, seed: int = 1) -> dict:
    """State dict of a random tiny Qwen3, in the key layout of ComfyUI's qwen_3_4b.safetensors."""
    clip = make_clip(qwen3_config, dtype=torch.float32)
    transformer = clip.cond_stage_model.qwen3_4b.transformer
    randomize_(transformer, seed)
    return {k: v.contiguous() for k, v in transformer.state_dict().items()}


def build_taesd(seed: int = 2) -> dict:
    """State dict of a random 16-channel TAESD, which the stock VAELoader accepts as a VAE."""
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=16)
    randomize_(model, seed, std=0.1)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_all(models_dir: str) -> dict:
    """Write the three files into ComfyUI's model folders under models_dir; return their paths."""
    paths = {
        "dit": os.path.join(models_dir, "diffusion_models", DIT_FILE),
        "qwen3": os.path.join(models_dir, "text_encoders", QWEN3_FILE),
        "vae": os.path.join(models_dir, "vae", VAE_FILE),
    }
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    save_file(build_dit(), paths["dit"], metadata={"zimage_lab_unet_config": json.dumps(UNET_CONFIG)})
    save_file(build_qwen3(), paths["qwen3"], metadata={"zimage_lab_qwen3_config": json.dumps(QWEN3_CONFIG)})
    save_file(build_taesd(), paths["vae"])
    return paths


def read_metadata(path: str, key: str) -> dict:
    """The JSON config stored in a tiny model file's safetensors metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if key not in meta:
        raise ValueError(f"{os.path.basename(path)} is not a Z-Image Lab tiny test model (no {key} metadata).")
    return json.loads(meta[key])


def load_dit(path: str):
    """A ModelPatcher for a tiny DiT file, built the way comfy.sd.load_diffusion_model does."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = read_metadata(path, "zimage_lab_unet_config")
    sd = load_file(path)
    model_config = comfy.supported_models.ZImage(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(sd, "")
    patcher = comfy.model_patcher.CoreModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    model.load_model_weights(sd, "", assign=patcher.is_dynamic())
    return patcher


def load_qwen3(path: str, embedding_directory=None):
    """A ComfyUI CLIP for a tiny Qwen3 file, loaded like CLIPLoader loads qwen_3_4b (type lumina2);
    pass the embeddings folders as CLIPLoader does so `embedding:name` words behave the same."""
    return make_clip(read_metadata(path, "zimage_lab_qwen3_config"), load_file(path),
                     embedding_directory=embedding_directory)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    from comfy.cli_args import args

    args.cpu = True
    print(json.dumps(write_all(sys.argv[1])))
