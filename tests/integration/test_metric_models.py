"""Learned-metric nodes on a real ComfyUI: tiny models in models/metrics, scores equal core's on the same pixels,
a missing model is a clear error."""

import numpy as np
import pytest
import torch

import harness
from core import metric_models as mm
from metric_fixtures import fid_by_hand, save_random_alexnet, save_random_inception
from sweep_fixtures import sweep_clip
from zlab.api import ComfyError

pytestmark = pytest.mark.integration
COLOURS = (0x336699, 0xCC8844, 0x22AA22)


@pytest.fixture(scope="module")
def metrics_dir(lab):
    root = lab.base / "models" / "metrics"
    sweep_clip(lab)  # the server keeps one model per folder: every test that uses clip/tiny-clip writes the same weights
    save_random_alexnet(str(root / "lpips"))
    return root


def _reference_folder(lab, name="fid_reference"):
    """Four random reference images of two sizes in ComfyUI's input folder."""
    from PIL import Image

    folder = lab.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    arrays = [rng.integers(0, 256, (36 + 4 * (n % 2), 44, 3), dtype=np.uint8) for n in range(4)]
    for n, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"ref{n}.png")
    (folder / "notes.txt").write_text("not an image")
    return arrays


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


def test_fid_node_equals_frechet_distance_by_hand(lab, metrics_dir):
    api = _images_graph()
    api["f"] = {"class_type": "ZImageLabFID", "inputs": {"images": ["b2", 0], "reference_folder": "fid_reference"}}
    references = _reference_folder(lab)
    with pytest.raises(ComfyError) as err:  # no weights yet: the folder and the file are named
        lab.run(api)
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value) and "inception" in str(err.value)
    path = save_random_inception(str(metrics_dir / "inception"))
    result = lab.run(api)
    got = result.outputs["f"]["fid"][0]
    fake = [np.clip(p.numpy() * 255, 0, 255).astype(np.uint8) for p in _pixels()]
    expected = fid_by_hand(path, fake, references)
    assert got == pytest.approx(expected, rel=1e-3) and got > 0
    assert "images" in result.outputs["f"]  # the table preview


@pytest.mark.parametrize("folder, images, words", [
    ("no_such_folder", "b2", ["reference_folder", "no_such_folder", "not a folder"]),
    ("", "b2", ["reference_folder is empty"]),
    ("fid_reference", "e0", ["two or more"]),
])
def test_fid_bad_inputs_are_clear(lab, metrics_dir, folder, images, words):
    _reference_folder(lab)
    api = _images_graph()
    api["f"] = {"class_type": "ZImageLabFID", "inputs": {"images": [images, 0], "reference_folder": folder}}
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_sweep_cells_are_scored_on_the_server(lab, metrics_dir):
    """zlab.server_score: the score nodes appended to a cell's prompt run on the server; the scores read back
    from its history equal core's on the same pixels with the prompt the cell was encoded with."""
    from zlab import server_score

    text = "a blue square on grey"
    api = _images_graph()
    api["c"] = {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}}
    api["p"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["c", 0]},
                "_meta": {"title": "Positive Prompt"}}
    api["s"] = {"class_type": "ZImageLabSaveImage", "inputs": {"images": ["b2", 0], "filename_prefix": "score/cell"}}
    models = server_score.score_models(lab.client.object_info(), ["clip_score"])
    assert models == {"clip_score": "clip/tiny-clip"}
    result = lab.run(server_score.add_scoring(api, models))
    got = server_score.read_scores(result.outputs)
    expected = mm.clip_score(mm.load_clip(str(metrics_dir / "clip" / "tiny-clip")), _pixels()[:1], text)
    assert got == {"clip_score": pytest.approx(float(expected[0]), rel=1e-5, abs=1e-5)}
    with pytest.raises(server_score.ServerScoreError, match="models/metrics/pickscore/ holds no model"):
        server_score.score_models(lab.client.object_info(), ["pickscore"])
