"""Token attribution on a real ComfyUI: its images are the stock ones, batching is exact, absent words score 0."""

import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import harness

pytestmark = pytest.mark.integration

PROMPT = "a red cat on a sofa"
STEPS, SEED = 3, 4


def base_graph():
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def attribution(model, prompt=PROMPT, unit="word", extra_words="", batch_size=4):
    return {"class_type": "ZImageLabTokenAttribution", "inputs": {
        "model": model, "clip": ["2", 0], "vae": ["4", 0], "prompt": prompt, "latent_image": ["5", 0], "seed": SEED,
        "steps": STEPS, "shift": 3.0, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "unit": unit,
        "extra_words": extra_words, "batch_size": batch_size}}


def stock(api, nid, model, text):
    """CLIPTextEncode -> Z-Image Sampler -> SaveLatent for one prompt; returns the SaveLatent node id."""
    api[f"{nid}a"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}}
    api[f"{nid}b"] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": [f"{nid}a", 0], "latent_image": ["5", 0], "seed": SEED, "steps": STEPS, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    api[f"{nid}c"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{nid}b", 0], "filename_prefix": f"attr/{nid}"}}
    return f"{nid}c"


def test_word_attribution_matches_stock_sampling_and_batches_by_length(lab):
    probed, single = f"attr_{uuid.uuid4().hex[:8]}", f"single_{uuid.uuid4().hex[:8]}"
    api = base_graph()
    api["8"] = {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": probed}}
    api["9"] = {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": single}}
    api["10"] = attribution(["8", 0], extra_words="dragon, ca")
    api["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 4], "filename_prefix": "attr/latents"}}
    api["12"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 3], "filename_prefix": "attr/images"}}
    api["13"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "attr/overlays"}}
    full = stock(api, "20", ["1", 0], PROMPT)
    without_red = stock(api, "30", ["9", 0], "a cat on a sofa")
    result = lab.run(api)

    (latents,) = lab.latents(result, "11")
    words = ["a", "red", "cat", "on", "a", "sofa"]
    assert latents.shape == (1 + len(words) + 2, 16, 8, 8)
    # the full prompt's latent is the Z-Image Sampler's, bit for bit
    assert torch.equal(latents[0:1], lab.latents(result, full)[0])
    # leaving out "red" samples "a cat on a sofa": the stock result for that prompt (rows of a batch, so to rounding)
    (reference,) = lab.latents(result, without_red)
    assert torch.allclose(latents[1 + words.index("red")], reference[0], atol=1e-5)
    assert not torch.allclose(latents[2], latents[0], atol=1e-3)

    rows = {(r["label"], r["index"]): r for r in result.outputs["10"]["ranking"]}
    for word in ("dragon", "ca"):  # requested words the prompt lacks ("ca" is only part of "cat")
        row = rows[(word, -1)]
        assert row["present"] is False and row["score"] == 0.0 and row["peak"] == 0.0
        assert row["prompt"] == PROMPT
    for i in (7, 8):
        assert torch.equal(latents[i], latents[0])
    assert sorted(r["rank"] for r in rows.values()) == list(range(1, 9))

    images = np.stack(lab.images(result, "12")).astype(float) / 255.0
    assert images.shape == (9, 64, 64, 3)
    for (label, index), row in rows.items():
        position = 1 + (index if index >= 0 else len(words) + ["dragon", "ca"].index(label))
        measured = np.abs(images[position] - images[0]).mean()
        assert row["score"] == pytest.approx(measured, abs=2 / 255), label
    assert len(lab.images(result, "13")) == 8

    # batching: the full prompt alone, then the six equal-length shortened prompts in passes of 4 and 2
    record = load_file(str(lab.output / "probe" / f"{probed}.safetensors"))
    contexts = [record[f"context.{k}"] for k in range(3 * STEPS)]
    assert [c.shape[0] for c in contexts[::STEPS]] == [1, 4, 2]
    full_len = contexts[0].shape[1]
    assert all(c.shape[1] == full_len - 1 for c in contexts[STEPS:])
    # each batch row carries its own prompt: "red" left out is row 1 of the first pass, as encoded for the stock run
    stock_context = load_file(str(lab.output / "probe" / f"{single}.safetensors"))["context.0"]
    assert torch.equal(contexts[STEPS][1], stock_context[0])
    batch = contexts[STEPS]
    assert all(not torch.equal(batch[i], batch[j]) for i in range(4) for j in range(i + 1, 4))
    # the DiT reads a caption length of L per row, not the batch's total
    assert [int(record[f"num_tokens.{k}"][0]) for k in (0, STEPS, 2 * STEPS)] == [full_len, full_len - 1, full_len - 1]


def test_token_attribution_leaves_out_each_token(lab):
    api = base_graph()
    api["10"] = attribution(["1", 0], prompt="a red cat", unit="token")
    api["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 4], "filename_prefix": "attr/tokens"}}
    api["20"] = attribution(["1", 0], prompt="a red cat", unit="word")
    api["21"] = {"class_type": "SaveLatent", "inputs": {"samples": ["20", 4], "filename_prefix": "attr/words"}}
    result = lab.run(api)
    ranking = result.outputs["10"]["ranking"]
    assert sorted((r["index"], r["label"]) for r in ranking) == [(0, "a"), (1, " red"), (2, " cat")]
    (tokens,) = lab.latents(result, "11")
    (words,) = lab.latents(result, "21")
    assert tokens.shape == words.shape == (4, 16, 8, 8)
    # leaving out " red" or " cat" gives the same token sequence as leaving out the word ("a cat", "a red") ...
    for i in (0, 2, 3):
        assert torch.equal(tokens[i], words[i])
    # ... but without "a" the word prompt "red cat" re-tokenizes "red" without its leading space; the token prompt keeps " red"
    assert not torch.equal(tokens[1], words[1])


def test_shipped_workflow_runs(lab):
    api = lab.workflow("zimage_attribution.json")
    api["6"]["inputs"]["steps"] = 2
    result = lab.run(api)
    prompt = api["6"]["inputs"]["prompt"]
    n_words = len(prompt.split())
    assert len(lab.images(result, "7")) == n_words + 1
    assert len(lab.images(result, "8")) == n_words + 2
    dragon = [r for r in result.outputs["6"]["ranking"] if r["label"] == "dragon"]
    assert dragon and dragon[0]["score"] == 0.0 and dragon[0]["present"] is False


def test_bad_inputs_get_clear_errors(lab):
    from zlab.api import ComfyError

    api = base_graph()
    api["10"] = attribution(["1", 0], prompt="   ")
    api["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 4], "filename_prefix": "attr/bad"}}
    with pytest.raises(ComfyError, match="prompt is empty"):
        lab.run(api)
    api["10"] = attribution(["1", 0], prompt=", ; !")
    with pytest.raises(ComfyError, match="no words to leave out"):
        lab.run(api)
