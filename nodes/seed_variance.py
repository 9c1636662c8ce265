"""Seed variance nodes: caption noise, initial-noise structure, early-step variation (MODEL patches on
clones), and a structured NOISE for SamplerCustomAdvanced."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..core import refined_steering as core_refined
from ..core import seed_variance as core
from . import CATEGORY
from ._internals import quant
from ._internals import noise as internals

SUBCATEGORY = f"{CATEGORY}/seed variance"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
CAPTION_KEY = "zimage_lab_caption_noise"
INITIAL_KEY = "zimage_lab_initial_noise"
EARLY_KEY = "zimage_lab_early_steps"
CAPTION_LENGTH = "zimage_lab_caption_noise_length"

SEED_TOOLTIP = ("Mixed with the sampler's seed: the same sampler seed and this seed give the same result; change either "
                "for another variation. Every batch row gets its own noise.")


def row_seeds(salt: str, options: dict, seed: int, batch: int) -> list[int]:
    """One seed per row of a model call: rows of each cond/uncond chunk are numbered from 0."""
    chunks = max(1, len(options.get("cond_or_uncond") or [1]))
    per_chunk = max(1, batch // chunks)
    sampler_seed = internals.sampler_seed(options)
    return [core.row_seed(salt, sampler_seed, seed, i % per_chunk) for i in range(batch)]


def noisy_rows(salt: str, options: dict, seed: int, batch: int, device) -> list[int | None]:
    """Row seeds for positive (cond) rows, None for unconditional rows."""
    positive = core_refined.cond_rows(options.get("cond_or_uncond"), batch).tolist()
    return [s if p else None for s, p in zip(row_seeds(salt, options, seed, batch), positive)]


def window(options: dict, steps: int, batch: int, device) -> torch.Tensor:
    """Bool [batch]: rows of this call inside the first `steps` steps of the schedule."""
    sigma = options.get("sigmas")
    if sigma is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    sigma = sigma.reshape(-1).to(device)
    inside = core.in_window(sigma, options.get("sample_sigmas"), steps)
    return inside if inside.shape[0] == batch else inside[:1].expand(batch)


def patch_caption_noise(model, strength, fraction, steps, space, seed, protect_start, protect_end):
    """A clone of MODEL whose caption content tokens get seeded noise in the first `steps` steps."""
    core.validate(strength, fraction, steps)
    if space not in core.SPACES:
        raise ValueError(f"space is {space!r}: choose one of {', '.join(core.SPACES)}")
    if protect_start < 0 or protect_end < 0:
        raise ValueError("protect_start and protect_end count template tokens: use 0 or more (3 and 5 for ComfyUI's template)")
    internals.check_zimage_model(model)
    patched = model.clone()
    internals.add_sampler_seed(patched)

    def noisy(tokens, length, options):
        rows = noisy_rows(core.SALTS["caption"], options, seed, tokens.shape[0], tokens.device)
        out = core.add_caption_noise(tokens, (protect_start, length - protect_end), rows, strength, fraction)
        if out is tokens:
            return tokens
        return torch.where(window(options, steps, tokens.shape[0], tokens.device)[:, None, None], out, tokens)

    if space == "qwen3":
        def transform(timesteps, context, options):
            return timesteps, noisy(context, context.shape[1], options), options
    else:
        def transform(timesteps, context, options):
            return timesteps, context, {**options, CAPTION_LENGTH: int(context.shape[1])}

        def after_refiner(caption, options):
            length = options.get(CAPTION_LENGTH)
            return caption if length is None else noisy(caption, length, options)

        internals.append_to_context_refiner(patched, after_refiner)
    internals.add_dit_input_transform(patched, CAPTION_KEY, transform)
    return patched


def structure_transform(strength: float, scale: int, seed: int):
    """noise, sampler seed -> structured noise (per-row low-frequency fields)."""

    def transform(noise, sampler_seed):
        if strength == 0:
            return noise
        seeds = [core.row_seed(core.SALTS["initial"], sampler_seed, seed, row) for row in range(noise.shape[0])]
        return core.structure_noise(noise, seeds, strength, scale)

    return transform


def check_structure(strength, scale):
    core.validate(strength)
    if scale < 1:
        raise ValueError(f"scale is {scale}: the low-frequency cell is at least 1 latent pixel wide (16 = 128 image pixels)")


def patch_initial_noise(model, strength, scale, seed):
    """A clone of MODEL whose starting noise gets a per-seed low-frequency field (any sampler node)."""
    check_structure(strength, scale)
    internals.check_zimage_model(model)
    patched = model.clone()
    internals.add_noise_transform(patched, INITIAL_KEY, structure_transform(strength, scale, seed))
    return patched


def patch_early_steps(model, mode, strength, steps, seed):
    """A clone of MODEL with a per-seed shift or guidance scale in the first `steps` steps."""
    core.validate(strength, 1.0, steps)
    if mode not in core.EARLY_MODES:
        raise ValueError(f"mode is {mode!r}: choose one of {', '.join(core.EARLY_MODES)}")
    internals.check_zimage_model(model)
    patched = model.clone()
    internals.add_sampler_seed(patched)
    salt = core.SALTS["early"]
    if mode == "shift":
        def transform(timesteps, context, options):
            if strength == 0:
                return timesteps, context, options
            sigma = options["sigmas"].reshape(-1).to(timesteps.device, torch.float64)
            factors = core.shift_factors(row_seeds(salt, options, seed, timesteps.shape[0]), strength).to(sigma.device)
            ratio = torch.where(sigma > 0, core.shift_sigma(sigma, factors) / sigma.clamp_min(1e-12), torch.ones_like(sigma))
            inside = window(options, steps, timesteps.shape[0], timesteps.device)
            moved = (timesteps.double() * ratio).to(timesteps.dtype)
            return torch.where(inside, moved, timesteps), context, options

        internals.add_dit_input_transform(patched, EARLY_KEY, transform)
    else:
        def post_cfg(args):
            denoised, uncond = args["denoised"], args.get("uncond_denoised")
            if strength == 0 or uncond is None:
                return denoised
            # "sigmas" lives only in the per-call copy of transformer_options (comfy/samplers.py _calc_cond_batch),
            # not in model_options: take this step's sigma from the post-cfg args (0.18.1, 0.30.2)
            options = {**args["model_options"].get("transformer_options", {}), "sigmas": args["sigma"]}
            cond = args["cond_denoised"]
            seeds = row_seeds(salt, {**options, "cond_or_uncond": [0]}, seed, denoised.shape[0])
            scales = core.guidance_scales(seeds, float(args["cond_scale"]), strength).to(denoised.device, denoised.dtype)
            varied = uncond + scales.view(-1, *([1] * (denoised.ndim - 1))) * (cond - uncond)
            inside = window(options, steps, denoised.shape[0], denoised.device)
            return torch.where(inside.view(-1, *([1] * (denoised.ndim - 1))), varied, denoised)

        internals.add_post_cfg(patched, post_cfg, needs_uncond=strength > 0)
    return patched


def model_input(tooltip="The Z-Image model (a clone is patched; this one is unchanged)."):
    return io.Model.Input("model", tooltip=tooltip)


def seed_input():
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, tooltip=SEED_TOOLTIP)


def strength_input(default, tooltip):
    return io.Float.Input("strength", default=default, min=0.0, max=10.0, step=0.01, round=0.0001, tooltip=tooltip)


def steps_input(default=2):
    return io.Int.Input("steps", default=default, min=0, max=10000,
                        tooltip="Acts only in the first this-many sampling steps (where the composition is decided); "
                                "the rest of the schedule is stock. 0 = never.")


class CaptionNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabCaptionNoise",
            display_name="Z-Image Caption Noise",
            category=SUBCATEGORY,
            description=("Seed variance: during the first steps only, adds seeded Gaussian noise to the caption's content "
                         "tokens (chat-template tokens protected), in Qwen3 space or after the context refiner. The noise "
                         "is strength x the per-channel RMS of the row's content tokens, on a fraction of the values, "
                         "different for every seed and batch row. Strength 0 gives the stock image bit for bit."),
            search_aliases=["seed variance", "conditioning noise", "diversity", "seed variance enhancer"],
            inputs=[
                model_input(),
                strength_input(0.5, "Noise size relative to the content tokens' per-channel RMS. 0 = off (stock)."),
                io.Float.Input("fraction", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of the content values that get noise (the rest stay exact)."),
                steps_input(),
                io.Combo.Input("space", options=list(core.SPACES), default="qwen3",
                               tooltip="qwen3: the hidden states the DiT reads (width 2560). refined: the caption leaving "
                                       "the context refiner (width 3840), where the main layers read it."),
                seed_input(),
                io.Int.Input("protect_start", default=3, min=0, max=4096,
                             tooltip="Template tokens before the prompt that get no noise (3 for ComfyUI's template)."),
                io.Int.Input("protect_end", default=5, min=0, max=4096,
                             tooltip="Template tokens after the prompt that get no noise (5 for ComfyUI's template)."),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone: use it in any sampler.")],
        )

    @classmethod
    def execute(cls, model, strength, fraction, steps, space, seed, protect_start=3, protect_end=5) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Caption Noise")
        patched = patch_caption_noise(model, strength, fraction, steps, space, seed, protect_start, protect_end)
        text = core.describe("caption noise", strength=strength, fraction=fraction, steps=steps, space=space, seed=seed)
        return io.NodeOutput(patched, ui={"text": [text]})


class InitialNoiseStructure(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabInitialNoiseStructure",
            display_name="Z-Image Initial Noise Structure",
            category=SUBCATEGORY,
            description=("Seed variance: mixes a smooth per-seed Gaussian field (drawn on a grid of `scale` latent pixels "
                         "and upsampled) into the sampler's starting noise at constant variance, "
                         "n' = (n + s L) / sqrt(1 + s^2). The composition lives at low frequencies. Works with KSampler, "
                         "the Z-Image Sampler and SamplerCustomAdvanced. Strength 0 gives the stock image bit for bit."),
            search_aliases=["seed variance", "low frequency noise", "structured noise", "diversity"],
            inputs=[
                model_input(),
                strength_input(0.5, "Weight s of the low-frequency field; 1 = half the noise energy. 0 = off (stock)."),
                io.Int.Input("scale", default=16, min=1, max=512,
                             tooltip="Cell size of the low-frequency field in latent pixels (x8 image pixels): 16 on a "
                                     "1024 px image gives an 8x8 grid of independent values."),
                seed_input(),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone: use it in any sampler.")],
        )

    @classmethod
    def execute(cls, model, strength, scale, seed) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Initial Noise Structure")
        patched = patch_initial_noise(model, strength, scale, seed)
        return io.NodeOutput(patched, ui={"text": [core.describe("initial noise structure", strength=strength,
                                                                  scale=scale, seed=seed)]})


class StructuredNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabStructuredNoise",
            display_name="Z-Image Structured Noise",
            category=SUBCATEGORY,
            description=("RandomNoise for SamplerCustomAdvanced with the initial-noise structure of Z-Image Initial Noise "
                         "Structure mixed in. Strength 0 is RandomNoise bit for bit."),
            search_aliases=["random noise", "low frequency noise", "seed variance"],
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the noise, as RandomNoise's."),
                strength_input(0.5, "Weight s of the low-frequency field; 0 = RandomNoise."),
                io.Int.Input("scale", default=16, min=1, max=512, tooltip="Cell size of the low-frequency field in latent pixels."),
                seed_input(),
            ],
            outputs=[io.Noise.Output(tooltip="NOISE for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_seed, strength, scale, seed) -> io.NodeOutput:
        check_structure(strength, scale)
        return io.NodeOutput(internals.TransformedNoise(noise_seed, structure_transform(strength, scale, seed)))


class EarlyStepVariation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabEarlyStepVariation",
            display_name="Z-Image Early-Step Variation",
            category=SUBCATEGORY,
            description=("Seed variance: for the first steps only, every seed gets its own flow shift (the model is told "
                         "the noise level of shift x exp(strength u)) or its own guidance scale (cfg + strength u), u "
                         "uniform in [-1, 1] drawn from the seed. Every shift leaves sigma 1 (the first step) unchanged, so "
                         "'shift' needs steps >= 2. 'guidance' runs the negative at every step, even at cfg 1. Strength 0 "
                         "gives the stock image bit for bit."),
            search_aliases=["seed variance", "shift jitter", "guidance jitter", "diversity"],
            inputs=[
                model_input(),
                io.Combo.Input("mode", options=list(core.EARLY_MODES), default="shift",
                               tooltip="shift: per-seed noise level told to the model (no extra cost). guidance: per-seed "
                                       "CFG scale against the negative (one extra pass per step)."),
                strength_input(0.5, "shift: log of the largest shift multiplier (0.5 -> x0.61..x1.65). guidance: largest "
                                    "change of the CFG scale. 0 = off (stock)."),
                steps_input(3),
                seed_input(),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone: use it in any sampler.")],
        )

    @classmethod
    def execute(cls, model, mode, strength, steps, seed) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Early-Step Variation")
        patched = patch_early_steps(model, mode, strength, steps, seed)
        text = core.describe("early-step variation", mode=mode, strength=strength, steps=steps, seed=seed)
        return io.NodeOutput(patched, ui={"text": [text]})


NODES = [CaptionNoise, InitialNoiseStructure, StructuredNoise, EarlyStepVariation]
