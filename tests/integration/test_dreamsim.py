"""Z-Image DreamSim on a real ComfyUI: a full-size random OpenCLIP ViT-B/32 DreamSim in models/metrics/dreamsim gives
the numbers core gives on the saved images; a type whose files are absent is a clear error naming them."""


import numpy as np
import pytest
import torch

from core import dreamsim as ds
from zlab.api import ComfyError

pytestmark = pytest.mark.integration
pytest.importorskip("dreamsim", reason="the optional dreamsim package is not installed (pip install -r "
                                       "requirements-metrics.txt)")
COLOURS = (0x336699, 0xCC8844, 0x22AA22)
TYPE = "open_clip_vitb32"  # the cheapest full-size branch (ViT-B/32 at 224 px)


@pytest.fixture(scope="module")
def dreamsim_dir(lab):
    from dreamsim_fixtures import save_random_dreamsim

    folder = lab.base / "models" / "metrics" / "dreamsim"
    save_random_dreamsim(str(folder), TYPE, seed=5)
    return folder


def _graph(node_inputs: dict) -> dict:
    api = {}
    for n, colour in enumerate(COLOURS):
        api[f"e{n}"] = {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1, "color": colour}}
    api["b1"] = {"class_type": "ImageBatch", "inputs": {"image1": ["e0", 0], "image2": ["e1", 0]}}
    api["b2"] = {"class_type": "ImageBatch", "inputs": {"image1": ["b1", 0], "image2": ["e2", 0]}}
    api["s"] = {"class_type": "SaveImage", "inputs": {"images": ["b2", 0], "filename_prefix": "dreamsim/batch"}}
    api["d"] = {"class_type": "ZImageLabDreamSim", "inputs": {"images": ["b2", 0], **node_inputs}}
    return api


def test_dreamsim_node_equals_core_on_saved_images(lab, dreamsim_dir):
    api = _graph({"dreamsim_type": TYPE})
    api["p"] = {"class_type": "ZImageLabDreamSim",
                "inputs": {"images": ["b2", 0], "dreamsim_type": TYPE, "images_b": ["b2", 0]}}
    api["q"] = {"class_type": "ZImageLabDreamSim", "inputs": {"images": ["b1", 0], "dreamsim_type": TYPE,
                                                              "images_b": ["b1", 0]}}
    result = lab.run(api)
    saved = lab.images(result, "s")
    scorer = ds.load_dreamsim(str(dreamsim_dir), TYPE)
    expected = ds.dreamsim_pairwise(scorer, saved)
    info = result.outputs["d"]["dreamsim"][0]
    got = torch.tensor(info["matrix"])
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    assert info["mean_pairwise"] == pytest.approx(ds.dreamsim_diversity(scorer, saved), abs=1e-5)
    assert float(expected[0, 1]) > 1e-3
    paired = result.outputs["p"]["dreamsim"][0]["paired"]
    assert all(abs(d) < 1e-5 for d in paired)  # an image against itself
    text = result.outputs["d"]["text"][0].splitlines()
    assert float(text[0].split("to 1 ")[1].split(",")[0]) == pytest.approx(float(expected[0, 1]), rel=1e-3, abs=1e-4)
    assert "images" in result.outputs["d"]  # the table preview


def test_missing_files_and_bad_batches_are_clear(lab, dreamsim_dir):
    with pytest.raises(ComfyError) as err:
        lab.run(_graph({"dreamsim_type": "ensemble"}))
    for name in ("dino_vitb16_pretrain.pth", "ensemble_lora/adapter_config.json", "dreamsim"):
        assert name in str(err.value), str(err.value)
    api = _graph({"dreamsim_type": TYPE})
    api["d"]["inputs"]["images"] = ["e0", 0]
    with pytest.raises(ComfyError, match="two or more"):
        lab.run(api)
    api = _graph({"dreamsim_type": TYPE, "images_b": ["b1", 0]})
    with pytest.raises(ComfyError, match="images_b holds 2 images, images 3"):
        lab.run(api)


def test_seed_diversity_node_reports_the_dreamsim_nodes_mean(lab, dreamsim_dir):
    api = _graph({"dreamsim_type": TYPE})
    api["sd"] = {"class_type": "ZImageLabSeedDiversity", "inputs": {"images": ["b2", 0], "size": 64, "bins": 4,
                                                                    "perceptual": f"dreamsim {TYPE}"}}
    result = lab.run(api)
    info = result.outputs["sd"]["diversity"][0]["images"]
    scorer = ds.load_dreamsim(str(dreamsim_dir), TYPE)
    assert info[f"dreamsim_{TYPE}"] == pytest.approx(ds.dreamsim_diversity(scorer, lab.images(result, "s")), abs=1e-5)
    assert info[f"dreamsim_{TYPE}"] == pytest.approx(result.outputs["d"]["dreamsim"][0]["mean_pairwise"], abs=1e-7)
