"""Refined-space steering on a real ComfyUI: identity, trace of what changes, the vector's meaning."""

import pytest
import torch

import comfy_inprocess as ci
import harness
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


def _graph():
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a harbour at dusk", "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "ZImageLabSteeringVectorBuild", "inputs": {
            "clip": ["2", 0], "prompts_a": "an oil painting of a boat\nan oil painting of a house",
            "prompts_b": "a photo of a boat\na photo of a house", "layer": -2, "template": TEMPLATE,
            "normalize": False, "space": "refined", "model": ["1", 0]}},
    }


def _sample_and_save(api, nid, model, tag):
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": ["3", 0], "latent_image": ["5", 0], "seed": 11, "steps": 3, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    api[f"s{nid}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"t/refined_{tag}"}}


def test_refined_workflow_runs(lab):
    api = wf.set_input(lab.workflow("zimage_refined_steering.json"), "Z-Image Sampler.steps=3")
    result = lab.run(api)
    build = wf.find_nodes(api, "ZImageLabSteeringVectorBuild")[0]
    assert "refined space, width 256" in result.outputs[build]["text"][0]
    (image,) = lab.images(result, wf.find_nodes(api, "ZImageLabSaveImage")[0])
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_alpha_zero_is_stock_and_alpha_changes_the_latent(lab):
    api = _graph()
    for nid, alpha in (("20", 0.0), ("21", 1.0)):
        api[nid] = {"class_type": "ZImageLabRefinedSteering", "inputs": {
            "model": ["1", 0], "vector": ["10", 0], "alpha": alpha, "scope": "caption tokens"}}
    _sample_and_save(api, "30", ["1", 0], "stock")
    _sample_and_save(api, "31", ["20", 0], "alpha0")
    _sample_and_save(api, "32", ["21", 0], "alpha1")
    result = lab.run(api)
    (stock,), (alpha0,), (alpha1,) = (lab.latents(result, f"s{n}") for n in ("30", "31", "32"))
    assert torch.equal(stock, alpha0)
    assert not torch.equal(stock, alpha1) and torch.isfinite(alpha1).all()


def test_embedding_space_vector_is_refused(lab):
    api = _graph()
    api["10"]["inputs"]["space"] = "embedding"
    del api["10"]["inputs"]["model"]
    api["20"] = {"class_type": "ZImageLabRefinedSteering", "inputs": {
        "model": ["1", 0], "vector": ["10", 0], "alpha": 1.0, "scope": "caption tokens"}}
    _sample_and_save(api, "30", ["20", 0], "refused")
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "embedding-space vector" in str(err.value) and "space 'refined'" in str(err.value)


def _first_layer_input(model, positive, seed=5):
    """The joint sequence [caption, image] entering main layer 0 during one sampling step."""
    seen = []
    dm = model.get_model_object("diffusion_model")
    handle = dm.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        ci.sample(model, positive, seed=seed, steps=1)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("scope", ["caption tokens", "caption and padding tokens"])
def test_only_caption_tokens_change(comfy, scope):
    rs = ci.pack_module("nodes.refined_steering")
    st = ci.pack_module("core.steering")
    model = ci.tiny_dit(comfy)
    patches_before = dict(model.object_patches)
    positive = ci.encode(ci.tiny_clip(comfy), "a red fox in the snow")
    caption_len = positive[0][0].shape[1]  # 14 tokens, padded to 32 in the DiT
    v = torch.randn(256, generator=torch.Generator().manual_seed(3))
    vector = st.SteeringVector(v, -2, TEMPLATE, "refined", ("a",), ("b",), False, float(v.norm()), "random")
    steered = rs.patch_refined_steering(model, vector, 0.75, scope)

    base = _first_layer_input(model, positive)
    moved = _first_layer_input(steered, positive)
    image_len = 32  # 64 px -> 8x8 latent -> 4x4 = 16 patches, padded to 32
    assert base.shape == (1, 32 + image_len, 256)
    assert torch.equal(moved[:, -image_len:], base[:, -image_len:])  # image tokens enter the main layers unchanged
    steered_rows = caption_len if scope == "caption tokens" else 32
    assert torch.allclose(moved[:, :steered_rows], base[:, :steered_rows] + 0.75 * v, atol=1e-5)
    assert torch.equal(moved[:, steered_rows:32], base[:, steered_rows:32])
    # the given model is untouched and still samples as before
    assert model.object_patches == patches_before
    assert len(model.get_model_object("diffusion_model.context_refiner")) == 2
    assert torch.equal(_first_layer_input(model, positive), base)


def test_refined_vector_is_the_difference_of_the_models_own_refined_captions(comfy):
    steering = ci.pack_module("nodes.steering")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    a, b = ["a marble statue of a horse", "a marble statue"], ["a horse", "a field", "a statue of a horse"]
    out = steering.SteeringVectorBuild.execute(clip, "\n".join(a), "\n".join(b), -2, TEMPLATE, False, "refined", model)
    vector = out.args[0]

    def pooled(prompts):
        means = []
        for p in prompts:
            positive = ci.encode(clip, p)
            length = positive[0][0].shape[1]
            caption = _first_layer_input(model, positive)[:, :length]  # the model's refined caption, as sampled
            means.append(caption[0, 3:length - 5].double().mean(0))
        return torch.stack(means).mean(0)

    expected = pooled(a) - pooled(b)
    assert vector.space == "refined" and vector.width == 256
    assert torch.allclose(vector.vector.double(), expected, atol=1e-5)
