"""nodes/_internals/sampling.py against the running ComfyUI's own nodes (CPU, in-process): the shift patch keeps an
upstream noise_scale (ModelNoiseScale, 0.30.2). (ConditioningZeroOut / common_ksampler live in ComfyUI's top-level
``nodes`` module, which in-process resolves to this pack's package: those need a server-side test.)"""

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
