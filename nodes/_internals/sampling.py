"""KSampler, model_sampling and preview internals the samplers of the pack call.

Where a stock node does exactly what is needed (ModelSamplingAuraFlow, ConditioningZeroOut,
common_ksampler) the node's own code is called, so the pack follows the running ComfyUI.
"""

from __future__ import annotations

import inspect

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import nodes as comfy_nodes
import torch

SAMPLERS = comfy.samplers.KSampler.SAMPLERS
"""Sampler names KSampler offers (``comfy/samplers.py`` ``KSampler.SAMPLERS``). Checked: 0.18.1, 0.30.2."""

SCHEDULERS = comfy.samplers.KSampler.SCHEDULERS
"""Scheduler names KSampler offers (``comfy/samplers.py`` ``KSampler.SCHEDULERS``). Checked: 0.18.1, 0.30.2."""


def _call_stock_node(cls, method: str, **kwargs):
    """Run a stock node's function: a V1 node's FUNCTION method, or a V3 node's ``execute`` classmethod."""
    if hasattr(cls, method):
        return getattr(cls(), method)(**kwargs)[0]
    return cls.execute(**kwargs).args[0]


def patch_shift(model, shift: float):
    """A clone of MODEL with ModelSamplingAuraFlow(shift) applied, by the stock node itself.

    ``comfy_extras/nodes_model_advanced.py`` ``ModelSamplingAuraFlow.patch_aura`` ->
    ``ModelSamplingSD3.patch(multiplier=1.0)``. Checked: 0.18.1; 0.30.2 and later also carry the
    model's ``noise_scale`` (ModelNoiseScale) over to the new model_sampling, which calling the
    node keeps.
    """
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    return _call_stock_node(ModelSamplingAuraFlow, "patch_aura", model=model, shift=shift)


def zero_out(conditioning):
    """ConditioningZeroOut of the running ComfyUI (``nodes.py`` ``ConditioningZeroOut.zero_out``).

    Checked: 0.18.1, 0.30.2 (both zero the tokens, ``pooled_output`` and ``conditioning_lyrics``).
    """
    return _call_stock_node(comfy_nodes.ConditioningZeroOut, "zero_out", conditioning=conditioning)


def schedule_of(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas KSampler will use for these settings (``comfy/samplers.py`` ``KSampler.__init__``
    -> ``set_steps``). Checked: 0.18.1, 0.30.2."""
    ksampler = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name,
                                       scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    return ksampler.sigmas.cpu()


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
    """KSampler's own sampling function (``nodes.py`` ``common_ksampler``), returning the LATENT.
    Checked: 0.18.1, 0.30.2."""
    (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                         denoise=denoise)
    return out


LATENT_RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")
"""LATENT keys that common_ksampler passes to fix_empty_latent_channels and drops from its output."""


def _ratio_keys() -> list[str]:
    """The LATENT ratio keys this ComfyUI's fix_empty_latent_channels accepts (signature inspection)."""
    accepted = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    return [k for k in LATENT_RATIO_KEYS if k in accepted]


def _fix_empty_latent(model, latent: dict) -> torch.Tensor:
    """``comfy/sample.py`` ``fix_empty_latent_channels`` with the ratios this ComfyUI accepts.

    0.18.1 takes ``downscale_ratio_spacial``; 0.30.2 adds ``downscale_ratio_temporal`` (detected
    from the signature, as ``nodes.py`` ``common_ksampler`` of each version passes them).
    """
    ratios = [latent.get(k) for k in _ratio_keys()]
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"], *ratios)


def sample_seeds(model, positive, negative, latent: dict, seeds: list[int], steps, cfg, sampler_name, scheduler,
                 denoise, callback=None) -> dict:
    """``nodes.py`` ``common_ksampler`` with one batch row per seed, each with that seed's noise.

    With one seed this is common_ksampler line for line (noise, mask, callback, progress, output
    keys). Checked: 0.18.1, 0.30.2.
    """
    latent_image = _fix_empty_latent(model, latent)
    batch_inds = latent.get("batch_index")
    noise = torch.cat([comfy.sample.prepare_noise(latent_image, seed, batch_inds) for seed in seeds])
    if len(seeds) > 1:
        latent_image = latent_image.repeat(len(seeds), *([1] * (latent_image.ndim - 1)))
    if callback is None:
        callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seeds[0])
    out = latent.copy()
    for key in _ratio_keys():
        out.pop(key, None)
    if len(seeds) > 1:
        out.pop("batch_index", None)
    out["samples"] = samples
    return out


def preview_callback(model, steps: int):
    """The sampler callback KSampler uses: progress bar and latent previews (``latent_preview.py``
    ``prepare_callback``). Checked: 0.18.1, 0.30.2."""
    return latent_preview.prepare_callback(model, steps)


def previewer(model):
    """The latent previewer of the server's preview setting, or None (``latent_preview.py`` ``get_previewer``).
    Checked: 0.18.1, 0.30.2."""
    return latent_preview.get_previewer(model.load_device, model.model.latent_format)


def latent_rgb_factors(model) -> tuple:
    """(latent_rgb_factors, latent_rgb_factors_bias or None) of the model's latent format, as
    ``latent_preview.py`` ``Latent2RGBPreviewer`` reads them. Checked: 0.18.1, 0.30.2."""
    latent_format = model.model.latent_format
    return latent_format.latent_rgb_factors, getattr(latent_format, "latent_rgb_factors_bias", None)


def process_latent_out(model, samples: torch.Tensor) -> torch.Tensor:
    """Model-space latents to VAE space (``comfy/model_base.py`` ``BaseModel.process_latent_out``)."""
    return model.model.process_latent_out(samples)


def calc_cond_batch(model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> list:
    """One model evaluation per conditioning (``comfy/samplers.py`` ``calc_cond_batch``). Checked: 0.18.1, 0.30.2."""
    return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)


def percent_to_sigma(base_model):
    """The model's percent -> sigma map (``comfy/model_sampling.py`` ``percent_to_sigma``) of a BaseModel."""
    return base_model.model_sampling.percent_to_sigma
