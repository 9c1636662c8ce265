"""Z-Image Qwen3 Encoder on a real ComfyUI: identity with CLIPTextEncode, layers, blends, cache, long prompts."""

import time

import pytest
import torch

import harness
from prompt_graphs import (TEMPLATE, cache_stats, encoder, expect_error, formatter, post, qwen_tokenizer,
                           read_probe, tiny_transformers_qwen3, with_probes)

pytestmark = pytest.mark.integration

PROMPT = "a red fox sitting in fresh snow at golden hour"


def test_default_output_equals_clip_text_encode_exactly(lab):
    graph = with_probes({
        "stock": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["clip", 0]}},
        "plain": encoder(PROMPT),
        "fmt": formatter(PROMPT),
        "formatted": encoder(["fmt", 0]),
        "unet": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }, "identity")
    for name in ("stock", "plain"):
        graph[f"sample_{name}"] = {"class_type": "ZImageLabSampler", "inputs": {
            "model": ["unet", 0], "positive": [name, 0], "latent_image": ["latent", 0], "seed": 3, "steps": 4,
            "shift": 3.0, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
        graph[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"sample_{name}", 0],
                                                                         "filename_prefix": f"identity/{name}"}}
    result = lab.run(graph)
    stock, stock_mask, _ = read_probe(lab, result, "stock")
    for key in ("plain", "formatted"):
        ours, mask, record = read_probe(lab, result, key)
        assert torch.equal(ours, stock) and torch.equal(mask, stock_mask)
        assert record["layer"] == -2 and record["text"] == TEMPLATE.format(PROMPT)
        assert record["content_span"] == [3, stock.shape[1] - 5]   # the default template's 3 + 5 tokens
    assert read_probe(lab, result, "plain")[2]["template"] == "default"
    assert read_probe(lab, result, "formatted")[2]["template"] == "formatted"
    assert stock.shape == (1, len(token_ids(TEMPLATE.format(PROMPT))), 128) and stock.abs().max() > 0
    (a,), (b,) = lab.latents(result, "save_stock"), lab.latents(result, "save_plain")
    assert torch.equal(a, b)


def test_layers_match_stock_clip_layer_and_transformers_hidden_states(lab):
    nodes = {f"l{-k}": encoder(PROMPT, layer=k) for k in (-1, -2, -5, -36)}
    nodes["setlayer"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["clip", 0], "stop_at_clip_layer": -5}}
    nodes["stock5"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["setlayer", 0]}}
    result = lab.run(with_probes(nodes, "layers"))
    got = {k: read_probe(lab, result, f"l{-k}")[0] for k in (-1, -2, -5, -36)}
    assert torch.equal(got[-5], read_probe(lab, result, "stock5")[0])   # ComfyUI's own clip_layer(-5)
    for k in (-1, -5, -36):
        assert not torch.allclose(got[k], got[-2], atol=1e-3)
    ids = token_ids(TEMPLATE.format(PROMPT))
    with torch.no_grad():
        hs = tiny_transformers_qwen3(lab)(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert len(hs) == 37
    for k in (-1, -2, -5, -36):
        assert torch.allclose(got[k], hs[k], atol=2e-4, rtol=1e-4), (k, (got[k] - hs[k]).abs().max())


def token_ids(text):
    """Token ids of text through transformers' Qwen tokenizer (these prompts have no ComfyUI front-end quirks)."""
    return qwen_tokenizer(harness.find_comfyui())(text)["input_ids"]


def test_blend_is_the_normalised_weighted_sum_of_layers(lab):
    nodes = {"l2": encoder(PROMPT, layer=-2), "l5": encoder(PROMPT, layer=-5),
             "blend": encoder(PROMPT, layer=-9, blend="-2:0.7, -5:0.3"),
             "scaled": encoder(PROMPT, blend="-2:7,-5:3")}
    result = lab.run(with_probes(nodes, "blend"))
    h2, h5 = read_probe(lab, result, "l2")[0], read_probe(lab, result, "l5")[0]
    blend, _, record = read_probe(lab, result, "blend")
    assert torch.allclose(blend, 0.7 * h2 + 0.3 * h5, atol=1e-6)
    assert torch.allclose(read_probe(lab, result, "scaled")[0], blend, atol=1e-6)
    assert record["layer"] is None and record["layer_blend"] == [[-2, pytest.approx(0.7)], [-5, pytest.approx(0.3)]]


def test_a_text_is_encoded_once_whatever_layers_are_read(lab):
    text = "a cache probe: three lanterns over a river"
    before = cache_stats(lab)
    nodes = {"a": encoder(text, layer=-2), "b": encoder(text, layer=-7), "c": encoder(text, blend="-3:1,-4:1")}
    lab.run(with_probes(nodes, "cache1"))
    after = cache_stats(lab)
    assert after["forward_passes"] == before["forward_passes"] + 1
    assert after["hits"] == before["hits"] + 2
    lab.run(with_probes({"d": encoder(text, layer=-11), "e": encoder(TEMPLATE.format(text), layer=-12)}, "cache2"))
    again = cache_stats(lab)
    assert again["forward_passes"] == after["forward_passes"]      # plain and pre-formatted text are one text
    assert again["hits"] == after["hits"] + 2
    lab.run(with_probes({"f": encoder(text + "!", layer=-2)}, "cache3"))
    assert cache_stats(lab)["forward_passes"] == again["forward_passes"] + 1


def test_cache_is_dropped_with_the_model_when_comfyui_frees_memory(lab):
    lab.run(with_probes({"a": encoder("something to cache")}, "free"))
    assert cache_stats(lab)["entries"] >= 1
    post(lab, "/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cache_stats(lab)["entries"] > 0:
        time.sleep(0.5)
    assert cache_stats(lab)["entries"] == 0


LONG = ("a very long prompt about a harbor town, " * 12).strip()


@pytest.mark.parametrize("budget", [48, 10])
def test_every_long_prompt_mode_returns_the_budget_and_keeps_the_ends(lab, budget):
    nodes = {mode: encoder(LONG, mode=mode, budget=budget) for mode in ("none", "truncate", "interpolate", "pool", "attention_pool")}
    result = lab.run(with_probes(nodes, f"long{budget}"))
    full, full_mask, full_record = read_probe(lab, result, "none")
    length = full.shape[1]
    assert length > budget and full_mask.shape == (1, length)
    assert "OVER BUDGET" in result.outputs["none"]["text"][0]
    assert full_record["long_prompt"]["over_budget"] and full_record["long_prompt"]["tokens_out"] == length
    outs = {}
    for mode in ("truncate", "interpolate", "pool", "attention_pool"):
        tokens, mask, record = read_probe(lab, result, mode)
        outs[mode] = tokens
        assert tokens.shape == (1, budget, 128)
        assert mask.shape == (1, budget) and bool(mask.all())          # the DiT reads exactly budget tokens
        assert torch.equal(tokens[:, 0], full[:, 0]) and torch.equal(tokens[:, -1], full[:, -1])
        assert record["token_count"] == length and record["long_prompt"]["tokens_out"] == budget
        assert f"{length} tokens > {budget}" in result.outputs[mode]["text"][0]
        if budget > 8:  # the template's 3 + 5 tokens fit: kept exactly around the shrunk prompt
            assert torch.equal(tokens[:, :3], full[:, :3]) and torch.equal(tokens[:, -5:], full[:, -5:])
            assert record["content_span"] == [3, budget - 5]
    assert torch.equal(outs["truncate"][:, :budget - 5 if budget > 8 else budget - 1],
                       full[:, :budget - 5 if budget > 8 else budget - 1])
    for a in outs:
        for b in outs:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_bad_inputs_get_clear_errors(lab):
    def expect(node, *words):
        expect_error(lab, with_probes({"enc": node}, "bad"), *words)

    expect(encoder("   "), "text is empty")
    expect(encoder("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"), "last user turn is empty")
    expect(encoder(PROMPT, layer=-40), "layer -40 is out of range", "36 layers", "-36")
    expect(encoder(PROMPT, blend="-2 0.5"), "layer_blend", "malformed", "-2:0.7, -5:0.3")
    expect(encoder(PROMPT, blend="-2:1, -37:1"), "layer_blend layer -37 is out of range")
    expect(encoder(PROMPT, blend="-2:1, -3:-1"), "summing to 0")
