"""nodes/_internals/sampling.py against the running ComfyUI's own nodes: the shift patch keeps an upstream noise_scale
(ModelNoiseScale, 0.30.2; in-process); on a server (ConditioningZeroOut and common_ksampler live in ComfyUI's top-level
``nodes`` module, which in-process resolves to this pack's package), the default negative is the running ComfyUI's
ConditioningZeroOut and a LATENT's downscale ratios reach fix_empty_latent_channels as KSampler passes them."""

import pytest
import torch

import comfy_inprocess as ci
import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sampling(lab):
    ci.import_comfy(harness.find_comfyui())
    ci.tiny_dit(lab.base / "models")
    return ci.pack_module("nodes._internals.sampling")


@pytest.fixture(scope="module")
def models_dir(lab):
    return lab.base / "models"


def test_shift_patch_keeps_an_upstream_noise_scale(sampling, models_dir):
    import comfy_extras.nodes_model_advanced as adv

    if not hasattr(adv, "ModelNoiseScale"):
        pytest.skip("this ComfyUI has no ModelNoiseScale (0.18.1)")
    (scaled,) = adv.ModelNoiseScale().patch(ci.tiny_dit(models_dir), 0.5)
    shifted = sampling.patch_shift(scaled, 3.0)
    ms = shifted.get_model_object("model_sampling")
    assert ms.noise_scale == 0.5 and float(ms.shift) == 3.0
    (stock,) = adv.ModelSamplingAuraFlow().patch_aura(scaled, 3.0)
    assert torch.equal(ms.sigmas, stock.get_model_object("model_sampling").sigmas)


def _graph(latent_node: str = "5") -> dict:
    """Tiny model, a cfg-1 unconditional pass forced on (so a negative shows in the result), two prompts."""
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "ZImageLabTestUncondAtCFG1", "inputs": {"model": ["1", 0]}},
        "7": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["6", 0], "shift": 3.0}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue boat at dusk", "clip": ["2", 0]}},
    }


def _ksampler(negative: str, latent: str) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": ["7", 0], "seed": 11, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["3", 0], "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0}}


def _ours(latent: str) -> dict:
    """Z-Image Sampler and a one-seed Ensemble Sampler with no negative wired, on the same model and latent."""
    common = {"model": ["6", 0], "positive": ["3", 0], "latent_image": [latent, 0], "steps": 3, "shift": 3.0,
              "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}
    return {
        "20": {"class_type": "ZImageLabSampler", "inputs": {**common, "seed": 11}},
        "21": {"class_type": "ZImageLabEnsembleSampler", "inputs": {**common, "seeds": "11", "mode": "none",
                                                                       "start_step": 0, "end_step": 10000}},
    }


def _save(node: str, prefix: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": f"internals/{prefix}"}}


def test_default_negative_is_the_running_comfyuis_conditioning_zero_out(lab):
    api = {**_graph(), **_ours("5"), "10": _ksampler("4", "5"), "11": _ksampler("8", "5")}
    api.update({"30": _save("10", "zero_stock"), "31": _save("11", "other_negative"), "32": _save("20", "zero_sampler"),
                "33": _save("21", "zero_ensemble")})
    result = lab.run(api)
    stock, other, sampler, ensemble = (lab.latents(result, n)[0] for n in ("30", "31", "32", "33"))
    assert not torch.equal(stock, other)  # the forced unconditional pass makes the negative matter at cfg 1
    assert torch.equal(sampler, stock) and torch.equal(ensemble, stock)


def test_latent_downscale_ratios_reach_the_sampler_as_ksampler_passes_them(lab):
    api = {**_graph(), "9": {"class_type": "ZImageLabTestLatentRatios",
                             "inputs": {"latent": ["5", 0], "spacial": 16, "temporal": 4}}}
    api.update({**_ours("9"), "10": _ksampler("4", "9")})
    api.update({"30": _save("10", "ratio_stock"), "32": _save("20", "ratio_sampler"), "33": _save("21", "ratio_ensemble")})
    result = lab.run(api)
    stock, sampler, ensemble = (lab.latents(result, n)[0] for n in ("30", "32", "33"))
    # Flux latents are 8x downscaled: a LATENT saying 16 is upscaled 2x (8x8 -> 16x16) by fix_empty_latent_channels;
    # where common_ksampler also passes the temporal ratio (0.30.2), 4 repeats the third axis 4 times.
    temporal = "downscale_ratio_temporal" in (harness.find_comfyui() / "nodes.py").read_text()
    assert tuple(stock.shape) == ((1, 16, 64, 16) if temporal else (1, 16, 16, 16))
    assert torch.equal(sampler, stock) and torch.equal(ensemble, stock)
