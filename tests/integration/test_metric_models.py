"""Learned-metric nodes on a real ComfyUI: tiny models in models/metrics, scores equal core's on the same pixels,
a missing model is a clear error."""

import numpy as np
import pytest
import torch

from core import metric_models as mm
from metric_fixtures import save_random_alexnet, save_tiny_clip
from zlab.api import ComfyError

pytestmark = pytest.mark.integration
COLOURS = (0x336699, 0xCC8844, 0x22AA22)


@pytest.fixture(scope="module")
def metrics_dir(lab):
    root = lab.base / "models" / "metrics"
    save_tiny_clip(str(root / "clip" / "tiny-clip"), seed=3)
    save_random_alexnet(str(root / "lpips"))
    return root


def _images_graph():
    api = {}
    for n, colour in enumerate(COLOURS):
        api[f"e{n}"] = {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1, "color": colour}}
    api["b1"] = {"class_type": "ImageBatch", "inputs": {"image1": ["e0", 0], "image2": ["e1", 0]}}
    api["b2"] = {"class_type": "ImageBatch", "inputs": {"image1": ["b1", 0], "image2": ["e2", 0]}}
    return api


def _pixels():
    """What EmptyImage makes: each channel (byte) / 255."""
    out = []
    for c in COLOURS:
        rgb = [((c >> s) & 0xFF) / 0xFF for s in (16, 8, 0)]
        out.append(torch.tensor(rgb, dtype=torch.float32).expand(40, 48, 3))
    return torch.stack(out)


def test_clip_score_node_equals_core(lab, metrics_dir):
    api = _images_graph()
    api["s"] = {"class_type": "ZImageLabImageScore", "inputs": {"images": ["b2", 0], "prompt": "a blue square",
                                                                "model": "clip/tiny-clip"}}
    result = lab.run(api)
    scorer = mm.load_clip(str(metrics_dir / "clip" / "tiny-clip"))
    expected = mm.clip_score(scorer, _pixels(), "a blue square")
    text = result.outputs["s"]["text"][0].splitlines()
    got = [float(line.split("clip_score ")[1]) for line in text]
    np.testing.assert_allclose(got, expected.tolist(), rtol=1e-3, atol=1e-3)
    assert "images" in result.outputs["s"]  # the table preview


def test_lpips_node_equals_core(lab, metrics_dir):
    api = _images_graph()
    api["l"] = {"class_type": "ZImageLabLPIPS", "inputs": {"images": ["b2", 0], "net": "alex"}}
    api["p"] = {"class_type": "ZImageLabLPIPS", "inputs": {"images": ["b1", 0], "net": "alex", "images_b": ["b1", 0]}}
    result = lab.run(api)
    scorer = mm.load_lpips(str(metrics_dir / "lpips"))
    matrix = mm.lpips_pairwise(scorer, _pixels())
    rows = result.outputs["l"]["text"][0].splitlines()
    got = float(rows[0].split("to 1 ")[1].split(",")[0])
    assert got == pytest.approx(float(matrix[0, 1]), rel=1e-3, abs=1e-4) and got > 0
    paired = result.outputs["p"]["text"][0].splitlines()
    assert all(float(line.split("lpips ")[1]) == 0.0 for line in paired)  # an image against itself


def test_missing_model_is_a_clear_error(lab, metrics_dir):
    api = _images_graph()
    api["l"] = {"class_type": "ZImageLabLPIPS", "inputs": {"images": ["b2", 0], "net": "vgg"}}
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "vgg16-397923af.pth" in str(err.value) and "lpips" in str(err.value)
