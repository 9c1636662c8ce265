"""Ensemble sampler and image blend on a real ComfyUI: identity with one seed, the prediction average measured."""

import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import harness
from core import sampler as core_sampler

pytestmark = pytest.mark.integration

FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159  # latent_formats.Flux: model space = (vae - shift) * scale


def base_graph(prompt="a red fox in the snow", size=64, batch=1):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
    }


def ensemble(model, seeds, mode, steps=4, sampler_name="euler", start_step=0, end_step=10000):
    return {"class_type": "ZImageLabEnsembleSampler", "inputs": {
        "model": model, "positive": ["3", 0], "latent_image": ["5", 0], "seeds": seeds, "mode": mode, "steps": steps,
        "shift": 3.0, "sampler_name": sampler_name, "scheduler": "simple", "cfg": 1.0, "denoise": 1.0,
        "start_step": start_step, "end_step": end_step}}


def lab_sampler(seed, steps=4, sampler_name="euler"):
    return {"class_type": "ZImageLabSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "latent_image": ["5", 0], "seed": seed, "steps": steps, "shift": 3.0,
        "sampler_name": sampler_name, "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}


def save(node, slot, prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, slot], "filename_prefix": f"ens/{prefix}"}}


def probe(name):
    return {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": name}}


def latent(lab, result, node):
    (tensor,) = lab.latents(result, node)
    return tensor


def test_one_seed_equals_the_sampler_in_every_mode(lab):
    api = base_graph()
    api["8"] = lab_sampler(7, steps=4, sampler_name="res_multistep")
    api["9"] = save("8", 0, "sampler")
    for i, mode in enumerate(("prediction average", "latent average", "none")):
        nid = str(20 + 3 * i)
        api[nid] = ensemble(["1", 0], "7", mode, steps=4, sampler_name="res_multistep")
        api[str(21 + 3 * i)] = save(nid, 0, f"one_{i}")
        api[str(22 + 3 * i)] = save(nid, 1, f"one_seeds_{i}")
    result = lab.run(api)
    reference = latent(lab, result, "9")
    assert reference.shape == (1, 16, 8, 8) and reference.abs().max() > 0
    for i in range(3):
        assert torch.equal(latent(lab, result, str(21 + 3 * i)), reference)
        assert torch.equal(latent(lab, result, str(22 + 3 * i)), reference)


def recorded_sigmas(record, steps):
    """The sigmas the model was called at (from the probe), checked against the shifted simple schedule."""
    sigmas = [float(record[f"t.{k}"][0]) for k in range(steps)] + [0.0]
    assert np.allclose(sigmas, core_sampler.simple_schedule(steps, 3.0).numpy(), atol=1e-6)
    return sigmas


def euler_check(record, seeds, steps, averaged):
    """Replay every step from the probe's record: the sampler must feed the model x_k + dt * (x_k - used_x0) / sigma,
    where used_x0 is the mean of the seeds' predictions on averaged steps and each seed's own otherwise."""
    assert sum(1 for k in record if k.startswith("x.")) == steps
    sigmas = recorded_sigmas(record, steps)
    noise = torch.cat([torch.randn([1, 16, 8, 8], generator=torch.Generator().manual_seed(s)) for s in seeds])
    assert torch.equal(record["x.0"], noise)  # sigma 1: the first input is each seed's KSampler noise, as one batch
    spreads = []
    for k in range(steps):
        x, out, t = record[f"x.{k}"], record[f"out.{k}"], record[f"t.{k}"]
        assert x.shape[0] == len(seeds) and torch.all(t == t[0])
        x0 = x - out * sigmas[k]  # flow matching: the model's velocity prediction gives x0 = x - sigma * v
        spreads.append(float(x0.std(dim=0, correction=0).mean()))
        used = x0.mean(dim=0, keepdim=True).expand_as(x0) if k in averaged else x0
        x_next = x + (sigmas[k + 1] - sigmas[k]) * (x - used) / sigmas[k]
        if k + 1 < steps:
            assert torch.allclose(record[f"x.{k + 1}"], x_next, atol=1e-6, rtol=1e-5), f"step {k}"
    return x_next / FLUX_SCALE + FLUX_SHIFT, spreads, sigmas


def test_prediction_average_is_the_mean_of_the_seeds_predictions_at_every_step(lab):
    full, window = f"avg_{uuid.uuid4().hex[:8]}", f"win_{uuid.uuid4().hex[:8]}"
    seeds = [11, 22, 33]
    api = base_graph()
    api["20"], api["30"] = probe(full), probe(window)
    api["21"] = ensemble(["20", 0], "11, 22, 33", "prediction average", steps=4)
    api["22"], api["23"] = save("21", 0, "avg"), save("21", 1, "avg_seeds")
    api["31"] = ensemble(["30", 0], "11, 22, 33", "prediction average", steps=4, start_step=0, end_step=2)
    api["32"], api["33"] = save("31", 0, "win"), save("31", 1, "win_seeds")
    result = lab.run(api)
    record = load_file(str(lab.output / "probe" / f"{full}.safetensors"))
    final, spreads, sigmas = euler_check(record, seeds, 4, averaged={0, 1, 2, 3})
    per_seed = latent(lab, result, "23")
    assert per_seed.shape == (3, 16, 8, 8)
    assert torch.allclose(per_seed, final, atol=1e-5)
    assert min(spreads) > 1e-3  # the seeds really disagreed before averaging ...
    assert float((per_seed - per_seed[:1]).abs().max()) < 1e-5  # ... and end as one image
    assert torch.allclose(latent(lab, result, "22"), per_seed.mean(dim=0, keepdim=True), atol=1e-6)
    trace = result.outputs["21"]["evaluations"]
    assert [e["averaged"] for e in trace] == [True] * 4
    assert np.allclose([e["seed_spread"] for e in trace], spreads, rtol=1e-4)
    assert np.allclose([e["sigma"] for e in trace], sigmas[:-1])

    record = load_file(str(lab.output / "probe" / f"{window}.safetensors"))
    final, _, _ = euler_check(record, seeds, 4, averaged={0, 1})
    per_seed = latent(lab, result, "33")
    assert torch.allclose(per_seed, final, atol=1e-5)
    assert float((per_seed - per_seed[:1]).abs().max()) > 1e-2  # after the window the seeds go their own way
    assert [e["averaged"] for e in result.outputs["31"]["evaluations"]] == [True, True, False, False]


def test_latent_average_and_none(lab):
    api = base_graph()
    api["20"] = ensemble(["1", 0], "5, 6", "latent average", steps=3)
    api["21"], api["22"] = save("20", 0, "lat"), save("20", 1, "lat_seeds")
    api["30"] = ensemble(["1", 0], "5, 6", "none", steps=3)
    api["31"] = save("30", 0, "none")
    for seed in (5, 6):
        api[f"4{seed}"] = lab_sampler(seed, steps=3)
        api[f"5{seed}"] = save(f"4{seed}", 0, f"single_{seed}")
    result = lab.run(api)
    seeds_latent = latent(lab, result, "22")
    singles = torch.cat([latent(lab, result, "55"), latent(lab, result, "56")])
    assert seeds_latent.shape == (2, 16, 8, 8)
    # batch rows are each seed's own sample: equal to one-seed runs up to batched-matmul rounding
    assert torch.allclose(seeds_latent, singles, atol=1e-5), float((seeds_latent - singles).abs().max())
    assert not torch.allclose(singles[0], singles[1], atol=1e-2)
    assert torch.allclose(latent(lab, result, "21"), (seeds_latent[0:1] + seeds_latent[1:2]) / 2, atol=1e-6)
    assert torch.equal(latent(lab, result, "31"), seeds_latent)


def expect_failure(lab, api, *words):
    from zlab.api import ComfyError

    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_bad_inputs_get_clear_errors(lab):
    api = base_graph()
    api["20"] = ensemble(["1", 0], " ", "prediction average", steps=2)
    api["21"] = save("20", 0, "bad")
    expect_failure(lab, api, "seeds is empty")
    api["20"] = ensemble(["1", 0], "1, 2", "prediction average", steps=2, start_step=2, end_step=5)
    expect_failure(lab, api, "start_step 2 >= end_step 2")
    batch = base_graph(batch=2)
    batch["20"] = ensemble(["1", 0], "1, 2", "none", steps=2)
    batch["21"] = save("20", 0, "bad_batch")
    expect_failure(lab, batch, "latent_image has batch 2", "batch_size 1")


def test_shipped_workflow_runs_and_blends_the_seeds(lab):
    api = lab.workflow("zimage_ensemble.json")
    api["6"]["inputs"]["steps"] = 3
    result = lab.run(api)
    (ensemble_image,) = lab.images(result, "8")
    seed_images = lab.images(result, "10")
    (blend,) = lab.images(result, "12")
    assert ensemble_image.shape == (64, 64, 3) and len(seed_images) == 4
    for image in seed_images:  # prediction average over every step: one image for all seeds
        assert np.abs(image.astype(int) - ensemble_image.astype(int)).max() <= 1
    assert "4 seeds, prediction average, averaged 3 of 3" in result.outputs["6"]["text"][0]

    api["6"]["inputs"]["mode"] = "none"
    result = lab.run(api)
    seed_images = np.stack(lab.images(result, "10")).astype(float)
    (blend,) = lab.images(result, "12")
    assert np.abs(seed_images - seed_images[:1]).max() > 0  # distinct seeds
    assert np.abs(blend - seed_images.mean(axis=0)).max() <= 1.0  # pixel mean, up to 8-bit rounding


def test_one_seed_with_real_cfg_equals_the_sampler(lab):
    api = base_graph()
    api["4"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}}
    api["8"] = lab_sampler(9, steps=3)
    api["8"]["inputs"].update({"cfg": 2.5, "negative": ["4", 0]})
    api["9"] = save("8", 0, "cfg_sampler")
    api["20"] = ensemble(["1", 0], "9", "prediction average", steps=3)
    api["20"]["inputs"].update({"cfg": 2.5, "negative": ["4", 0]})
    api["21"] = save("20", 0, "cfg_one")
    api["30"] = ensemble(["1", 0], "9, 10", "prediction average", steps=3)
    api["30"]["inputs"].update({"cfg": 2.5, "negative": ["4", 0]})
    api["31"] = save("30", 1, "cfg_two")
    result = lab.run(api)
    assert torch.equal(latent(lab, result, "21"), latent(lab, result, "9"))
    two = latent(lab, result, "31")
    assert two.shape[0] == 2 and float((two[0] - two[1]).abs().max()) < 1e-5  # averaged after CFG: one image


def test_heun_evaluations_at_the_window_edges_follow_their_noise_level(lab):
    """The window is the noise-level interval (sigmas[end_step], sigmas[start_step]] (step_window's
    docstring): Heun's second evaluation of step i, made at sigmas[i + 1], counts with step i + 1."""
    api = base_graph(size=32)
    api["20"] = ensemble(["1", 0], "1, 2", "prediction average", steps=4, sampler_name="heun", start_step=1, end_step=3)
    api["21"] = save("20", 0, "heun_window")
    result = lab.run(api)
    trace = result.outputs["20"]["evaluations"]
    evaluated = [e["sigma"] for e in trace]
    # heun: two evaluations per step (at sigma_i, then sigma_{i+1}) except the last, which ends at 0
    assert len(evaluated) == 7
    steps_sigmas = [evaluated[0], evaluated[2], evaluated[4], evaluated[6]]
    assert np.allclose(evaluated[1], steps_sigmas[1]) and np.allclose(evaluated[5], steps_sigmas[3])
    high, low = steps_sigmas[1], steps_sigmas[3]
    expected = [low < s <= high for s in evaluated]
    assert [e["averaged"] for e in trace] == expected
    # the edges: step 0's correction (at sigma_1) is in, step 2's correction (at sigma_3) is out
    assert expected == [False, True, True, True, True, False, False]
