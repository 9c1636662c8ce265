"""ComfyUI internals of the seed-variance techniques: the sampler seed, the starting noise, the DiT's
caption and time inputs, and the guidance step.

Every item names the ComfyUI code it relies on; checked against 0.18.1 and 0.30.2 (the call
signatures are the same in both: ``CFGGuider.sample`` -> OUTER_SAMPLE wrappers ->
``outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
latent_shapes=...)``; ``NextDiT.forward(x, timesteps, context, num_tokens, attention_mask, **kwargs)``
under DIFFUSION_MODEL wrappers; ``context_refiner`` blocks called as ``layer(x, mask, freqs,
transformer_options=...)``).
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import torch

SEED_KEY = "zimage_lab_sampler_seed"
"""transformer_options key holding the seed the sampler was given, for one sampling run."""


def _wrapper_types():
    return comfy.patcher_extension.WrappersMP


def _add_wrapper(model, kind: str, key: str, fn) -> None:
    """``ModelPatcher.add_wrapper_with_key`` once per key (comfy/model_patcher.py, 0.18.1 / 0.30.2)."""
    wrapper_type = getattr(_wrapper_types(), kind)
    if not model.get_wrappers(wrapper_type, key):
        model.add_wrapper_with_key(wrapper_type, key, fn)


def _outer_seed(args, kwargs):
    """The seed argument of ``CFGGuider.outer_sample`` (8th positional, or keyword)."""
    return args[7] if len(args) > 7 else kwargs.get("seed")


def capture_sampler_seed(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: puts the sampler's seed into this run's transformer_options.

    ``CFGGuider.sample`` (comfy/samplers.py) clones ``guider.model_options`` before it runs the
    OUTER_SAMPLE wrappers and restores it after, so writing into ``executor.class_obj.model_options``
    touches only this run; ``inner_sample`` then copies it into every model call's
    transformer_options. KSampler passes its seed, SamplerCustomAdvanced its NOISE's seed.
    """
    options = executor.class_obj.model_options.setdefault("transformer_options", {})
    options[SEED_KEY] = _outer_seed(args, kwargs)
    return executor(*args, **kwargs)


def add_sampler_seed(model) -> None:
    """Make the sampler's seed visible to our patches on this (cloned) MODEL."""
    _add_wrapper(model, "OUTER_SAMPLE", SEED_KEY, capture_sampler_seed)


def sampler_seed(transformer_options: dict) -> int:
    """The seed captured by ``capture_sampler_seed`` (0 when the sampler gave none)."""
    seed = transformer_options.get(SEED_KEY)
    return int(seed) if seed is not None else 0


def add_noise_transform(model, key: str, transform) -> None:
    """OUTER_SAMPLE wrapper replacing the starting noise by ``transform(noise, seed)``.

    The noise is the first argument of ``CFGGuider.outer_sample``: KSampler's
    ``comfy.sample.prepare_noise(latent, seed)`` or a NOISE object's ``generate_noise``.
    """

    def wrapper(executor, *args, **kwargs):
        args = (transform(args[0], _outer_seed(args, kwargs)), *args[1:])
        return executor(*args, **kwargs)

    _add_wrapper(model, "OUTER_SAMPLE", key, wrapper)


def add_dit_input_transform(model, key: str, transform) -> None:
    """DIFFUSION_MODEL wrapper: ``timesteps, context, options = transform(timesteps, context, transformer_options)``.

    ``NextDiT.forward`` (comfy/ldm/lumina/model.py) receives the model time (``model_sampling.timestep(sigma)``,
    proportional to sigma for Z-Image's flow) and the Qwen3 caption states [batch, tokens, 2560];
    transformer_options carries ``sigmas``, ``sample_sigmas`` and ``cond_or_uncond`` (comfy/samplers.py
    ``calc_cond_batch`` / ``inner_sample``). The options returned replace the call's (return a copy to
    add keys; the blocks below, the context refiner included, receive it).
    """

    def wrapper(executor, x, timesteps, context, *args, **kwargs):
        timesteps, context, options = transform(timesteps, context, kwargs.get("transformer_options", {}))
        kwargs["transformer_options"] = options
        return executor(x, timesteps, context, *args, **kwargs)

    _add_wrapper(model, "DIFFUSION_MODEL", key, wrapper)


class AfterContextRefiner(torch.nn.Module):
    """Appended to ``diffusion_model.context_refiner``: applies ``fn(caption, transformer_options)``.

    NextDiT pads the caption to a multiple of 32 with ``cap_pad_token`` and calls each block as
    ``layer(cap_feats, cap_mask, cap_freqs_cis, transformer_options=...)`` (0.18.1, 0.30.2).
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, x_mask=None, freqs_cis=None, transformer_options={}):
        return self.fn(x, transformer_options)


def append_to_context_refiner(model, fn) -> None:
    """Object-patch the clone's context refiner with one more module (the blocks themselves are shared)."""
    refiner = model.get_model_object("diffusion_model.context_refiner")
    model.add_object_patch("diffusion_model.context_refiner", torch.nn.ModuleList([*refiner, AfterContextRefiner(fn)]))


def add_post_cfg(model, fn, needs_uncond: bool) -> None:
    """``ModelPatcher.set_model_sampler_post_cfg_function``; ``needs_uncond`` sets disable_cfg1_optimization,
    so the negative is evaluated even at cfg 1 (comfy/samplers.py ``sampling_function``)."""
    model.set_model_sampler_post_cfg_function(fn, disable_cfg1_optimization=needs_uncond)


def check_zimage_model(model):
    """The NextDiT of a Z-Image MODEL; ValueError naming the input otherwise."""
    dm = model.get_model_object("diffusion_model") if model is not None else None
    if dm is None or not all(hasattr(dm, a) for a in ("context_refiner", "cap_embedder", "layers")):
        raise ValueError("model is not a Z-Image (NextDiT) diffusion model: load z_image_turbo_bf16.safetensors with "
                         "UNETLoader")
    return dm


class TransformedNoise:
    """A NOISE for SamplerCustomAdvanced: ``Noise_RandomNoise`` (comfy_extras/nodes_custom_sampler.py)
    followed by ``transform(noise, seed)``; ``seed`` is what the sampler reports to the guider."""

    def __init__(self, seed: int, transform):
        self.seed = seed
        self.transform = transform

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = input_latent["samples"]
        noise = comfy.sample.prepare_noise(latent, self.seed, input_latent.get("batch_index"))
        return self.transform(noise, self.seed)
