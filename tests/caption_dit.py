"""A tiny Z-Image DiT trained on CPU to read its caption: each of eight prompts maps to its own latent.

The tiny random DiT's output hardly depends on the caption (one call: two prompts' outputs 0.02 apart RMS, output
RMS 1.2), so it cannot show what caption noise does on a model whose composition follows the prompt.
This one is trained (flow matching, x0 loss through ComfyUI's own BaseModel.apply_model, the tiny Qwen3's
real encodings of the prompts) until it is seed-collapsed like Z-Image-Turbo: every seed of a prompt gives
nearly that prompt's latent. Same structure as the tiny DiT, two main layers. Test-only.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

FILE = "tiny_zimage_caption_trained.safetensors"
WORDS = ("fox", "astronaut", "street", "boat", "castle", "forest", "robot", "cat")
TEMPLATE = "a photo of a {} in the snow"
PROMPT = TEMPLATE.format(WORDS[0])
STEPS, BATCH, LR = 1600, 8, 1e-3
SIGMAS = (0.5, 1.0)  # the 2-step shift-3 schedule calls the model at sigma 1 and 0.75


def encodings(clip) -> torch.Tensor:
    """[8, L, W] stock CLIPTextEncode conditioning of the eight prompts (all the same token length)."""
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(TEMPLATE.format(w)))[0][0] for w in WORDS]
    lengths = {c.shape[1] for c in conds}
    if len(lengths) != 1:
        raise ValueError(f"the training prompts tokenize to lengths {sorted(lengths)}: pick words of one length")
    return torch.cat(conds).float()


def targets(count: int, seed: int = 1) -> torch.Tensor:
    """One smooth latent [16, 8, 8] per prompt (a 2x2 Gaussian grid upsampled: a 'composition')."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randn(count, 16, 2, 2, generator=gen)
    return torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)


def train(clip, path: str, steps: int = STEPS, seed: int = 0) -> dict:
    """Train the DiT, save it with the tiny loader's metadata at `path`; return the last losses."""
    import comfy.model_management
    import comfy.supported_models
    import tiny_models
    from comfy_inprocess import pack_module

    training_flag = pack_module("nodes._internals.memory").training_flag

    config = dict(tiny_models.UNET_CONFIG, n_layers=2)
    model_config = comfy.supported_models.ZImage(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    tiny_models.randomize_(model.diffusion_model, seed)
    conds = encodings(clip)
    goal = targets(conds.shape[0])
    params = list(model.diffusion_model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=LR)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    with training_flag(comfy.model_management):  # autograd-capable RoPE / norms, as ComfyUI's own trainer sets
        for _ in range(steps):
            pick = torch.randint(0, conds.shape[0], (BATCH,), generator=gen)
            x0, context = goal[pick], conds[pick]
            sigma = SIGMAS[0] + (SIGMAS[1] - SIGMAS[0]) * torch.rand(BATCH, generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            s = sigma[:, None, None, None]
            denoised = model.apply_model(s * noise + (1 - s) * x0, sigma, c_crossattn=context,
                                         num_tokens=context.shape[1])
            loss = (denoised - x0).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    state = {k: v.detach().contiguous() for k, v in model.diffusion_model.state_dict().items()}
    save_file(state, path, metadata={"zimage_lab_unet_config": json.dumps(config)})
    return {"first": losses[0], "last_100": sum(losses[-100:]) / 100}
