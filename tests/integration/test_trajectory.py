"""Trajectory recorder on a real ComfyUI: the final latent is the sampler's, the numbers are the model's."""

import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import harness
from core import sampler as core_sampler

pytestmark = pytest.mark.integration

FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159


def base_graph(channels_ok=True):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["2", 0]}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}},
        "5": {"class_type": "EmptySD3LatentImage" if channels_ok else "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def settings(seed, steps, shift, sampler_name):
    return {"positive": ["3", 0], "latent_image": ["5", 0], "seed": seed, "steps": steps, "shift": shift,
            "sampler_name": sampler_name, "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}


def trajectory(model, seed, steps, shift, sampler_name, every=1, vae=True):
    inputs = {"model": model, **settings(seed, steps, shift, sampler_name), "every": every}
    if vae:
        inputs["vae"] = ["4", 0]
    return {"class_type": "ZImageLabTrajectory", "inputs": inputs}


def save_latent(node, slot, prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, slot], "filename_prefix": f"traj/{prefix}"}}


def save_image(node, slot, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": [node, slot], "filename_prefix": f"traj/{prefix}"}}


@pytest.mark.parametrize("seed, steps, shift, sampler_name", [(3, 4, 3.0, "res_multistep"), (8, 3, 2.0, "dpmpp_2m")])
def test_recording_leaves_the_final_latent_identical(lab, seed, steps, shift, sampler_name):
    api = base_graph()
    api["10"] = {"class_type": "ZImageLabSampler", "inputs": {"model": ["1", 0], **settings(seed, steps, shift, sampler_name)}}
    api["11"] = save_latent("10", 0, f"sampler_{seed}")
    api["20"] = trajectory(["1", 0], seed, steps, shift, sampler_name, vae=True)
    api["21"] = save_latent("20", 0, f"with_vae_{seed}")
    api["30"] = trajectory(["1", 0], seed, steps, shift, sampler_name, every=2, vae=False)
    api["31"] = save_latent("30", 0, f"no_vae_{seed}")
    api["32"] = save_image("30", 1, f"preview_{seed}")
    result = lab.run(api)
    (reference,) = lab.latents(result, "11")
    assert reference.abs().max() > 0
    assert torch.equal(lab.latents(result, "21")[0], reference)
    assert torch.equal(lab.latents(result, "31")[0], reference)
    previews = lab.images(result, "32")  # without a VAE: latent-to-RGB previews at the image size
    assert len(previews) == len(range(0, steps, 2)) + (0 if (steps - 1) % 2 == 0 else 1)
    assert previews[0].shape == (64, 64, 3)


def test_recorded_numbers_are_the_models_own(lab):
    name = f"traj_{uuid.uuid4().hex[:8]}"
    api = base_graph()
    api["9"] = {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": name}}
    api["20"] = trajectory(["9", 0], 5, 4, 3.0, "euler", every=2, vae=True)
    api["21"] = save_latent("20", 2, "x0")
    api["22"] = save_image("20", 1, "x0_images")
    api["23"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 2], "vae": ["4", 0]}}
    api["24"] = save_image("23", 0, "x0_decoded")
    api["25"] = save_image("20", 3, "plot")
    result = lab.run(api)
    record = load_file(str(lab.output / "probe" / f"{name}.safetensors"))
    rows = result.outputs["20"]["trajectory"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    expected_sigmas = core_sampler.simple_schedule(4, 3.0).numpy()
    x0_expected = []
    for k, row in enumerate(rows):
        x, out, t = record[f"x.{k}"].double(), record[f"out.{k}"].double(), float(record[f"t.{k}"][0])
        x0 = x - t * out  # the model's clean-latent prediction; its velocity is out itself
        assert row["sigma"] == pytest.approx(expected_sigmas[k], abs=1e-6) and row["sigma"] == pytest.approx(t, abs=1e-7)
        assert row["latent_norm"] == pytest.approx(float(x.norm()), rel=1e-5)
        assert row["latent_mean"] == pytest.approx(float(x.mean()), rel=1e-4, abs=1e-6)
        assert row["latent_std"] == pytest.approx(float(x.std(correction=0)), rel=1e-5)
        assert row["x0_norm"] == pytest.approx(float(x0.norm()), rel=1e-5)
        assert row["velocity_norm"] == pytest.approx(float(out.norm()), rel=1e-4)
        if k in (0, 2, 3):
            x0_expected.append(x0 / FLUX_SCALE + FLUX_SHIFT)
    (x0_latents,) = lab.latents(result, "21")
    assert x0_latents.shape == (3, 16, 8, 8)
    assert torch.allclose(x0_latents.double(), torch.cat(x0_expected), atol=1e-5)
    images, decoded = lab.images(result, "22"), lab.images(result, "24")
    assert len(images) == 3 and all(np.array_equal(a, b) for a, b in zip(images, decoded))
    (plot,) = lab.images(result, "25")
    assert plot.shape[1] == 1200 and plot.std() > 0


def test_shipped_workflow_runs(lab):
    api = lab.workflow("zimage_trajectory.json")
    api["6"]["inputs"]["steps"] = 3
    result = lab.run(api)
    assert len(lab.images(result, "8")) == 1
    assert len(lab.images(result, "9")) == 3
    (plot,) = lab.images(result, "10")
    assert plot.ndim == 3 and plot.shape[1] == 1200
    assert [r["step"] for r in result.outputs["6"]["trajectory"]] == [0, 1, 2]


def test_bad_inputs_get_clear_errors(lab):
    from zlab.api import ComfyError

    api = base_graph(channels_ok=False)
    api["20"] = trajectory(["1", 0], 1, 2, 3.0, "euler")
    api["21"] = save_latent("20", 0, "bad")
    with pytest.raises(ComfyError, match="4 channels"):
        lab.run(api)
    api = base_graph()
    api["20"] = trajectory(["1", 0], 1, 2, 3.0, "euler", every=0)
    api["21"] = save_latent("20", 0, "bad_every")
    with pytest.raises(ComfyError, match="every"):
        lab.run(api)
