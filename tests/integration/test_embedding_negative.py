"""Embedding-space negatives on a real ComfyUI: strength 0 identity, orthogonality, errors."""

import json

import pytest
import torch

import comfy_inprocess as ci
import harness
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

POSITIVE = "a portrait of an old fisherman with a grey beard"
NEGATIVE = "blurry, low quality, watermark, text, oversaturated, cartoon, extra fingers, deformed hands, jpeg artifacts"


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


def _graph(negative_text=NEGATIVE):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": negative_text, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _negative(api, nid, mode, strength, scope="all tokens"):
    api[nid] = {"class_type": "ZImageLabEmbeddingNegative", "inputs": {
        "positive": ["3", 0], "negative": ["4", 0], "mode": mode, "strength": strength, "scope": scope}}


def _sample_and_save(api, nid, positive, tag):
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": ["1", 0], "positive": positive, "latent_image": ["5", 0], "seed": 21, "steps": 2, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    api[f"s{nid}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"t/neg_{tag}"}}


def test_embedding_negative_workflow_runs_and_reports(lab):
    api = wf.set_input(lab.workflow("zimage_embedding_negative.json"), "Z-Image Sampler.steps=3")
    result = lab.run(api)
    node = wf.find_nodes(api, "ZImageLabEmbeddingNegative")[0]
    report = result.outputs[node]["text"][0]
    assert report.startswith("orthogonal x 1 on all tokens")
    after = float(report.rsplit("-> ", 1)[1])
    assert after < 1e-5
    (image,) = lab.images(result, wf.find_nodes(api, "ZImageLabSaveImage")[0])
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_strength_zero_is_stock_for_every_mode_and_strength_changes_the_latent(lab):
    api = _graph()
    _sample_and_save(api, "30", ["3", 0], "stock")
    for i, mode in enumerate(("subtract", "orthogonal", "contrastive")):
        _negative(api, f"2{i}", mode, 0.0)
        _sample_and_save(api, f"3{i + 1}", [f"2{i}", 0], f"zero_{mode}")
    _negative(api, "29", "orthogonal", 1.0)
    _sample_and_save(api, "39", ["29", 0], "orthogonal1")
    result = lab.run(api)
    (stock,) = lab.latents(result, "s30")
    for i in range(3):
        assert torch.equal(lab.latents(result, f"s3{i + 1}")[0], stock)
    (moved,) = lab.latents(result, "s39")
    assert not torch.equal(moved, stock) and torch.isfinite(moved).all()


def _direction(negative):
    """The negative's pooled direction, computed here: mean of tokens 3..L-5."""
    tokens = negative[0][0]
    return tokens[0, 3:-5].double().mean(0)


@pytest.mark.parametrize("scope", ["all tokens", "content tokens"])
def test_orthogonal_strength_one_leaves_every_positive_token_orthogonal(comfy, scope):
    node = ci.pack_module("nodes.embedding_negative").EmbeddingNegative
    clip = ci.tiny_clip(comfy)
    positive, negative = ci.encode(clip, POSITIVE), ci.encode(clip, NEGATIVE)
    assert positive[0][0].shape[1] != negative[0][0].shape[1]  # different token counts
    out, info = node.execute(positive, negative, "orthogonal", 1.0, scope).args
    tokens, x, n = out[0][0].double(), positive[0][0].double(), _direction(negative)
    cos = (tokens @ n) / (tokens.norm(dim=-1) * n.norm())
    rows = slice(None) if scope == "all tokens" else slice(3, x.shape[1] - 5)
    assert cos[0, rows].abs().max() < 1e-6
    before = (x @ n) / (x.norm(dim=-1) * n.norm())
    assert before[0, rows].abs().min() > 1e-3  # there was something to remove
    if scope == "content tokens":
        assert torch.equal(out[0][0][:, :3], positive[0][0][:, :3])
        assert torch.equal(out[0][0][:, -5:], positive[0][0][:, -5:])
    # the rest of each token is kept: x - (x.n/n.n) n
    expected = x - (x @ n)[..., None] / (n @ n) * n
    assert torch.allclose(tokens[0, rows], expected[0, rows], atol=1e-4)
    assert json.loads(info)["max_abs_cos_after"] < 1e-6
    assert out[0][1]["zimage_lab"]["embedding_negative"]["mode"] == "orthogonal"
    assert "zimage_lab" not in positive[0][1]


def test_strength_zero_returns_the_positive_tensors(comfy):
    node = ci.pack_module("nodes.embedding_negative").EmbeddingNegative
    clip = ci.tiny_clip(comfy)
    positive, negative = ci.encode(clip, POSITIVE), ci.encode(clip, "ugly")
    for mode in ("subtract", "orthogonal", "contrastive"):
        out = node.execute(positive, negative, mode, 0.0, "all tokens").args[0]
        assert torch.equal(out[0][0], positive[0][0])


def test_a_negative_with_no_tokens_is_a_clear_error(lab):
    api = _graph(negative_text="")
    _negative(api, "20", "orthogonal", 1.0)
    _sample_and_save(api, "30", ["20", 0], "empty")
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "negative: the conditioning has no content tokens" in str(err.value)
