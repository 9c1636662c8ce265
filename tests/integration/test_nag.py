"""Z-Image NAG on a real ComfyUI: identities, an attention trace against an independent reference, errors."""

import numpy as np
import pytest
import torch

import comfy_inprocess as ci
import harness
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

POSITIVE = "a red fox in the snow"  # 14 tokens: caption padded to 32
NEGATIVE = ("blurry, low quality, watermark, text, signature, oversaturated colours, cartoon, drawing, sketch, "
            "painting, deformed paws, extra legs, extra tails, cropped, out of frame, jpeg artifacts, noise, grain, "
            "bad anatomy, ugly, duplicate animals, washed out, overexposed sky")  # over 64 tokens: padded to 96


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


def _graph():
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _nag(api, nid, scale=5.0, tau=2.5, alpha=0.25, end_sigma=0.0, model=("1", 0)):
    api[nid] = {"class_type": "ZImageLabNAG", "inputs": {"model": list(model), "negative": ["4", 0], "scale": scale,
                                                          "tau": tau, "alpha": alpha, "end_sigma": end_sigma}}


def _sample_and_save(api, nid, model, tag, steps=2):
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": ["3", 0], "latent_image": ["5", 0], "seed": 8, "steps": steps, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    api[f"s{nid}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"t/nag_{tag}"}}


def test_nag_workflow_changes_the_image_and_scale_one_does_not(lab):
    api = wf.set_input(lab.workflow("zimage_nag.json"), "Z-Image Sampler.steps=3")
    nag_id = wf.find_nodes(api, "ZImageLabNAG")[0]
    guided = lab.run(api)
    off = lab.run(wf.set_input(api, "Z-Image NAG.scale=1"))
    stock_api = wf.set_input(api, 'Z-Image Sampler.model=["1", 0]')
    stock = lab.run(stock_api)
    image_id = wf.find_nodes(api, "ZImageLabSaveImage")[0]
    (g,), (o,), (s,) = lab.images(guided, image_id), lab.images(off, image_id), lab.images(stock, image_id)
    assert g.shape == (64, 64, 3) and g.std() > 0
    assert np.array_equal(o, s)
    assert not np.array_equal(g, s)
    assert "scale 5, tau 2.5, alpha 0.25" in guided.outputs[nag_id]["text"][0]


def test_identities_are_stock_output_bit_for_bit(lab):
    api = _graph()
    _sample_and_save(api, "30", ["1", 0], "stock")
    _nag(api, "21", scale=1.0)                      # disabled
    _nag(api, "22", alpha=0.0)                      # full negative path runs, blend keeps the positive
    _nag(api, "23", end_sigma=2.0)                  # patched but never active (sigma <= 1)
    _nag(api, "24")                                 # guiding
    for i, nid in enumerate(("21", "22", "23", "24")):
        _sample_and_save(api, f"3{i + 1}", [nid, 0], f"id{nid}")
    result = lab.run(api)
    (stock,) = lab.latents(result, "s30")
    for i in range(3):
        assert torch.equal(lab.latents(result, f"s3{i + 1}")[0], stock), ("scale 1", "alpha 0", "end sigma")[i]
    (guided,) = lab.latents(result, "s34")
    assert not torch.equal(guided, stock) and torch.isfinite(guided).all()


def test_end_sigma_limits_guidance_to_the_early_steps(lab):
    api = _graph()
    _nag(api, "21", end_sigma=0.0)
    _nag(api, "22", end_sigma=0.9)  # only the first of 3 steps (sigma 1.0) is guided
    _sample_and_save(api, "31", ["21", 0], "all", steps=3)
    _sample_and_save(api, "32", ["22", 0], "first", steps=3)
    _sample_and_save(api, "33", ["1", 0], "stock3", steps=3)
    result = lab.run(api)
    (every,), (first,), (stock,) = (lab.latents(result, f"s3{i}") for i in (1, 2, 3))
    assert not torch.equal(first, stock) and not torch.equal(first, every)


def test_chained_nag_is_refused(lab):
    api = _graph()
    _nag(api, "21")
    _nag(api, "22", model=("21", 0))
    _sample_and_save(api, "30", ["22", 0], "chained")
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "model already has Z-Image NAG" in str(err.value)


def _reference_nag(z_pos, z_neg, phi, tau, alpha):
    """Normalized Attention Guidance written out here from the paper, in float64."""
    p, n = z_pos.double(), z_neg.double()
    g = p + (phi - 1) * (p - n)
    ratio = g.abs().sum(-1, keepdim=True) / p.abs().sum(-1, keepdim=True)
    g = torch.where(ratio > tau, g * tau / ratio, g)
    return alpha * g + (1 - alpha) * p


def _layer0(model, positive, image_tokens=None, **kw):
    """(input of main layer 0, inputs of its attention output projection) during one sampling step.

    image_tokens, if given, replaces the image part (the last positions) of layer 0's input, so a
    stock run with another caption sees exactly the same image tokens.
    """
    inputs, outputs = [], []
    dm = model.get_model_object("diffusion_model")

    def before_layer(module, args):
        x = args[0]
        if image_tokens is not None:
            x = torch.cat((x[:, :x.shape[1] - image_tokens.shape[1]], image_tokens.to(x)), dim=1)
        inputs.append(x.detach().clone())
        return (x, *args[1:])

    hooks = [dm.layers[0].register_forward_pre_hook(before_layer),
             dm.layers[0].attention.out.register_forward_pre_hook(lambda m, args: outputs.append(args[0].detach().clone()))]
    try:
        ci.sample(model, positive, seed=4, steps=1, **kw)
    finally:
        for h in hooks:
            h.remove()
    return inputs[0], outputs


@pytest.mark.parametrize("size, image_len, patches", [((64, 64), 32, 16), ((64, 128), 32, 32), ((144, 144), 96, 81)])
def test_layer0_guides_the_last_image_tokens_exactly_as_the_reference(comfy, size, image_len, patches):
    """NAG at layer 0 against a reference built from two stock runs of the same layer.

    64x64 px has 16 image patches + 16 pad tokens, 64x128 px 32 patches and no padding, 144x144 px
    81 patches + 15 pad tokens. The negative (padded to 96) is longer than the positive (32).
    The pad tokens are not part of the image: they keep the positive pass's output, bit for bit.
    """
    nag = ci.pack_module("nodes.nag")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    positive, negative = ci.encode(clip, POSITIVE), ci.encode(clip, NEGATIVE)
    assert positive[0][0].shape[1] <= 32 and 64 < negative[0][0].shape[1] <= 96

    # stock, positive prompt: [32 caption, image]
    x_pos, (z_pos,) = _layer0(model, positive, size=size)
    assert z_pos.shape[1] == 32 + image_len
    # stock, the negative as the prompt, fed the positive run's image tokens: [96 caption, image]
    _, (z_neg,) = _layer0(model, negative, image_tokens=x_pos[:, -image_len:], size=size)
    assert z_neg.shape[1] == 96 + image_len
    _, calls = _layer0(nag.patch_nag(model, negative, 4.0, 2.0, 0.5, 0.0), positive, size=size)
    (z,) = [c for c in calls if c.shape[1] == 32 + image_len]         # the positive sequence
    (z_neg_caption,) = [c for c in calls if c.shape[1] == 96]          # the negative caption going on

    image, image_pos = z[:, 32:32 + patches], z_pos[:, 32:32 + patches]
    expected = _reference_nag(image_pos, z_neg[:, 96:96 + patches], 4.0, 2.0, 0.5)
    assert torch.equal(z[:, :32], z_pos[:, :32])                       # caption tokens are not guided
    assert torch.equal(z[:, 32 + patches:], z_pos[:, 32 + patches:])   # nor the image's pad tokens
    assert torch.allclose(image.double(), expected, atol=1e-5)
    assert (image - image_pos).abs().max() > 1e-2
    # the negative path attends exactly like the stock layer with the negative caption (positions included)
    assert torch.allclose(z_neg_caption, z_neg[:, :96], atol=1e-5)


def test_only_positive_rows_are_guided_when_cfg_batches_an_unconditional(comfy):
    nag = ci.pack_module("nodes.nag")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    positive, negative = ci.encode(clip, POSITIVE), ci.encode(clip, NEGATIVE)
    uncond = ci.encode(clip, "a fox")  # same length as the positive, so ComfyUI batches cond and uncond
    uncond = [[torch.nn.functional.pad(uncond[0][0], (0, 0, 0, positive[0][0].shape[1] - uncond[0][0].shape[1])),
               {k: v for k, v in uncond[0][1].items() if k != "attention_mask"}]]
    _, (stock,) = _layer0(model, positive, cfg=2.0, negative=uncond)
    _, calls = _layer0(nag.patch_nag(model, negative, 4.0, 2.0, 0.5, 0.0), positive, cfg=2.0, negative=uncond)
    (z,) = [c for c in calls if c.shape[1] == 64]
    assert z.shape[0] == 2
    differs = [not torch.equal(z[i], stock[i]) for i in range(2)]
    assert sorted(differs) == [False, True]  # one row guided (cond), the other exactly stock (uncond)


def test_the_given_model_is_untouched(comfy):
    nag = ci.pack_module("nodes.nag")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    positive, negative = ci.encode(clip, POSITIVE), ci.encode(clip, NEGATIVE)
    before = ci.sample(model, positive, seed=2, steps=1)
    patches, options = dict(model.object_patches), repr(model.model_options)
    guided_model = nag.patch_nag(model, negative, 5.0, 2.5, 0.25, 0.0)
    guided = ci.sample(guided_model, positive, seed=2, steps=1)
    assert not torch.equal(before, guided)
    assert model.object_patches == patches and repr(model.model_options) == options
    assert len(guided_model.object_patches) == 30
    after = ci.sample(model, positive, seed=2, steps=1)
    assert torch.equal(before, after)
    dm = model.get_model_object("diffusion_model")
    assert all(type(layer).__name__ == "JointTransformerBlock" for layer in dm.layers)


def test_bad_negatives_get_clear_errors(comfy):
    nag = ci.pack_module("nodes.nag")
    model = ci.tiny_dit(comfy)
    with pytest.raises(ValueError, match="negative has no tokens"):
        nag.patch_nag(model, [[torch.zeros(1, 0, 128), {}]], 5.0, 2.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="negative has width 64 but the model's caption embedder expects 128"):
        nag.patch_nag(model, [[torch.zeros(1, 9, 64), {}]], 5.0, 2.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="scale is 0.5"):
        nag.patch_nag(model, [[torch.zeros(1, 9, 128), {}]], 0.5, 2.5, 0.25, 0.0)
    assert model.object_patches == {}


def _nag_state(nag, dm, block, x, batch_rows=(True,), scale=5.0, alpha=0.0):
    """A NAGState for one block call: a random negative caption of 32 tokens placed as NextDiT would place it."""
    neg = torch.randn(x.shape[0], 32, x.shape[-1], generator=torch.Generator().manual_seed(1)).to(x.dtype)
    _, freqs, _ = ci.block_inputs(dm, block, x.dtype)  # [32 caption, 32 image]: the same positions
    return nag.NAGState(neg, freqs, 32, 16, torch.tensor(batch_rows), scale, 2.5, alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nag_block_runs_the_running_comfyuis_attention(comfy, dtype):
    """Against the real block of the running ComfyUI (its q/k norm + RoPE path: module or fused rms_rope):
    NAG's positive-branch q / k are the stock block's, and alpha 0 (full negative path, positive kept) gives the
    stock block's output bit for bit. The block's k_norm has its own epsilon, so the two stock paths differ."""
    nag = ci.pack_module("nodes.nag")
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    block = ci.dit_block(dm, dtype=dtype)
    x, freqs, adaln = ci.block_inputs(dm, block, dtype)
    stock_calls, nag_calls = [], []
    stock = block(x, None, freqs, adaln, transformer_options={ci.ATTENTION_OVERRIDE: ci.capture_attention(stock_calls)})
    patched = nag.nag_copy(block)
    options = {ci.ATTENTION_OVERRIDE: ci.capture_attention(nag_calls), nag.NAG_KEY: _nag_state(nag, dm, block, x)}
    out = patched(x, None, freqs, adaln, transformer_options=options)
    (q, k, v), = stock_calls
    assert len(nag_calls) == 2  # the positive sequence, then [negative caption, image]
    assert all(torch.equal(a, b) for a, b in zip(nag_calls[0], (q, k, v)))
    assert torch.equal(nag_calls[1][1][:, :, 32:], k[:, :, 32:])  # image keys at the same positions: unchanged
    assert torch.equal(out, stock)
    options[nag.NAG_KEY] = _nag_state(nag, dm, block, x, alpha=0.5)
    assert not torch.equal(patched(x, None, freqs, adaln, transformer_options=options), stock)


def test_multigpu_deep_clone_gets_nag_blocks_on_its_own_modules(comfy):
    """ComfyUI's multi-GPU deep clone (comfy/multigpu.py, 0.30.2) reloads the model and copies object patches; the
    NAG copies must then wrap the clone's own layers, not the first GPU's (CPU here: the same mechanism)."""
    nag = ci.pack_module("nodes.nag")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    patched = nag.patch_nag(model, ci.encode(clip, NEGATIVE), 5.0, 2.5, 0.25, 0.0)
    if not hasattr(patched, "deepclone_multigpu"):
        pytest.skip("this ComfyUI has no multi-GPU deep clone (0.18.1)")
    clone = patched.deepclone_multigpu()
    first = patched.get_model_object("diffusion_model")
    for i in (0, 29):
        block = clone.get_model_object(f"diffusion_model.layers.{i}")
        own = clone.model.diffusion_model.layers[i]
        assert type(block).__name__.startswith("ZImageLabNAG") and block is not own
        assert block.attention is own.attention and block.attention is not first.layers[i].attention
    positive = ci.encode(clip, POSITIVE)
    assert torch.equal(ci.sample(clone, positive, seed=2, steps=1), ci.sample(patched, positive, seed=2, steps=1))
