"""Caption token manipulations on a real ComfyUI server, read back from the conditioning it produced."""

import json
import uuid

import pytest
import torch
from safetensors.torch import load_file

import harness
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

PROMPT = "a red fox sitting in fresh snow at golden hour, detailed fur"
PREFIX, SUFFIX = 3, 5  # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n


def graph(prompt=PROMPT):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "stock_cond": {"class_type": "ZImageLabTestSaveConditioning", "inputs": {"conditioning": ["3", 0],
                                                                                  "filename_prefix": "stock"}},
    }


def manipulate(api, nid, mode, seed=0, repeats=2, positions="0-3", save=True):
    api[nid] = {"class_type": "ZImageLabTokenManipulate", "inputs": {"conditioning": ["3", 0], "mode": mode,
                "seed": seed, "repeats": repeats, "positions": positions}}
    if save:
        api[f"{nid}_cond"] = {"class_type": "ZImageLabTestSaveConditioning",
                              "inputs": {"conditioning": [nid, 0], "filename_prefix": nid}}
    return [nid, 0]


def sample(api, nid, positive):
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": ["1", 0], "positive": positive, "latent_image": ["5", 0], "seed": 3, "steps": 4, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    api[f"{nid}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0],
                                                                 "filename_prefix": f"tokens/{nid}_{uuid.uuid4().hex[:6]}"}}


def conditioning(lab, result, nid):
    out = result.outputs[nid]
    tensors = load_file(str(lab.output / out["files"][0]))
    return tensors["0.tokens"], tensors.get("0.attention_mask"), json.loads(out["meta"][0])[0]


def rows(t):
    return sorted(tuple(r.tolist()) for r in t)


def test_none_is_the_identity(lab):
    api = graph()
    sample(api, "stock", ["3", 0])
    sample(api, "none", manipulate(api, "10", "none"))
    result = lab.run(api)
    stock, stock_mask, _ = conditioning(lab, result, "stock_cond")
    same, same_mask, _ = conditioning(lab, result, "10_cond")
    assert torch.equal(stock, same)
    assert (stock_mask is None and same_mask is None) or torch.equal(stock_mask, same_mask)
    assert torch.equal(lab.latents(result, "none_save")[0], lab.latents(result, "stock_save")[0])


def test_shuffle_holds_the_same_token_vectors_in_another_order(lab):
    api = graph()
    sample(api, "stock", ["3", 0])
    sample(api, "shuffled", manipulate(api, "10", "shuffle", seed=1))
    manipulate(api, "11", "shuffle", seed=1)
    manipulate(api, "12", "shuffle", seed=2)
    result = lab.run(api)
    stock, _, _ = conditioning(lab, result, "stock_cond")
    a, mask, meta = conditioning(lab, result, "10_cond")
    again, _, _ = conditioning(lab, result, "11_cond")
    other, _, _ = conditioning(lab, result, "12_cond")
    n = stock.shape[1] - PREFIX - SUFFIX
    assert n >= 10
    assert a.shape == stock.shape
    assert mask is None or mask.shape[-1] == stock.shape[1]
    content, stock_content = a[0, PREFIX:-SUFFIX], stock[0, PREFIX:-SUFFIX]
    assert rows(content) == rows(stock_content)            # exactly the same vectors ...
    assert not torch.equal(content, stock_content)         # ... in another order
    assert torch.equal(a[0, :PREFIX], stock[0, :PREFIX]) and torch.equal(a[0, -SUFFIX:], stock[0, -SUFFIX:])
    assert torch.equal(a, again) and not torch.equal(a, other)  # seeded
    assert meta["content_span"] == [PREFIX, PREFIX + n]
    assert sorted(meta["token_manipulation"]["order"]) == list(range(n))
    for k, src in enumerate(meta["token_manipulation"]["order"]):
        assert torch.equal(content[k], stock_content[src])
    assert not torch.equal(lab.latents(result, "shuffled_save")[0], lab.latents(result, "stock_save")[0])


def test_duplicate_changes_the_length_and_the_mask_follows(lab):
    api = graph()
    sample(api, "dup", manipulate(api, "10", "duplicate", repeats=3))
    result = lab.run(api)
    stock, _, _ = conditioning(lab, result, "stock_cond")
    dup, mask, meta = conditioning(lab, result, "10_cond")
    content = stock[:, PREFIX:-SUFFIX]
    n = content.shape[1]
    expected = torch.cat([stock[:, :PREFIX], content, content, content, stock[:, -SUFFIX:]], dim=1)
    assert torch.equal(dup, expected)
    assert mask is not None and mask.shape == (1, PREFIX + 3 * n + SUFFIX) and int(mask.sum()) == mask.numel()
    assert meta["content_span"] == [PREFIX, PREFIX + 3 * n]
    latent = lab.latents(result, "dup_save")[0]
    assert torch.isfinite(latent).all()


@pytest.mark.parametrize("mode, positions", [("keep", "0-2, 5"), ("drop", "0-2, 5"), ("front_load", "6, 4"),
                                             ("back_load", "0-1"), ("reverse", "")])
def test_cutting_and_moving_tokens(lab, mode, positions):
    api = graph()
    manipulate(api, "10", mode, positions=positions)
    result = lab.run(api)
    stock, _, _ = conditioning(lab, result, "stock_cond")
    got, mask, _ = conditioning(lab, result, "10_cond")
    c = stock[0, PREFIX:-SUFFIX]
    n = c.shape[0]
    if mode == "keep":
        content = c[[0, 1, 2, 5]]
    elif mode == "drop":
        content = c[[i for i in range(n) if i not in (0, 1, 2, 5)]]
    elif mode == "front_load":
        content = torch.cat([c[[6, 4]], c[[i for i in range(n) if i not in (4, 6)]]])
    elif mode == "back_load":
        content = torch.cat([c[2:], c[:2]])
    else:
        content = c.flip(0)
    expected = torch.cat([stock[0, :PREFIX], content, stock[0, -SUFFIX:]])
    assert torch.equal(got[0], expected)
    assert mask is None or mask.shape[-1] == got.shape[1]


def test_out_of_range_positions_get_a_clear_error(lab):
    api = graph()
    manipulate(api, "10", "keep", positions="0-99")
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    assert "failed in node 10 (ZImageLabTokenManipulate)" in str(err.value)
    assert "positions: position" in str(err.value) and "is out of range" in str(err.value)


def test_token_shuffle_workflow(lab):
    from zlab import workflow as wf

    api = lab.workflow("zimage_token_shuffle.json")
    result = lab.run(api)
    shuffled, stock = lab.images(result, "9")[0], lab.images(result, "12")[0]
    assert shuffled.shape == stock.shape == (64, 64, 3)
    assert (shuffled != stock).any()
    assert "shuffle with seed 0" in result.outputs["6"]["text"][0]
    result = lab.run(wf.set_input(api, "Token Manipulate.mode=none"))
    assert (lab.images(result, "9")[0] == lab.images(result, "12")[0]).all()
