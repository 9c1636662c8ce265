"""Trajectory recorder: the Z-Image Sampler with per-step statistics, x0 snapshots and a plot."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..core import sampler as core_sampler
from ..core import trajectory as core
from ..core import validation
from . import CATEGORY
from ._internals import quant
from ._internals.sampling import (SAMPLERS, SCHEDULERS, latent_rgb_factors, patch_shift, preview_callback,
                                  process_latent_out, schedule_of)
from .ensemble import sample_rows
from .sampler import check_inputs

SUBCATEGORY = f"{CATEGORY}/research"


class Recorder:
    """Sampler callback that keeps per-step statistics and x0 snapshots on the device, then shows the preview."""

    def __init__(self, sigmas: list[float], keep: list[int], preview):
        self.sigmas, self.keep, self.preview = sigmas, set(keep), preview
        self.stats: list[torch.Tensor] = []
        self.x0: dict[int, torch.Tensor] = {}

    def __call__(self, step, x0, x, total_steps):
        self.stats.append(core.step_stats(x, x0, self.sigmas[step]))
        if step in self.keep:
            self.x0[step] = x0.detach().clone()
        self.preview(step, x0, x, total_steps)


def decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to an IMAGE batch, as VAEDecode does."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images


def preview_images(model, x0: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ComfyUI's linear latent-to-RGB preview of model-space latents, scaled to the image size (no VAE needed)."""
    rgb = core.latent_rgb(x0, *latent_rgb_factors(model))
    return torch.nn.functional.interpolate(rgb.movedim(-1, 1), size=size, mode="nearest").movedim(1, -1).cpu()


class Trajectory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTrajectory",
            display_name="Z-Image Trajectory Recorder",
            category=SUBCATEGORY,
            description=(
                "Samples exactly like the Z-Image Sampler (the final latent is identical) while recording, at each "
                "step, sigma, the latent's norm / mean / std, the norms of the predicted clean latent x0 and of the "
                "velocity, and x0 itself every k steps. Outputs the x0 snapshots (decoded when a VAE is connected), "
                "a plot of the statistics and the numbers as JSON."
            ),
            search_aliases=["trajectory", "denoising steps", "x0 preview", "sampling analysis"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model."),
                io.Conditioning.Input("positive", tooltip="What the image should show."),
                io.Latent.Input("latent_image", tooltip="16-channel latent to denoise (EmptySD3LatentImage)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (same noise as KSampler with this seed)."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Sampling steps; Z-Image-Turbo is distilled for 8."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, round=0.001,
                               tooltip="Flow time shift (3.0 for Turbo)."),
                io.Combo.Input("sampler_name", options=SAMPLERS, default="res_multistep",
                               tooltip="Any ComfyUI sampler."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="simple",
                               tooltip="Sigma scheduler."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (1.0 for Turbo)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the schedule to run."),
                io.Int.Input("every", default=1, min=1, max=10000,
                             tooltip="Keep x0 every k steps (steps 0, k, 2k, ... and always the last step)."),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg != 1.0."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Decodes the x0 snapshots. Without it, x0_images are ComfyUI's fast latent-to-RGB "
                                     "previews (approximate colours); x0_latents can be decoded later."),
            ],
            outputs=[
                io.Latent.Output("LATENT", tooltip="The final latent, identical to the Z-Image Sampler's."),
                io.Image.Output("x0_images", tooltip="The predicted clean image at each kept step (one per step and batch item)."),
                io.Latent.Output("x0_latents", tooltip="The predicted clean latents at the kept steps, in VAE space (VAE Decode them)."),
                io.Image.Output("plot", tooltip="Plot of sigma, norms and mean/std per step."),
                io.String.Output("json", tooltip="Per-step numbers and settings as JSON."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, shift, sampler_name, scheduler, cfg, denoise, every,
                negative=None, vae=None) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Trajectory Recorder")
        validation.noise_seed(seed, "seed", model)
        check_inputs(latent_image, steps, shift, cfg, denoise, negative)
        keep = core.snapshot_steps(steps, every)
        shifted = patch_shift(model, shift)
        sigmas = schedule_of(shifted, steps, sampler_name, scheduler, denoise)
        recorder = Recorder([float(s) for s in sigmas], keep, preview_callback(shifted, steps))
        out, shifted = sample_rows(model, positive, negative, latent_image, [seed], steps, shift, sampler_name, scheduler,
                                   cfg, denoise, callback=recorder)

        stats = torch.stack(recorder.stats).cpu() if recorder.stats else torch.zeros(0, len(core.STATS))
        rows = core.records([float(s) for s in sigmas], stats)
        kept = sorted(recorder.x0)
        x0_model = torch.cat([recorder.x0[s] for s in kept]) if kept else torch.zeros_like(out["samples"][:0])
        x0_latents = process_latent_out(shifted, x0_model.float()).cpu()
        height, width = out["samples"].shape[-2] * 8, out["samples"].shape[-1] * 8
        if vae is not None:
            x0_images = decode(vae, x0_latents)
        else:
            x0_images = preview_images(shifted, x0_model, (height, width))

        record = core_sampler.SamplingRecord("ZImageLabTrajectory", seed, steps, shift, sampler_name, scheduler, cfg,
                                             denoise, [float(s) for s in sigmas])
        settings = {k: v for k, v in record.__dict__.items() if k != "extra"}
        text = core.to_json(settings, rows, kept)
        title = f"seed {seed}, {steps} steps, shift {shift:g}, {sampler_name}/{scheduler}, cfg {cfg:g}"
        plot = torch.from_numpy(core.plot(rows, title)).float().div(255.0).unsqueeze(0)
        summary = "\n".join(
            f"step {r['step']}: sigma {r['sigma']:.4f}  |x| {r['latent_norm']:.2f}  |x0| {r['x0_norm']:.2f}" for r in rows)
        return io.NodeOutput(out, x0_images, {"samples": x0_latents}, plot, text,
                             ui={**ui.PreviewImage(plot, cls=cls).as_dict(), "text": [summary], "trajectory": rows})


NODES = [Trajectory]
