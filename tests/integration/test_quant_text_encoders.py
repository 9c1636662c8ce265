"""Quantized Qwen3 text encoders on a real ComfyUI (CLIPLoader's fp8 and mixed-precision files, ComfyUI-GGUF's
CLIPLoader (GGUF) Q8_0): stock CLIPTextEncode, the Prompt Formatter -> Qwen3 Encoder, Chunked Encode and the
steering-vector builder give what they give on a float32 encoder holding the dequantized weights, within
TOL (1e-4 of the reference's largest magnitude). The prompt inspector tokenizes only (no weights)."""

import sys

import pytest
from safetensors.torch import load_file

import harness
import quant_te_files

sys.path.insert(0, str(harness.TESTING_PACK))
import quant_models  # noqa: E402

pytestmark = pytest.mark.integration

KINDS = ["fp8_e4m3fn", "mixed_precision", "gguf_Q8_0"]
TOL = 1e-4
TEXT = "a lighthouse on a cliff at dawn, waves below"


@pytest.fixture(scope="module")
def kinds(lab, comfyui_path):
    gguf_reason = quant_models.gguf_missing_reason(str(comfyui_path))
    return quant_te_files.write_all(lab.base / "models", harness.TINY_FILES["clip_name"], gguf_reason is None), gguf_reason


def encoders(graph, k, clip):
    """Every text-encoder node on clip; {name: CONDITIONING output}."""
    graph[f"stock_{k}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": clip}}
    graph[f"fmt_{k}"] = {"class_type": "ZImageLabPromptFormatter", "inputs": {
        "prompt": TEXT, "preset": "none", "system_prompt": "", "think_mode": "none", "thinking": "", "assistant_prefill": ""}}
    graph[f"enc_{k}"] = {"class_type": "ZImageLabQwen3Encode", "inputs": {
        "clip": clip, "text": [f"fmt_{k}", 0], "layer": -2, "layer_blend": "-2:0.5, -4:0.5", "long_prompt_mode": "none",
        "token_budget": 512}}
    graph[f"chunk_{k}"] = {"class_type": "ZImageLabChunkedEncode", "inputs": {
        "clip": clip, "text": TEXT, "window": 8, "overlap": 2, "join": "crossfade"}}
    graph[f"vec_{k}"] = {"class_type": "ZImageLabSteeringVectorBuild", "inputs": {
        "clip": clip, "prompts_a": "an oil painting of a boat", "prompts_b": "a photo of a boat", "layer": -2,
        "normalize": False, "space": "embedding", "template": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"}}
    graph[f"steer_{k}"] = {"class_type": "ZImageLabSteeringApply", "inputs": {  # the vector, on a shared conditioning
        "conditioning": ["stock_r", 0], "vector": [f"vec_{k}", 0], "alpha": 1.0, "scope": "content tokens"}}
    return {name: [f"{name}_{k}", 0] for name in ("stock", "enc", "chunk", "steer")}


@pytest.mark.parametrize("kind", KINDS)
def test_text_encoder_nodes_match_the_dequantized_encoder(lab, kinds, kind):
    table, reason = kinds
    if kind not in table:
        pytest.skip(reason)
    loader, ref = table[kind]
    graph = {"q": loader, "r": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": ref}}}
    outs = {k: encoders(graph, k, [k, 0]) for k in ("r", "q")}
    for k, named in outs.items():
        for name, ref_out in named.items():
            graph[f"save_{name}_{k}"] = {"class_type": "ZImageLabTestSaveConditioningFile", "inputs": {
                "conditioning": ref_out, "filename_prefix": f"qte/{kind}_{name}_{k}"}}
    graph["kinds"] = {"class_type": "PreviewAny", "inputs": {"source": ["q", 1]}}
    result = lab.run(graph)
    stored = result.outputs["kinds"]["text"][0]
    assert {"fp8_e4m3fn": "fp8_e4m3fn", "mixed_precision": "scaled fp8_e4m3fn", "gguf_Q8_0": "GGUF Q8_0"}[kind] in stored, stored
    files = {(name, k): load_file(str(lab.output / f"qte/{kind}_{name}_{k}.safetensors")) for name in outs["r"] for k in "qr"}
    for name in outs["r"]:
        got, want = files[name, "q"], files[name, "r"]
        assert got.keys() == want.keys()
        if name == "steer":  # the vectors themselves: steered minus the shared conditioning
            got, want = ({"vector": f["tokens_0"] - files["stock", "r"]["tokens_0"]} for f in (got, want))
            assert want["vector"].abs().max() > 0
        for key in want:
            err = ((got[key].double() - want[key].double()).abs().max() / want[key].double().abs().max()).item()
            assert err <= TOL, (name, key, err)
