"""Benchmark setup: the configurations, ComfyUI imported in-process, and the random full-size / tiny models."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "full": {"sizes": [1024, 2048], "batches": [1, 4], "steps": 8, "tokens": 108, "forward_repeats": 10,
             "sample_repeats": 3, "encode_repeats": 10, "decode_repeats": 5, "idle_s": 3.0},
    "tiny": {"sizes": [64], "batches": [1, 2], "steps": 2, "tokens": 24, "forward_repeats": 2,
             "sample_repeats": 1, "encode_repeats": 2, "decode_repeats": 1, "idle_s": 0.0},
}

FULL_UNET = {  # comfy/model_detection.py for a Z-Image checkpoint (cap_embedder.1.weight of shape [3840, 2560])
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
    "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}

PROMPT = ("a photograph of a red fox sitting in fresh snow at dawn, soft golden light from the left, shallow depth of "
          "field, frost on the whiskers, pine trees in the background fading into mist, shot on a medium format "
          "camera with an 80mm lens, natural colours, fine grain, calm mood, the fox looks straight at the viewer "
          "with amber eyes, tiny snowflakes drifting in the air, a quiet winter morning in the northern forest, "
          "high detail fur texture, gentle shadows on the snow, cinematic composition, award winning wildlife photo")

# Forward variants: name -> accelerator options (None = stock model).
FORWARD_VARIANTS = {
    "stock": None,
    "attention=auto": {"attention": "auto"},
    "attention=cudnn": {"attention": "cudnn"},
    "attention=flash": {"attention": "flash"},
    "cuda_graphs": {"cuda_graphs": True},
    "compile": {"compile_blocks": True},
    "compile+attention=auto": {"compile_blocks": True, "attention": "auto"},
    "compile+auto+graphs": {"compile_blocks": True, "attention": "auto", "cuda_graphs": True},
    "compile+auto+fp8": {"compile_blocks": True, "attention": "auto", "fp8_matmul": True},
    "compile+auto+fp8+graphs": {"compile_blocks": True, "attention": "auto", "fp8_matmul": True, "cuda_graphs": True},
    "compile(tuned)+auto+graphs": {"compile_blocks": True, "compile_tuning": True, "attention": "auto",
                                   "cuda_graphs": True},
}
ACCELERATED = {"compile_blocks": True, "attention": "auto", "cuda_graphs": True, "sync_free_sampling": True}
"""The accelerator setting used for the sampling rows (bf16, exact up to rounding)."""
ACCELERATED_FP8 = {**ACCELERATED, "fp8_matmul": True}


# --------------------------------------------------------------------------------------------
# setup


def find_comfyui() -> Path:
    path = Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")).expanduser()
    if not (path / "comfy" / "model_management.py").is_file():
        sys.exit(f"ComfyUI not found at {path}: set COMFYUI_PATH to a ComfyUI 0.18.1 work tree.")
    return path


def setup(cpu: bool, dynamic_vram: bool = False):
    """Import ComfyUI in-process (cli args first) and this pack as the package zimage_lab.

    dynamic_vram: turn on ComfyUI's DynamicVRAM weight loading (comfy-aimdo) the way main.py does
    by default on NVIDIA GPUs; otherwise the legacy ModelPatcher keeps the weights resident.
    """
    comfy_path = find_comfyui()
    sys.path.insert(0, str(comfy_path))
    sys.path.insert(0, str(REPO / "tests" / "testing_pack"))
    from comfy.cli_args import args

    args.cpu = cpu
    if dynamic_vram:
        if cpu:
            raise SystemExit("--dynamic-vram needs a CUDA GPU (ComfyUI uses the legacy ModelPatcher on the CPU)")
        import comfy_aimdo.control

        comfy_aimdo.control.init()
        import comfy.memory_management
        import comfy.model_management as mm
        import comfy.model_patcher

        if not comfy_aimdo.control.init_device(mm.get_torch_device().index):
            raise SystemExit("--dynamic-vram: comfy-aimdo could not start on this device")
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    if "zimage_lab" not in sys.modules:
        spec = importlib.util.spec_from_file_location("zimage_lab", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["zimage_lab"] = pack
        spec.loader.exec_module(pack)
    return comfy_path


def randomize_(module, seed: int, std: float = 0.02) -> None:
    """Random weights where the module lives (GPU): norms near 1, everything else N(0, std)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(module.named_parameters())):
            g = torch.Generator(device=p.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            values = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if "norm" in name and p.ndim == 1:
                values = 1.0 + 0.1 * values
            elif "pad_token" in name:
                pass
            else:
                values = values * std
            p.copy_(values.to(p.dtype))


def build_dit(config: str, device, dtype, disable_dynamic: bool = False):
    """A ModelPatcher around a random Z-Image NextDiT (full size or the tests' tiny one), the same weights every call.

    Like UNETLoader's result it can rebuild itself (cached_patcher_init), which ComfyUI uses for
    clone(disable_dynamic=True): the resident-weights copy of a DynamicVRAM model.
    """
    import comfy.model_patcher
    import comfy.supported_models
    import tiny_models

    unet = FULL_UNET if config == "full" else tiny_models.UNET_CONFIG
    model_config = comfy.supported_models.ZImage(dict(unet))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=device)
    model.diffusion_model.to(device=device, dtype=dtype)
    randomize_(model.diffusion_model, 0)
    model.requires_grad_(False)  # as after ComfyUI loads a checkpoint
    import comfy.model_management as mm

    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    if patcher_class is not comfy.model_patcher.ModelPatcher:
        model.to(mm.unet_offload_device())  # as UNETLoader leaves it: weights in RAM, loaded on demand
    patcher = patcher_class(model, load_device=device, offload_device=mm.unet_offload_device())
    patcher.cached_patcher_init = (build_dit, (config, device, dtype))
    return patcher


def build_clip(config: str, device):
    """ComfyUI's Z-Image CLIP (tokenizer + Qwen3-4B, or the tiny Qwen3) with random weights."""
    import tiny_models

    if config == "full":
        import comfy.sd
        import comfy.supported_models_base
        import comfy.text_encoders.z_image

        import torch

        # CLIPLoader keeps the checkpoint's dtype (llama_detect): Qwen3-4B's released weights are bfloat16
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.z_image.ZImageTokenizer,
                                                        comfy.text_encoders.z_image.te(dtype_llama=torch.bfloat16))
        clip = comfy.sd.CLIP(target, model_options={"initial_device": device}, disable_dynamic=True)
        randomize_(clip.cond_stage_model, 1)
        clip.cond_stage_model.requires_grad_(False)
        return clip
    return tiny_models.make_clip(tiny_models.QWEN3_CONFIG, tiny_models.build_qwen3())


def build_vae(config: str):
    """ComfyUI VAE: the Flux AE (16-channel KL autoencoder) or the tests' tiny TAESD, random weights."""
    import comfy.sd
    import torch
    import tiny_models

    if config != "full":
        return comfy.sd.VAE(sd=tiny_models.build_taesd())
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shell = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                                   encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
                                   decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    gen = torch.Generator().manual_seed(2)
    sd = {}
    for name, t in sorted(shell.state_dict().items()):
        if "norm" in name and name.endswith("weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            sd[name] = 0.02 * torch.randn(t.shape, generator=gen)
    return comfy.sd.VAE(sd=sd)

