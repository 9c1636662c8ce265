"""nodes/_internals/sampling.py against the running ComfyUI's own nodes (CPU, in-process): the shift patch keeps an
upstream noise_scale (ModelNoiseScale, 0.30.2), zero_negative is ConditioningZeroOut's output, and the sampler's
empty-latent fix passes every ratio key this ComfyUI's common_ksampler passes (downscale_ratio_temporal, 0.30.2)."""

import inspect

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


def test_zero_negative_is_conditioning_zero_out(sampling, models_dir):
    import nodes as comfy_nodes

    positive = ci.encode(ci.tiny_clip(models_dir), "a red fox")
    positive[0][1]["pooled_output"] = torch.ones(1, 4)
    ours = sampling.zero_out(positive)
    (stock,) = comfy_nodes.ConditioningZeroOut().zero_out(positive)
    assert len(ours) == len(stock)
    for (t, extra), (st, sextra) in zip(ours, stock):
        assert torch.equal(t, st) and set(extra) == set(sextra)
        assert all(torch.equal(v, sextra[k]) if isinstance(v, torch.Tensor) else v == sextra[k] for k, v in extra.items())
    assert positive[0][0].abs().sum() > 0  # the given CONDITIONING is unchanged


def test_empty_latent_fix_passes_every_ratio_key_common_ksampler_passes(sampling):
    import comfy.sample
    import nodes as comfy_nodes

    passed = [k for k in sampling.LATENT_RATIO_KEYS if k in inspect.getsource(comfy_nodes.common_ksampler)]
    assert sampling._ratio_keys() == passed
    assert set(passed) <= set(inspect.signature(comfy.sample.fix_empty_latent_channels).parameters)
