"""Multi-seed ensemble sampler (prediction / latent average, one batch) and a pixel blend of images."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..core import ensemble as core
from ..core import sampler as core_sampler
from . import CATEGORY
from ._internals import quant
from ._internals.sampling import SAMPLERS, SCHEDULERS, patch_shift, sample_seeds, schedule_of, zero_out
from .sampler import check_inputs

SUBCATEGORY = f"{CATEGORY}/research"


def sample_rows(model, positive, negative, latent, seeds, steps, shift, sampler_name, scheduler, cfg, denoise,
                callback=None, patch=None):
    """Sample one batch row per seed, each with the noise common_ksampler makes for that seed.

    With one seed this is ZImageLabSampler / ModelSamplingAuraFlow -> KSampler, bit for bit. The
    rows run as one batch; ``patch(model)`` may add model patches to the shifted clone, and
    ``callback(step, x0, x, total)`` replaces the preview callback. Returns (LATENT, shifted model).
    """
    check_inputs(latent, steps, shift, cfg, denoise, negative)
    shifted = patch_shift(model, shift)
    if patch is not None:
        patch(shifted)
    if negative is None:
        negative = zero_out(positive)
    out = sample_seeds(shifted, positive, negative, latent, seeds, steps, cfg, sampler_name, scheduler, denoise,
                       callback)
    return out, shifted


class PredictionAverage:
    """Post-CFG hook: inside the step window every row's denoised prediction becomes the rows' mean.

    Also keeps, per model evaluation, the sigma and the seeds' disagreement (on the device; read once
    at the end so the step loop has no host sync).
    """

    def __init__(self, window: tuple[float, float]):
        self.window = window
        self.sigmas: list[torch.Tensor] = []
        self.spreads: list[torch.Tensor] = []
        self.inside: list[torch.Tensor] = []

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        sigma = args["sigma"].detach().reshape(-1)[0]
        inside = core.in_window(sigma, self.window)  # a device tensor: no host sync in the step loop
        self.sigmas.append(sigma)
        self.spreads.append(core.seed_spread(denoised))
        self.inside.append(inside)
        return torch.where(inside, core.average_prediction(denoised), denoised)

    def trace(self) -> list[dict]:
        """Per evaluation: sigma, seed spread before averaging, whether it was averaged."""
        if not self.sigmas:
            return []
        sigmas = torch.stack(self.sigmas).float().cpu().tolist()
        spreads = torch.stack(self.spreads).float().cpu().tolist()
        inside = torch.stack(self.inside).cpu().tolist()
        return [{"sigma": s, "seed_spread": d, "averaged": bool(a)} for s, d, a in zip(sigmas, spreads, inside)]


class EnsembleSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabEnsembleSampler",
            display_name="Z-Image Ensemble Sampler",
            category=SUBCATEGORY,
            description=(
                "Samples several seeds as one batch, like the Z-Image Sampler. 'prediction average' replaces every "
                "seed's denoised prediction (x0, after CFG) by the seeds' mean at each step of the window, so the "
                "seeds agree on one image; 'latent average' samples the seeds independently and averages the final "
                "latents; 'none' returns every seed's latent. With one seed the result equals the Z-Image Sampler "
                "bit for bit."
            ),
            search_aliases=["multi-seed", "seed ensemble", "prediction average", "ensemble"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model."),
                io.Conditioning.Input("positive", tooltip="What the image should show (one prompt for every seed)."),
                io.Latent.Input("latent_image", tooltip="A latent of batch 1 (EmptySD3LatentImage batch_size 1): every seed gets a copy."),
                io.String.Input("seeds", default="1, 2, 3, 4",
                                tooltip="Seeds of the ensemble: '1, 2, 3' or ranges '10-13'. Each seed's noise is the noise KSampler makes for it."),
                io.Combo.Input("mode", options=list(core.MODES), default="prediction average",
                               tooltip="prediction average: seeds share the mean x0 prediction at each step (one image). "
                                       "latent average: sample each seed, average the final latents. none: every seed's latent."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Sampling steps; Z-Image-Turbo is distilled for 8."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, round=0.001,
                               tooltip="Flow time shift, as in the Z-Image Sampler (3.0 for Turbo)."),
                io.Combo.Input("sampler_name", options=SAMPLERS, default="res_multistep",
                               tooltip="Any ComfyUI sampler. With ancestral/SDE samplers the per-step noise of the whole batch comes from the first seed."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="simple",
                               tooltip="Sigma scheduler."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance; the average is taken after CFG. 1.0 for Turbo."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the schedule to run."),
                io.Int.Input("start_step", default=0, min=0, max=10000,
                             tooltip="prediction average only: first step (from 0) whose predictions are averaged. The window is "
                                     "the noise levels of these steps: an evaluation at sigma is averaged when "
                                     "sigma[end_step] < sigma <= sigma[start_step] (Heun's second evaluation counts "
                                     "with the step whose sigma it is made at)."),
                io.Int.Input("end_step", default=core.ALL_STEPS, min=0, max=10000,
                             tooltip="prediction average only: averaging stops before this step (10000 = to the end). "
                                     "Stop early to let the seeds share the composition but keep their own details."),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg != 1.0."),
            ],
            outputs=[
                io.Latent.Output("LATENT", tooltip="The ensemble: the mean of the seeds' final latents (prediction / latent "
                                                     "average; batch 1), or every seed's latent (none)."),
                io.Latent.Output("per_seed", tooltip="Every seed's final latent as a batch, in seed order (decode and blend them with Z-Image Image Blend)."),
                io.String.Output("info", tooltip="JSON: settings, seeds, mode, window and per-step seed spread (how much the seeds' x0 predictions disagreed)."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seeds, mode, steps, shift, sampler_name, scheduler, cfg, denoise,
                start_step=0, end_step=core.ALL_STEPS, negative=None) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Ensemble Sampler")
        seed_list = core.parse_seeds(seeds)
        core.validate_mode(mode)
        check_inputs(latent_image, steps, shift, cfg, denoise, negative)
        if latent_image["samples"].shape[0] != 1:
            raise ValueError(f"latent_image has batch {latent_image['samples'].shape[0]}: the ensemble sampler takes a "
                             "latent of batch 1 and makes one row per seed (set batch_size 1)")
        sigmas = schedule_of(patch_shift(model, shift), steps, sampler_name, scheduler, denoise)
        averager = None
        if mode == "prediction average":
            averager = PredictionAverage(core.step_window(sigmas, start_step, end_step))

        def patch(m):
            if averager is not None:
                m.set_model_sampler_post_cfg_function(averager)

        rows, _ = sample_rows(model, positive, negative, latent_image, seed_list, steps, shift, sampler_name, scheduler,
                              cfg, denoise, patch=patch)
        ensemble = dict(rows)
        if mode != "none":
            ensemble["samples"] = core.average_latents(rows["samples"])
        trace = averager.trace() if averager is not None else []
        record = core_sampler.SamplingRecord(
            "ZImageLabEnsembleSampler", seed_list[0], steps, shift, sampler_name, scheduler, cfg, denoise,
            [float(s) for s in sigmas],
            extra={"seeds": seed_list, "mode": mode, "start_step": start_step, "end_step": min(end_step, steps),
                   "evaluations": trace})
        summary = f"{len(seed_list)} seeds, {mode}"
        if averager is not None:
            summary += f", averaged {sum(t['averaged'] for t in trace)} of {len(trace)} model evaluations"
            if trace:
                summary += "; seed spread per evaluation: " + ", ".join(f"{t['seed_spread']:.4f}" for t in trace)
        return io.NodeOutput(ensemble, rows, record.to_json(), ui={"text": [summary], "evaluations": trace})


class ImageBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabImageBlend",
            display_name="Z-Image Image Blend",
            category=SUBCATEGORY,
            description=(
                "Blends a batch of decoded images pixel by pixel (mean or median), e.g. the per-seed images of the "
                "ensemble sampler: the image-space ensemble. Also outputs the per-pixel spread across the batch."
            ),
            search_aliases=["image average", "pixel average", "blend batch"],
            inputs=[
                io.Image.Input("images", tooltip="An IMAGE batch of equal-size images (VAE Decode of the per_seed latents)."),
                io.Combo.Input("method", options=list(core.BLEND_METHODS), default="mean",
                               tooltip="mean: pixel average. median: per-pixel median (robust to one odd seed)."),
            ],
            outputs=[
                io.Image.Output("IMAGE", tooltip="The blended image (batch 1)."),
                io.Mask.Output("spread", tooltip="Per-pixel standard deviation across the batch (mean over colour channels)."),
            ],
        )

    @classmethod
    def execute(cls, images, method) -> io.NodeOutput:
        blend, spread = core.blend_images(images, method)
        text = f"{method} of {images.shape[0]} images; mean spread {float(spread.mean()):.4f}"
        return io.NodeOutput(blend, spread, ui={**ui.PreviewImage(blend, cls=cls).as_dict(), "text": [text]})


NODES = [EnsembleSampler, ImageBlend]
