"""ComfyUI's own classes inside the test process (CPU), for tensor-level traces a server cannot show.

The integration tests prove identities end to end through a real server; some claims (which
tokens a patch changes, what an attention layer computes) need the tensors inside one model
call. Those tests import the ComfyUI work tree the harness found, load the same tiny model
files the test server uses, and import this pack's modules under a private package name (the
pack's `nodes` package would otherwise clash with ComfyUI's nodes.py). Nothing is mocked.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import importlib.util
import sys
from pathlib import Path

import harness

PACK_NAME = "zimage_lab_under_test"


@functools.lru_cache(maxsize=None)
def import_comfy(comfyui: Path):
    """Import ComfyUI from its work tree on CPU (appended to sys.path so the pack's own modules win)."""
    for path in (str(comfyui), str(harness.TESTING_PACK)):
        if path not in sys.path:
            sys.path.append(path)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (device setup with args.cpu)
    import comfy.sample
    import comfy.samplers

    return comfy


def _release() -> None:
    """Drop the cached models before interpreter teardown (ModelPatcher.__del__ needs its modules alive)."""
    tiny_dit.cache_clear()
    tiny_clip.cache_clear()
    gc.collect()


atexit.register(_release)


@functools.lru_cache(maxsize=None)
def pack_module(name: str):
    """A module of this pack (e.g. 'nodes.nag', 'core.steering') imported as ComfyUI would load it."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, harness.REPO / "__init__.py",
                                                      submodule_search_locations=[str(harness.REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_NAME}.{name}")


@functools.lru_cache(maxsize=None)
def tiny_dit(models_dir: Path):
    import tiny_models

    return tiny_models.load_dit(str(models_dir / "diffusion_models" / harness.TINY_FILES["unet_name"]))


@functools.lru_cache(maxsize=None)
def tiny_clip(models_dir: Path):
    import tiny_models

    return tiny_models.load_qwen3(str(models_dir / "text_encoders" / harness.TINY_FILES["clip_name"]))


def encode(clip, text: str):
    """What the stock CLIPTextEncode node returns for this text."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, positive, seed: int = 0, steps: int = 1, size=64, sampler_name: str = "euler", cfg: float = 1.0,
           negative=None):
    """KSampler's path (comfy.sample.sample); the negative defaults to a zeroed positive. Returns the latent."""
    import torch
    import comfy.sample

    height, width = (size, size) if isinstance(size, int) else size
    latent = torch.zeros(1, 16, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    if negative is None:
        negative = [[torch.zeros_like(t), dict(e)] for t, e in positive]
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, "simple", positive, negative, latent,
                               disable_pbar=True, seed=seed)


# ---- NextDiT blocks of the running ComfyUI, for exactness tests of the pack's mirrors (nodes/_internals/dit.py)

ATTENTION_OVERRIDE = "optimized_attention_override"
K_EPS = 0.25
"""k_norm's epsilon in the test blocks (Z-Image's q_norm / k_norm have None): tells the two stock paths apart."""


def capture_attention(calls: list):
    """An attention override recording the q, k, v every stock attention call receives ([B, H, L, D])."""

    def override(func, q, k, v, *args, **kwargs):
        calls.append(tuple(getattr(t, "tensor", t).detach().clone() for t in (q, k, v)))
        return func(q, k, v, *args, **kwargs)

    return override


def block_inputs(dm, block, dtype, caption=32, image=32, seed=0):
    """(x, freqs, adaln_input) for one block call: random tokens, NextDiT's own RoPE of [caption, image]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    length = caption + image
    ids = torch.zeros(1, length, 3)
    ids[0, :caption, 0] = torch.arange(1, caption + 1)
    ids[0, caption:, 0] = caption + 1
    ids[0, caption:, 1] = torch.arange(image) // 8
    ids[0, caption:, 2] = torch.arange(image) % 8
    freqs = dm.rope_embedder(ids).movedim(1, 2)
    x = torch.randn(1, length, block.dim, generator=gen).to(dtype)
    adaln = None
    if block.modulation:
        adaln = torch.randn(1, block.adaLN_modulation[-1].in_features, generator=gen).to(dtype)
    return x, freqs, adaln


def dit_block(dm, group="layers", dtype=None):
    """A private copy of one of the running ComfyUI's blocks in dtype (bfloat16 unless given), k_norm epsilon
    K_EPS (the shared tiny model is untouched)."""
    import copy

    import torch

    dtype = dtype or torch.bfloat16
    block = copy.deepcopy(getattr(dm, group)[0]).to(dtype)
    block.attention.k_norm.eps = K_EPS
    return block
