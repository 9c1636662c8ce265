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

# Hugging Face form of the tiny Qwen3 (same weights as QWEN3_FILE), a narrower "other" Qwen3, a folder
# that is not a Qwen3, and projectors, for the transformers-path tests (models/text_encoders, models/projectors).
QWEN3_HF_FOLDER = "tiny_qwen3_hf"
QWEN3_SMALL_HF_FOLDER = "tiny_qwen3_small_hf"
NOT_QWEN3_FOLDER = "tiny_not_qwen3"
QWEN3_SMALL_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
                      "num_attention_heads": 2, "num_key_value_heads": 1}
PROJECTOR_FILE = "tiny_small_to_tiny.safetensors"        # 64 -> 128 random linear
WRONG_PROJECTOR_FILE = "tiny_wrong_width.safetensors"    # 32 -> 128: fits neither tiny Qwen3
FITTED_PROJECTOR_FILE = "tiny_fitted.safetensors"        # placeholder the fit-projector test overwrites


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
    """State dict of a random 16-channel TAESD, which the stock VAELoader accepts as a VAE.

    Fan-in scaled weights (gain 0.8) and a mid-grey output bias keep decoded images varied
    rather than saturated, so image metrics and pixel comparisons see real structure.
    """
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=16)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.8 / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
        model.taesd_decoder[-1].bias.fill_(0.5)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def hf_config(qwen3_config: dict) -> dict:
    """config.json of a Hugging Face Qwen3 with ComfyUI's Qwen3-4B constants and these sizes."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "head_dim": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960, "hidden_act": "silu",
            "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
            "torch_dtype": "float32", **qwen3_config}


def write_hf_folder(folder: str, qwen3_config: dict, state_dict: dict) -> str:
    """A Hugging Face Qwen3 folder: config.json, model.safetensors, ComfyUI's Qwen tokenizer files."""
    import shutil

    import comfy.text_encoders.z_image

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config(qwen3_config), f, indent=1)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer = os.path.join(os.path.dirname(comfy.text_encoders.z_image.__file__), "qwen25_tokenizer")
    for name in os.listdir(tokenizer):
        shutil.copy(os.path.join(tokenizer, name), os.path.join(folder, name))
    return folder


def random_linear(in_features: int, out_features: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"linear.weight": torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5,
            "linear.bias": 0.01 * torch.randn(out_features, generator=gen)}


def write_hf_fixtures(models_dir: str, qwen3_state_dict: dict) -> dict:
    """The transformers-path fixtures (see the *_FOLDER / *_FILE names above) under models_dir."""
    text_encoders = os.path.join(models_dir, "text_encoders")
    projectors = os.path.join(models_dir, "projectors")
    os.makedirs(projectors, exist_ok=True)
    paths = {"qwen3_hf": write_hf_folder(os.path.join(text_encoders, QWEN3_HF_FOLDER), QWEN3_CONFIG, qwen3_state_dict),
             "qwen3_small_hf": write_hf_folder(os.path.join(text_encoders, QWEN3_SMALL_HF_FOLDER), QWEN3_SMALL_CONFIG,
                                               build_qwen3(QWEN3_SMALL_CONFIG, seed=3))}
    not_qwen3 = os.path.join(text_encoders, NOT_QWEN3_FOLDER)
    os.makedirs(not_qwen3, exist_ok=True)
    with open(os.path.join(not_qwen3, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}, f)
    paths["not_qwen3"] = not_qwen3
    width, small = QWEN3_CONFIG["hidden_size"], QWEN3_SMALL_CONFIG["hidden_size"]
    for name, in_features, seed in ((PROJECTOR_FILE, small, 4), (WRONG_PROJECTOR_FILE, 32, 5), (FITTED_PROJECTOR_FILE, small, 6)):
        paths[name] = os.path.join(projectors, name)
        save_file(random_linear(in_features, width, seed), paths[name])
    return paths


def write_all(models_dir: str) -> dict:
    """Write the tiny models (and their transformers-path fixtures) under models_dir; return their paths."""
    paths = {
        "dit": os.path.join(models_dir, "diffusion_models", DIT_FILE),
        "qwen3": os.path.join(models_dir, "text_encoders", QWEN3_FILE),
        "vae": os.path.join(models_dir, "vae", VAE_FILE),
    }
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    save_file(build_dit(), paths["dit"], metadata={"zimage_lab_unet_config": json.dumps(UNET_CONFIG)})
    qwen3 = build_qwen3()
    save_file(qwen3, paths["qwen3"], metadata={"zimage_lab_qwen3_config": json.dumps(QWEN3_CONFIG)})
    save_file(build_taesd(), paths["vae"])
    paths.update(write_hf_fixtures(models_dir, qwen3))
    return paths


def read_metadata(path: str, key: str) -> dict:
    """The JSON config stored in a tiny model file's safetensors metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if key not in meta:
        raise ValueError(f"{os.path.basename(path)} is not a Z-Image Lab tiny test model (no {key} metadata).")
    return json.loads(meta[key])


def load_dit(path: str, disable_dynamic: bool = False):
    """A ModelPatcher for a tiny DiT file, built the way comfy.sd.load_diffusion_model does
    (including cached_patcher_init, with which ComfyUI reloads a DynamicVRAM model as a legacy one)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = read_metadata(path, "zimage_lab_unet_config")
    sd = load_file(path)
    model_config = comfy.supported_models.ZImage(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(sd, "")
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    patcher = patcher_class(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    model.load_model_weights(sd, "", assign=patcher.is_dynamic())
    patcher.cached_patcher_init = (load_dit, (path,))
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
