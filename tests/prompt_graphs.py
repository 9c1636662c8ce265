"""Graph pieces for the prompt-side integration tests: encoder/formatter nodes and conditioning probes."""

from __future__ import annotations

import json
import urllib.request

from safetensors import safe_open

import harness

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # comfy/text_encoders/z_image.py
CLIP = {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}}
CONDITIONING_NODES = ("ZImageLabQwen3Encode", "CLIPTextEncode")


def encoder(text, layer=-2, blend="", mode="none", budget=512, clip=("clip", 0)) -> dict:
    return {"class_type": "ZImageLabQwen3Encode", "inputs": {"clip": list(clip), "text": text, "layer": layer,
            "layer_blend": blend, "long_prompt_mode": mode, "token_budget": budget}}


def formatter(prompt, history=None, **kw) -> dict:
    inputs = {"prompt": prompt, "system_prompt": "", "preset": "none", "think_mode": "none", "thinking": "",
              "assistant_prefill": "", **kw}
    if history is not None:
        inputs["history"] = [history, 2]
    return {"class_type": "ZImageLabPromptFormatter", "inputs": inputs}


def probe(source: str, name: str) -> dict:
    return {"class_type": "ZImageLabTestConditioningProbe", "inputs": {"conditioning": [source, 0], "filename_prefix": name}}


def with_probes(nodes: dict, tag: str, clip: dict = CLIP) -> dict:
    """The graph (with the tiny CLIP as node "clip") plus a probe after every conditioning node and an
    output node after every formatter, so all of them run."""
    graph = {"clip": clip, **nodes}
    for key, node in nodes.items():
        if node["class_type"] in CONDITIONING_NODES:
            graph[f"probe_{key}"] = probe(key, f"{tag}_{key}")
        elif node["class_type"] == "ZImageLabPromptFormatter":
            graph[f"show_{key}"] = {"class_type": "PreviewAny", "inputs": {"source": [key, 0]}}
    return graph


def read_probe(lab, result, key):
    """(tokens, attention_mask, zimage_lab record) saved by the probe of node key."""
    (record,) = result.outputs[f"probe_{key}"]["probes"]
    with safe_open(str(lab.file(record)), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors["tokens"], tensors.get("attention_mask"), json.loads(meta["zimage_lab"])


def cache_stats(lab) -> dict:
    return lab.client.get_json("/zimage_lab/encoder_cache")


def post(lab, path: str, body: dict) -> bytes:
    request = urllib.request.Request(lab.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def qwen_tokenizer(comfyui_path):
    """transformers' Qwen2Tokenizer on ComfyUI's qwen25_tokenizer files (raw text, no ComfyUI front end)."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(comfyui_path / "comfy" / "text_encoders" / "qwen25_tokenizer"))


def expect_error(lab, graph: dict, *words) -> str:
    """Run a graph that must fail; check the error names every word; return the message."""
    import pytest

    from zlab.api import ComfyError

    with pytest.raises(ComfyError) as err:
        lab.run(graph)
    for word in words:
        assert word in str(err.value), str(err.value)
    return str(err.value)


def tiny_transformers_qwen3(lab):
    """The tiny Qwen3 weights in a transformers Qwen3Model, built here with transformers' own classes."""
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3Model

    sd = load_file(str(lab.base / "models" / "text_encoders" / harness.TINY_FILES["clip_name"]))
    config = Qwen3Config(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=36,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=128, rms_norm_eps=1e-6,
                         rope_theta=1e6, tie_word_embeddings=True)
    model = Qwen3Model(config).eval()
    model.load_state_dict({k[len("model."):]: v.float() for k, v in sd.items()})
    return model
