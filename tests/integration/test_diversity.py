"""The seed-diversity workflows and node on a real ComfyUI: they run, and the node's numbers are the
yardstick's numbers for the images the graph saved."""

import json

import pytest
import torch

import harness
from core import diversity
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

WORKFLOWS = ("zimage_seed_caption_noise.json", "zimage_seed_initial_noise.json", "zimage_seed_early_steps.json")


def _as_image(arrays):
    return torch.cat([torch.from_numpy(a.copy()).float().div(255.0)[None, ..., :3] for a in arrays])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_seed_workflow_runs_and_reports_both_batches(lab, name):
    api = lab.workflow(name)
    for nid in wf.find_nodes(api, "ZImageLabSampler"):
        api[nid]["inputs"]["steps"] = 3
    api = wf.set_input(api, "Image Size.batch_size=3")
    result = lab.run(api)
    saves = {api[n]["_meta"]["title"]: n for n in wf.find_nodes(api, "ZImageLabSaveImage")}
    stock = lab.images(result, saves["Save Image (stock)"])
    varied = lab.images(result, next(n for t, n in saves.items() if t.startswith("Save Image (") and "stock" not in t))
    assert len(stock) == len(varied) == 3 and stock[0].shape == (64, 64, 3)
    (grid,) = lab.images(result, saves["Save Seed Grid"])
    assert grid.ndim == 3 and grid.std() > 0
    node = wf.find_nodes(api, "ZImageLabSeedDiversity")[0]
    info = result.outputs[node]["diversity"][0]
    for key, images in (("baseline", stock), ("images", varied)):
        expected = diversity.image_diversity(_as_image(images), size=256, bins=16)
        # the node measures the decoded floats, the files hold them rounded to 8 bits
        assert info[key]["ssim"] == pytest.approx(expected["ssim"], abs=5e-3)
        assert info[key]["histogram"] == pytest.approx(expected["histogram"], abs=0.03)
        assert info[key]["latent_rmse"] > 0
    assert info["images"] != info["baseline"]


def test_diversity_node_numbers_and_errors(lab):
    api = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x336699}},
        "img2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x993366}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["img", 0], "image2": ["img2", 0]}},
        "d": {"class_type": "ZImageLabSeedDiversity", "inputs": {"images": ["batch", 0], "size": 32, "bins": 4,
                                                                 "perceptual": "none"}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["d", 1]}},
    }
    result = lab.run(api)
    info = result.outputs["d"]["diversity"][0]["images"]
    # (0x33, 0x66, 0x99) vs (0x99, 0x33, 0x66) in 4 bins of 64 levels: R 0 vs 2, G 1 vs 0, B 2 vs 1: every channel moves
    assert info["histogram"] == pytest.approx(1.0)
    rgb_a, rgb_b = [0x33 / 255, 0x66 / 255, 0x99 / 255], [0x99 / 255, 0x33 / 255, 0x66 / 255]
    mse = sum((a - b) ** 2 for a, b in zip(rgb_a, rgb_b)) / 3
    assert info["pixel_rmse"] == pytest.approx(mse ** 0.5, abs=1e-6)
    api["d"]["inputs"]["images"] = ["img", 0]
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "at least 2 images" in str(err.value)
    json.dumps(info)


COLOURS = (0x336699, 0xCC8844, 0x22AA22)
PROMPT = "a red cube on a table"


@pytest.fixture(scope="module")
def fidelity_models(lab):
    from metric_fixtures import save_tiny_clip, save_tiny_siglip

    root = lab.base / "models" / "metrics"
    save_tiny_clip(str(root / "clip" / "tiny-clip-fid"), seed=5)
    save_tiny_siglip(str(root / "siglip" / "tiny-siglip-fid"), seed=6)
    return root


def _colour_batch(api):
    for n, colour in enumerate(COLOURS):
        api[f"e{n}"] = {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 40, "batch_size": 1, "color": colour}}
    api["b1"] = {"class_type": "ImageBatch", "inputs": {"image1": ["e0", 0], "image2": ["e1", 0]}}
    api["b2"] = {"class_type": "ImageBatch", "inputs": {"image1": ["b1", 0], "image2": ["e2", 0]}}
    return ["b2", 0]


def _hand_fidelity(folder, kind):
    """Mean image-prompt score computed directly with transformers (not through core.metric_models)."""
    import numpy as np
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    arrays = [np.full((40, 40, 3), [(c >> s) & 0xFF for s in (16, 8, 0)], dtype=np.uint8) for c in COLOURS]
    if kind == "clip":
        text = processor(text=[PROMPT], return_tensors="pt", padding=True)
    else:
        text = processor(text=[PROMPT], return_tensors="pt", padding="max_length",
                         max_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=processor(images=arrays, return_tensors="pt")["pixel_values"])
        txt = model.get_text_features(input_ids=text["input_ids"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    cos = [float(torch.dot(i / i.norm(), txt[0] / txt[0].norm())) for i in img]
    return sum(100 * max(c, 0.0) for c in cos) / 3 if kind == "clip" else sum(cos) / 3


@pytest.mark.parametrize("model,key", [("clip/tiny-clip-fid", "fidelity_clip_score"),
                                       ("siglip/tiny-siglip-fid", "fidelity_siglip")])
def test_fidelity_through_the_shared_loaders_equals_a_hand_computed_score(lab, fidelity_models, model, key):
    api = {}
    images = _colour_batch(api)
    api["d"] = {"class_type": "ZImageLabSeedDiversity", "inputs": {
        "images": images, "baseline": images, "size": 40, "bins": 4, "perceptual": "none",
        "fidelity_model": model, "prompt": PROMPT}}
    info = lab.run(api).outputs["d"]["diversity"][0]
    expected = _hand_fidelity(str(fidelity_models / model), model.split("/")[0])
    assert info["images"][key] == pytest.approx(expected, abs=2e-4)
    assert info["baseline"][key] == info["images"][key]
    api["d"]["inputs"]["prompt"] = " "
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "prompt is empty" in str(err.value)
