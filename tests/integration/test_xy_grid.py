"""Z-Image XY Grid on a real ComfyUI: every cell equals a separate Z-Image Sampler run, bit for bit."""

import numpy as np
import pytest
import torch

import harness
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration


def _graph():
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, watermark", "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}},
    }


TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
BASE = {"seed": 11, "steps": 3, "shift": 3.0, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}


def _xy(api, x_axis, x_values, y_axis, y_values, **extra):
    api["10"] = {"class_type": "ZImageLabXYGrid", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "latent_image": ["5", 0], "vae": ["6", 0], "x_axis": x_axis,
        "x_values": x_values, "y_axis": y_axis, "y_values": y_values, **BASE, **extra}}
    api["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 2], "filename_prefix": "xy/cells"}}
    api["12"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "xy/grid"}}


def _separate(api, n, settings, model=("1", 0), positive=("3", 0)):
    nid = f"s{n}"
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": list(model), "positive": list(positive), "latent_image": ["5", 0], **{**BASE, **settings}}}
    if settings.get("cfg", 1.0) != 1.0:
        api[nid]["inputs"]["negative"] = ["4", 0]
    api[f"l{n}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"xy/sep{n}"}}


def _cells_equal_separate_runs(lab, api, cells):
    result = lab.run(api)
    (grid_latents,) = lab.latents(result, "11")
    assert grid_latents.shape == (len(cells), 16, 8, 8)
    for n in range(len(cells)):
        (separate,) = lab.latents(result, f"l{n}")
        assert torch.equal(grid_latents[n:n + 1], separate), (n, cells[n])
    assert len({grid_latents[n].sum().item() for n in range(len(cells))}) == len(cells)  # every cell differs
    return result


def test_seed_shift_steps_cells_equal_sampler_runs(lab):
    api = _graph()
    _xy(api, "shift", "2, 4.5", "seed", "5, 6")
    cells = [{"seed": s, "shift": x} for s in (5, 6) for x in (2.0, 4.5)]
    for n, c in enumerate(cells):
        _separate(api, n, c)
    result = _cells_equal_separate_runs(lab, api, cells)
    (grid,) = lab.images(result, "12")
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 2 * 64  # two rows, two columns, labels


def test_steps_sampler_cfg_cells_equal_sampler_runs(lab):
    api = _graph()
    _xy(api, "sampler_name", "euler, dpmpp_2m", "steps", "2-4:2", negative=["4", 0])
    cells = [{"steps": s, "sampler_name": x} for s in (2, 4) for x in ("euler", "dpmpp_2m")]
    for n, c in enumerate(cells):
        _separate(api, n, c)
    _cells_equal_separate_runs(lab, api, cells)
    api = _graph()
    _xy(api, "cfg", "1, 2.5", "none", "", negative=["4", 0])
    cells = [{"cfg": 1.0}, {"cfg": 2.5}]
    for n, c in enumerate(cells):
        _separate(api, n, c)
    _cells_equal_separate_runs(lab, api, cells)


def test_nag_scale_cells_equal_nag_node_then_sampler(lab):
    api = _graph()
    _xy(api, "nag_scale", "1, 4", "none", "", nag_negative=["4", 0])
    for n, scale in enumerate((1.0, 4.0)):
        api[f"nag{n}"] = {"class_type": "ZImageLabNAG", "inputs": {"model": ["1", 0], "negative": ["4", 0], "scale": scale,
                                                                   "tau": 2.5, "alpha": 0.25, "end_sigma": 0.0}}
        _separate(api, n, {}, model=(f"nag{n}", 0))
    _cells_equal_separate_runs(lab, api, [{"nag_scale": 1.0}, {"nag_scale": 4.0}])


def test_shipped_workflow_runs(lab):
    api = lab.workflow("zimage_xy_grid.json")
    xy = wf.find_nodes(api, "ZImageLabXYGrid")[0]
    api[xy]["inputs"]["steps"] = 2
    result = lab.run(api)
    save = wf.find_nodes(api, "ZImageLabSaveImage")[0]
    (grid,) = lab.images(result, save)
    assert grid.ndim == 3 and grid.std() > 0


@pytest.mark.parametrize("change, words", [
    ({"x_values": "2, abc"}, ["x values for shift", "'abc'"]),
    ({"x_axis": "sampler_name", "x_values": "euler, nope"}, ["nope", "sampler_name choices"]),
    ({"x_axis": "nag_scale", "x_values": "2"}, ["nag_negative"]),
    ({"x_axis": "seed", "y_axis": "seed"}, ["both sweep seed"]),
    ({"x_axis": "cfg", "x_values": "1, 3"}, ["connect negative"]),
])
def test_bad_axes_get_clear_errors(lab, change, words):
    api = _graph()
    _xy(api, "shift", "2, 3", "seed", "1, 2")
    api["10"]["inputs"].update(change)
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_steering_alpha_cells_equal_apply_steering_then_sampler(lab):
    api = _graph()
    api["7"] = {"class_type": "ZImageLabSteeringVectorBuild", "inputs": {
        "clip": ["2", 0], "prompts_a": "an oil painting of a fox", "prompts_b": "a photo of a fox", "layer": -2,
        "template": TEMPLATE, "normalize": False, "space": "embedding"}}
    _xy(api, "steering_alpha", "0, 2.5", "seed", "3, 4", steering_vector=["7", 0])
    cells = [{"seed": s, "steering_alpha": a} for s in (3, 4) for a in (0.0, 2.5)]
    for n, c in enumerate(cells):
        api[f"st{n}"] = {"class_type": "ZImageLabSteeringApply", "inputs": {
            "conditioning": ["3", 0], "vector": ["7", 0], "alpha": c["steering_alpha"], "scope": "content tokens"}}
        _separate(api, n, {"seed": c["seed"]}, positive=(f"st{n}", 0))
    _cells_equal_separate_runs(lab, api, cells)


def test_batch_seeds_batches_seed_cells_and_stays_close(lab):
    """batch_seeds on: cells differing only in seed sample as one batch, each with its own seed's noise. Not bit for
    bit (another batch size rounds the matmuls differently), so the cells are checked close to separate runs;
    an ancestral sampler is never batched, so its cells stay bit-identical."""
    api = _graph()
    _xy(api, "seed", "5, 6, 7", "shift", "2, 4", batch_seeds=True)
    cells = [{"shift": y, "seed": x} for y in (2.0, 4.0) for x in (5, 6, 7)]
    for n, c in enumerate(cells):
        _separate(api, n, c)
    result = lab.run(api)
    assert result.outputs["10"]["xy_batches"] == [[0, 1, 2], [3, 4, 5]]
    (grid_latents,) = lab.latents(result, "11")
    for n in range(len(cells)):
        (separate,) = lab.latents(result, f"l{n}")
        torch.testing.assert_close(grid_latents[n:n + 1], separate, rtol=0, atol=1e-3)
        others = [lab.latents(result, f"l{m}")[0] for m in range(len(cells)) if m != n]
        assert all((grid_latents[n:n + 1] - o).abs().max() > 1e-2 for o in others)  # its own seed's noise
    api = _graph()
    _xy(api, "seed", "5, 6", "none", "", batch_seeds=True, sampler_name="euler_ancestral")
    for n, seed in enumerate((5, 6)):
        _separate(api, n, {"seed": seed, "sampler_name": "euler_ancestral"})
    result = _cells_equal_separate_runs(lab, api, [{"seed": 5}, {"seed": 6}])
    assert result.outputs["10"]["xy_batches"] == []


def test_layer_cells_equal_qwen3_encoder_then_sampler(lab):
    api = _graph()
    text = api["3"]["inputs"]["text"]
    _xy(api, "layer", "-2, -4", "seed", "3, 4", clip=["2", 0], text=text)
    cells = [{"seed": s, "layer": layer} for s in (3, 4) for layer in (-2, -4)]
    for n, c in enumerate(cells):
        api[f"enc{n}"] = {"class_type": "ZImageLabQwen3Encode", "inputs": {
            "clip": ["2", 0], "text": text, "layer": c["layer"], "layer_blend": "", "long_prompt_mode": "none",
            "token_budget": 512}}
        _separate(api, n, {"seed": c["seed"]}, positive=(f"enc{n}", 0))
    _cells_equal_separate_runs(lab, api, cells)
    api = _graph()
    _xy(api, "layer", "-2, -3", "none", "")
    with pytest.raises(ComfyError, match="layer axis needs clip"):
        lab.run(api)
