"""Z-Image Sampler: KSampler with the AuraFlow shift applied on a clone, reporting its schedule."""

from __future__ import annotations

from comfy_api.latest import io

from ..core import sampler as core
from ..core import validation
from . import CATEGORY
from ._internals.sampling import SAMPLERS, SCHEDULERS, common_ksampler, patch_shift, schedule_of, zero_out


def check_inputs(latent, steps, shift, cfg, denoise, negative):
    """Validate a sampler's settings before anything is cloned or sampled."""
    core.validate_schedule(steps, shift, denoise)
    core.validate_cfg(cfg)
    core.validate_latent(latent["samples"])
    if negative is None and cfg != 1.0:
        raise ValueError(f"cfg is {cfg}: a negative conditioning is required when cfg != 1.0 "
                         "(at exactly 1.0 no unconditional pass runs and the negative is not needed).")


def sample(model, positive, negative, latent, seed, steps, shift, sampler_name, scheduler, cfg, denoise):
    """Sample exactly as ModelSamplingAuraFlow(shift) -> KSampler, returning (LATENT, sigmas)."""
    check_inputs(latent, steps, shift, cfg, denoise, negative)
    shifted = patch_shift(model, shift)
    if negative is None:
        negative = zero_out(positive)
    out = common_ksampler(shifted, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise)
    return out, schedule_of(shifted, steps, sampler_name, scheduler, denoise)


class ZImageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSampler",
            display_name="Z-Image Sampler",
            category=CATEGORY,
            description=(
                "Samples Z-Image with the flow shift applied the way ModelSamplingAuraFlow does (on a clone), "
                "with the official Turbo defaults: 8 steps, shift 3, res_multistep, simple, cfg 1. Identical "
                "latents to ModelSamplingAuraFlow -> KSampler with the same settings. Outputs the sigma schedule "
                "it used and a JSON record of its settings."
            ),
            search_aliases=["zimage", "z-image", "turbo sampler", "ksampler shift"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model (UNETLoader z_image_turbo_bf16.safetensors)."),
                io.Conditioning.Input("positive", tooltip="What the image should show."),
                io.Latent.Input("latent_image", tooltip="16-channel latent to denoise (EmptySD3LatentImage for text-to-image)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (same noise as KSampler with this seed)."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Sampling steps; Z-Image-Turbo is distilled for 8."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, round=0.001,
                               tooltip="Flow time shift: sigma = shift*t / (1 + (shift-1)*t). 3.0 for Turbo; higher spends more steps at high noise."),
                io.Combo.Input("sampler_name", options=SAMPLERS, default="res_multistep",
                               tooltip="Any ComfyUI sampler; the official Turbo workflow uses res_multistep."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="simple",
                               tooltip="Sigma scheduler; simple spaces the shifted flow times evenly."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance. Turbo has CFG distilled in: at exactly 1.0 no unconditional pass runs."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run; below 1.0 for img2img."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Only used when cfg != 1.0. Leave empty for Turbo at cfg 1."),
            ],
            outputs=[
                io.Latent.Output("LATENT", tooltip="The denoised latent, as KSampler returns it."),
                io.Sigmas.Output("sigmas", tooltip="The sigma schedule that was used (steps + 1 values, ending at 0)."),
                io.String.Output("info", tooltip="JSON record of the settings and schedule, for reproducing the image."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, shift, sampler_name, scheduler, cfg, denoise,
                negative=None) -> io.NodeOutput:
        validation.noise_seed(seed, "seed", model)
        out, sigmas = sample(model, positive, negative, latent_image, seed, steps, shift, sampler_name,
                             scheduler, cfg, denoise)
        record = core.SamplingRecord("ZImageLabSampler", seed, steps, shift, sampler_name, scheduler, cfg, denoise,
                                     [float(s) for s in sigmas])
        return io.NodeOutput(out, sigmas, record.to_json(),
                             ui={"text": [core.describe_schedule(sigmas)], "sigmas": record.sigmas})


NODES = [ZImageSampler]
