"""Steering vectors on a real ComfyUI: build, save, load, apply, identities and errors."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy_inprocess as ci
import harness
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", autouse=True)
def empty_vector_folder_afterwards(lab):
    """Leave models/steering_vectors as the session found it (the loader's file list is part of /object_info)."""
    import shutil

    folder = lab.base / "models" / "steering_vectors"
    before = set(folder.iterdir())
    yield
    for path in set(folder.iterdir()) - before:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


def _vector_file(lab, name):
    path = lab.base / "models" / "steering_vectors" / name
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("steering_vector"), f.metadata()


def _loaders():
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse on a cliff", "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _sampler(model, positive, seed=3, steps=3):
    return {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": positive, "latent_image": ["5", 0], "seed": seed, "steps": steps, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}


def _build(prompts_a, prompts_b, layer=-2, space="embedding", normalize=False, model=None):
    inputs = {"clip": ["2", 0], "prompts_a": prompts_a, "prompts_b": prompts_b, "layer": layer, "template": TEMPLATE,
              "normalize": normalize, "space": space}
    if model:
        inputs["model"] = model
    return {"class_type": "ZImageLabSteeringVectorBuild", "inputs": inputs}


def _expect_failure(lab, api, *words):
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.fixture(scope="module")
def built(lab):
    """The shipped steering workflow, run once: (result, api, saved vector name)."""
    api = wf.set_input(lab.workflow("zimage_steering.json"), "Z-Image Sampler.steps=3")
    result = lab.run(api)
    save_id = wf.find_nodes(api, "ZImageLabSteeringVectorSave")[0]
    return result, api, result.outputs[save_id]["vector_name"][0]


def _pooled_directly(clip, prompts, layer=-2):
    """(mean over prompts of the mean of tokens 3..L-5 in float64, largest |hidden state|), from ComfyUI's own CLIP
    at this layer."""
    encoder = clip.clone()
    encoder.clip_layer(layer)
    means, largest = [], 0.0
    for p in prompts:
        cond = ci.encode(encoder, p)[0][0]
        means.append(cond[0, 3:-5].double().mean(0))
        largest = max(largest, float(cond[0, 3:-5].abs().max()))
    return torch.stack(means).mean(0), largest


def test_steering_workflow_saves_the_vector_with_its_metadata(lab, built):
    result, api, name = built
    assert name.startswith("zimage_lab/oil_painting_") and name.endswith(".safetensors")
    vector, meta = _vector_file(lab, name)
    build = api[wf.find_nodes(api, "ZImageLabSteeringVectorBuild")[0]]["inputs"]
    assert meta["layer"] == "-2" and meta["space"] == "embedding" and meta["template"] == TEMPLATE
    assert json.loads(meta["prompts_a"]) == build["prompts_a"].splitlines()
    assert (meta["count_a"], meta["count_b"], meta["width"]) == ("3", "3", "128")
    assert float(meta["norm"]) == pytest.approx(float(vector.double().norm()), rel=1e-12)
    (image,) = lab.images(result, wf.find_nodes(api, "ZImageLabSaveImage")[0])
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_built_vector_equals_mean_a_minus_mean_b_computed_directly(lab, built, comfy):
    _, api, name = built
    build = api[wf.find_nodes(api, "ZImageLabSteeringVectorBuild")[0]]["inputs"]
    clip = ci.tiny_clip(comfy)
    (mean_a, largest_a), (mean_b, largest_b) = (_pooled_directly(clip, build[k].splitlines())
                                                for k in ("prompts_a", "prompts_b"))
    expected = mean_a - mean_b
    vector, _ = _vector_file(lab, name)
    assert vector.dtype == torch.float32 and vector.shape == (128,)
    # the node pools in float32 (core.steering.pool_content): each mean may be off by a few float32 ulps of the
    # largest hidden state (measured up to 1.0e-6 with hidden states up to 8.7), so the bound is 16 such ulps
    tol = 16 * torch.finfo(torch.float32).eps * max(largest_a, largest_b)
    assert (vector.double() - expected).abs().max() <= tol, ((vector.double() - expected).abs().max(), tol)
    assert expected.norm() > 0.1


def test_vector_at_another_layer_is_read_from_that_layer(lab, comfy):
    a, b = "a watercolour of a boat\na watercolour of a tree", "a boat\na tree"
    api = {**_loaders(), "10": _build(a, b, layer=-7, normalize=True),
           "11": {"class_type": "ZImageLabSteeringVectorSave", "inputs": {"vector": ["10", 0], "filename_prefix": "t/layer7"}}}
    result = lab.run(api)
    vector, meta = _vector_file(lab, result.outputs["11"]["vector_name"][0])
    clip = ci.tiny_clip(comfy)
    raw = _pooled_directly(clip, a.splitlines(), -7)[0] - _pooled_directly(clip, b.splitlines(), -7)[0]
    assert meta["layer"] == "-7" and meta["normalized"] == "true"
    assert float(meta["raw_norm"]) == pytest.approx(float(raw.norm()), rel=1e-5)
    assert torch.allclose(vector.double(), raw / raw.norm(), atol=1e-6)
    at_default = _pooled_directly(clip, a.splitlines())[0] - _pooled_directly(clip, b.splitlines())[0]
    assert not torch.allclose(vector.double(), at_default / at_default.norm(), atol=1e-3)


def test_loaded_vector_round_trips_bit_for_bit_and_steers_identically(lab, built):
    result, api, name = built
    load_api = wf.set_input(lab.workflow("zimage_steering_load.json"), "Z-Image Sampler.steps=3")
    load_id = wf.find_nodes(load_api, "ZImageLabSteeringVectorLoad")[0]
    load_api[load_id]["inputs"]["vector_name"] = name
    load_api["90"] = {"class_type": "ZImageLabSteeringVectorSave",
                      "inputs": {"vector": [load_id, 0], "filename_prefix": "t/resaved"}}
    loaded = lab.run(load_api)
    original, meta = _vector_file(lab, name)
    again, meta_again = _vector_file(lab, loaded.outputs["90"]["vector_name"][0])
    assert torch.equal(original, again) and meta == meta_again
    assert "layer -2" in loaded.outputs[load_id]["text"][0]
    # same prompt, seed and vector: the loaded vector gives the built workflow's image, pixel for pixel
    (built_image,) = lab.images(result, wf.find_nodes(api, "ZImageLabSaveImage")[0])
    (loaded_image,) = lab.images(loaded, wf.find_nodes(load_api, "ZImageLabSaveImage")[0])
    assert np.array_equal(built_image, loaded_image)


def test_alpha_zero_is_stock_and_alpha_changes_the_latent(lab):
    api = {**_loaders(), "10": _build("an oil painting of a cat", "a photo of a cat")}
    for nid, alpha in (("20", 0.0), ("21", 2.0)):
        api[nid] = {"class_type": "ZImageLabSteeringApply", "inputs": {
            "conditioning": ["3", 0], "vector": ["10", 0], "alpha": alpha, "scope": "content tokens"}}
    api["30"], api["31"], api["32"] = _sampler(["1", 0], ["3", 0]), _sampler(["1", 0], ["20", 0]), _sampler(["1", 0], ["21", 0])
    for nid in ("30", "31", "32"):
        api[f"4{nid[1]}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"t/steer_{nid}"}}
    result = lab.run(api)
    (stock,), (alpha0,), (alpha2,) = (lab.latents(result, n) for n in ("40", "41", "42"))
    assert torch.equal(stock, alpha0)
    assert not torch.equal(stock, alpha2) and torch.isfinite(alpha2).all()


def test_vectors_compose_by_adding_on_content_tokens(comfy):
    steering = ci.pack_module("nodes.steering")
    st = ci.pack_module("core.steering")
    positive = ci.encode(ci.tiny_clip(comfy), "a lighthouse on a cliff at dawn")
    gen = torch.Generator().manual_seed(0)
    v1, v2 = (st.SteeringVector(torch.randn(128, generator=gen), -2, TEMPLATE, "embedding", ("a",), ("b",), False, 1.0,
                                name) for name in ("one", "two"))
    out = steering.SteeringApply.execute(positive, v1, 0.5, "content tokens", vector_2=v2, alpha_2=-1.5)
    (tokens, extras), = out.args[0]
    x = positive[0][0]
    assert torch.equal(tokens[:, :3], x[:, :3]) and torch.equal(tokens[:, -5:], x[:, -5:])
    assert torch.allclose(tokens[:, 3:-5], x[:, 3:-5] + 0.5 * v1.vector - 1.5 * v2.vector, atol=1e-5)
    assert [(r["name"], r["alpha"]) for r in extras["zimage_lab"]["steering"]] == [("one", 0.5), ("two", -1.5)]
    assert extras["attention_mask"] is positive[0][1]["attention_mask"]
    unchanged = steering.SteeringApply.execute(positive, v1, 0.0, "all tokens", vector_2=v2, alpha_2=0.0).args[0]
    assert torch.equal(unchanged[0][0], x)
    assert positive[0][1].get("zimage_lab") is None  # the input conditioning is not mutated


def test_bad_inputs_get_clear_errors(lab):
    empty = {**_loaders(), "10": _build("  \n ", "a photo of a cat"),
             "11": {"class_type": "ZImageLabSteeringVectorSave", "inputs": {"vector": ["10", 0], "filename_prefix": "t/x"}}}
    _expect_failure(lab, empty, "prompts_a is empty", "one prompt per line")
    refined_model = {**_loaders(), "10": _build("an oil painting", "a photo", space="refined"),
                     "11": {"class_type": "ZImageLabSteeringVectorSave", "inputs": {"vector": ["10", 0], "filename_prefix": "t/x"}}}
    _expect_failure(lab, refined_model, "space is 'refined' but no model is connected")


def test_wrong_width_and_non_vector_files_get_clear_errors(lab):
    from core import steering as st

    folder = lab.base / "models" / "steering_vectors" / "bad"
    folder.mkdir(parents=True, exist_ok=True)
    st.save_vector(st.SteeringVector(torch.ones(7), -2, TEMPLATE, "embedding", ("a",), ("b",), False, 7 ** 0.5),
                   str(folder / "width7.safetensors"))
    (folder / "pickled.safetensors").write_bytes(b"\x80\x04\x95\x10\x00 not a safetensors header")
    from safetensors.torch import save_file

    save_file({"lora_down.weight": torch.zeros(2, 2)}, str(folder / "a_lora.safetensors"))
    (folder / "old_vector.pt").write_bytes(b"\x80\x04")
    listed = lab.client.object_info()["ZImageLabSteeringVectorLoad"]["input"]["required"]["vector_name"][1]["options"]
    assert "bad/width7.safetensors" in listed and "bad/old_vector.pt" not in listed

    def apply_file(name):
        return {**_loaders(), "10": {"class_type": "ZImageLabSteeringVectorLoad", "inputs": {"vector_name": name}},
                "20": {"class_type": "ZImageLabSteeringApply", "inputs": {
                    "conditioning": ["3", 0], "vector": ["10", 0], "alpha": 1.0, "scope": "content tokens"}},
                "30": _sampler(["1", 0], ["20", 0], steps=1),
                "40": {"class_type": "SaveLatent", "inputs": {"samples": ["30", 0], "filename_prefix": "t/bad"}}}

    _expect_failure(lab, apply_file("bad/width7.safetensors"), "has width 7", "the conditioning has width 128")
    _expect_failure(lab, apply_file("bad/pickled.safetensors"), "pickled.safetensors is not a readable safetensors file")
    _expect_failure(lab, apply_file("bad/a_lora.safetensors"), "not a Z-Image Lab steering vector")


def test_vector_from_another_layer_warns_when_applied(lab):
    api = {**_loaders(), "10": _build("an oil painting of a cat", "a photo of a cat", layer=-4),
           "20": {"class_type": "ZImageLabSteeringApply", "inputs": {
               "conditioning": ["3", 0], "vector": ["10", 0], "alpha": 1.0, "scope": "content tokens"}},
           "30": _sampler(["1", 0], ["20", 0], steps=1),
           "40": {"class_type": "SaveLatent", "inputs": {"samples": ["30", 0], "filename_prefix": "t/warn"}}}
    result = lab.run(api)
    text = "\n".join(result.outputs["20"]["text"])
    assert "made at layer -4" in text and "encoded at layer -2" in text


def test_layer_numbering_is_the_encoders_at_every_layer(lab):
    """A vector built at layer -1 (and -3) is the difference of the Qwen3 Encoder's conditionings at that
    layer, pooled over the prompt's tokens: one numbering (-1 = after the final norm) for the pack.
    Applying it to encoder conditioning of the same layer gives no warning; of another layer, one."""
    a, b = "an oil painting of a cat", "a photo of a cat"
    for layer in (-1, -3):
        api = {**_loaders(), "10": _build(a, b, layer=layer),
               "11": {"class_type": "ZImageLabSteeringVectorSave", "inputs": {"vector": ["10", 0],
                                                                              "filename_prefix": f"t/numbering{-layer}"}}}
        for nid, text in (("20", a), ("21", b)):
            api[nid] = {"class_type": "ZImageLabQwen3Encode", "inputs": {
                "clip": ["2", 0], "text": text, "layer": layer, "layer_blend": "", "long_prompt_mode": "none",
                "token_budget": 512}}
            api[nid + "s"] = {"class_type": "ZImageLabTestSaveConditioning",
                              "inputs": {"conditioning": [nid, 0], "filename_prefix": f"numbering_{nid}"}}
        api["30"] = {"class_type": "ZImageLabSteeringApply", "inputs": {
            "conditioning": ["20", 0], "vector": ["10", 0], "alpha": 1.0, "scope": "content tokens"}}
        api["31"] = {"class_type": "ZImageLabSteeringApply", "inputs": {
            "conditioning": ["3", 0], "vector": ["10", 0], "alpha": 1.0, "scope": "content tokens"}}
        api["32"] = {"class_type": "ZImageLabTestSaveConditioning",
                     "inputs": {"conditioning": ["30", 0], "filename_prefix": "numbering_30"}}
        api["33"] = {"class_type": "ZImageLabTestSaveConditioning",
                     "inputs": {"conditioning": ["31", 0], "filename_prefix": "numbering_31"}}
        result = lab.run(api)
        pooled = []
        for nid in ("20s", "21s"):
            tokens = load_file(str(lab.output / result.outputs[nid]["files"][0]))["0.tokens"]
            start, end = json.loads(result.outputs[nid]["meta"][0])[0]["content_span"]
            pooled.append(tokens[0, start:end].double().mean(0))
        vector, meta = _vector_file(lab, result.outputs["11"]["vector_name"][0])
        assert meta["layer"] == str(layer) and meta["layer_numbering"] == "hidden_states"
        assert torch.allclose(vector.double(), pooled[0] - pooled[1], atol=1e-5, rtol=1e-5), layer
        assert not any("made at layer" in t for t in result.outputs["30"]["text"])  # same layer: no warning
        assert any(f"made at layer {layer}" in t and "encoded at layer -2" in t for t in result.outputs["31"]["text"])
