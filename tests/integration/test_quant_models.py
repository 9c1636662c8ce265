"""Quantized Z-Image models on a real ComfyUI, loaded by the real loaders (UNETLoader weight_dtype,
scaled fp8 / mixed precision checkpoints, ComfyUI-GGUF): stock sampling, the LoRA loader, NAG and
layer ablation each give what they give on the dequantized float32 model, within a stated tolerance.

Tolerances (relative to the reference's largest magnitude): sampling and node outputs 1e-4 (measured:
see docs/models_and_loras.md); LoRA-patched weights: exact float32 for GGUF (ComfyUI-GGUF patches after
dequantizing), one storage step for fp8 kinds (ComfyUI rounds a patched fp8 weight back to fp8)."""

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness
import lora_layouts
import quant_files

sys.path.insert(0, str(harness.TESTING_PACK))
import quant_models  # noqa: E402

pytestmark = pytest.mark.integration

GGUF_OPEN = pytest.mark.xfail(reason="OPEN (issue 15): on the tiny GGUF files the dequantized weights differ from the "
                                     "gguf-package reference (writer layout or ComfyUI-GGUF dequant; not yet diagnosed)",
                              strict=False)
KINDS = ["fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "scaled_fp8", "mixed_precision",
         pytest.param("gguf_Q8_0", marks=GGUF_OPEN), pytest.param("gguf_Q4_K", marks=GGUF_OPEN)]
OUTPUT_TOL = 1e-4
FP8_STEP = {"fp8_e4m3fn": (2.0 ** -3, 2.0 ** -9), "fp8_e4m3fn_fast": (2.0 ** -3, 2.0 ** -9), "fp8_e5m2": (2.0 ** -2, 2.0 ** -16)}


@pytest.fixture(scope="module")
def kinds(lab, comfyui_path):
    gguf_reason = quant_models.gguf_missing_reason(str(comfyui_path))
    return quant_files.write_all(lab.base / "models", harness.TINY_FILES["unet_name"], gguf_reason is None), gguf_reason


def loaders(kinds, kind):
    table, gguf_reason = kinds
    if kind not in table:
        pytest.skip(gguf_reason)
    loader, ref = table[kind]
    return loader, {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": ref}}


def sampler(graph, nid, model_ref):
    graph.setdefault("c", {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}})
    graph.setdefault("t", {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["c", 0]}})
    graph.setdefault("e", {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}})
    graph[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model_ref, "positive": ["t", 0], "latent_image": ["e", 0], "seed": 5, "steps": 2, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    graph[nid + "s"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"quant/{nid}"}}
    return nid + "s"


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_pair(lab, kinds, kind, patch=None):
    """Latents of the quantized model and of its dequantized reference, each through patch(graph, id, ref)."""
    quant, ref = loaders(kinds, kind)
    graph = {"q": quant, "r": ref}
    refs = {"q": ["q", 0], "r": ["r", 0]}
    if patch:
        refs = {k: patch(graph, f"p{k}", v) for k, v in refs.items()}
    nodes = {k: sampler(graph, f"s{k}_{kind}", v) for k, v in refs.items()}
    result = lab.run(graph)
    return lab.latents(result, nodes["q"])[0], lab.latents(result, nodes["r"])[0]


@pytest.mark.parametrize("kind", KINDS)
def test_weights_dequantize_to_the_reference_and_the_kind_is_named(lab, kinds, kind):
    quant, ref = loaders(kinds, kind)
    graph = {"q": quant, "w": {"class_type": "ZImageLabTestSaveFloatWeights", "inputs": {"model": ["q", 0], "filename_prefix": f"quant/w_{kind}"}}}
    result = lab.run(graph)
    got = load_file(str(lab.output / f"quant/w_{kind}.safetensors"))
    want = load_file(str(lab.base / "models" / "diffusion_models" / ref["inputs"]["unet_name"]))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=1e-6, atol=1e-7), key
    name = result.outputs["w"]["text"][0]
    assert name.startswith({"fp8_e4m3fn": "fp8_e4m3fn", "fp8_e4m3fn_fast": "fp8_e4m3fn_fast", "fp8_e5m2": "fp8_e5m2",
                            "scaled_fp8": "scaled fp8", "mixed_precision": "scaled fp8",
                            "gguf_Q8_0": "GGUF", "gguf_Q4_K": "GGUF"}[kind]), name


@pytest.mark.parametrize("kind", KINDS)
def test_stock_sampling_matches_the_dequantized_model(lab, kinds, kind):
    q, r = run_pair(lab, kinds, kind)
    assert rel_err(q, r) <= OUTPUT_TOL, rel_err(q, r)


def nag(graph, nid, model_ref):
    graph.setdefault("c", {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}})
    graph.setdefault("neg", {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["c", 0]}})
    graph[nid] = {"class_type": "ZImageLabNAG", "inputs": {"model": model_ref, "negative": ["neg", 0], "scale": 5.0,
                                                           "tau": 2.5, "alpha": 0.25, "end_sigma": 0.0}}
    return [nid, 0]


def ablation(graph, nid, model_ref):
    graph[nid] = {"class_type": "ZImageLabLayerAblation", "inputs": {"model": model_ref, "layers": "3,7-9", "scale": 0.0,
                                                                       "start_percent": 0.0, "end_percent": 1.0}}
    return [nid, 0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("patch", [nag, ablation], ids=["nag", "layer_ablation"])
def test_model_patching_nodes_match_the_dequantized_model(lab, kinds, kind, patch):
    q, r = run_pair(lab, kinds, kind, patch)
    plain_q, _ = run_pair(lab, kinds, kind)
    assert rel_err(q, r) <= OUTPUT_TOL, rel_err(q, r)
    assert rel_err(q, plain_q) > 10 * OUTPUT_TOL  # the node did change the result


@pytest.fixture(scope="module")
def musubi_lora(lab):
    base = load_file(str(lab.base / "models" / "diffusion_models" / harness.TINY_FILES["unet_name"]))
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    sd, deltas = lora_layouts.make("musubi", shapes, seed=77)
    save_file(sd, str(lab.base / "models" / "loras" / "quant_musubi.safetensors"))
    return "quant_musubi.safetensors", deltas


@pytest.mark.parametrize("kind", KINDS)
def test_lora_loader_on_quantized_weights_adds_the_formula_delta(lab, kinds, kind, musubi_lora):
    name, deltas = musubi_lora
    quant, ref = loaders(kinds, kind)
    graph = {"q": quant, "l": {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": ["q", 0], "lora_name": name, "strength": 0.8, "target": "everything"}},
        "w": {"class_type": "ZImageLabTestSaveFloatWeights", "inputs": {"model": ["l", 0], "filename_prefix": f"quant/lora_{kind}"}}}
    lab.run(graph)
    got = load_file(str(lab.output / f"quant/lora_{kind}.safetensors"))
    base = load_file(str(lab.base / "models" / "diffusion_models" / ref["inputs"]["unet_name"]))
    want = lora_layouts.expected(base, deltas, 0.8)
    for key in base:
        err = (got[key].double() - want[key].double()).abs()
        if key not in deltas:
            assert torch.equal(got[key], base[key]), key
        elif kind.startswith("gguf"):
            assert err.max() <= 2e-6, (key, err.max())
        elif kind in FP8_STEP:
            rel, floor = FP8_STEP[kind]
            assert bool((err <= rel * want[key].double().abs() + floor).all()), (key, err.max())
        else:  # scaled fp8: one fp8 step of the scaled value
            bound = 2.0 ** -3 * want[key].double().abs() + want[key].double().abs().max() * 2.0 ** -9
            assert bool((err <= bound).all()), (key, err.max())


def accelerate(graph, nid, model_ref):
    graph[nid] = {"class_type": "ZImageLabAccelerate", "inputs": {
        "model": model_ref, "attention": "math", "compile_blocks": False, "cuda_graphs": False, "fp8_matmul": False,
        "sync_free_sampling": False, "cache_text_encodes": False, "graph_text_encoder": "off", "vae_channels_last": False,
        "vae_compile": False}}
    return [nid, 0]


def slg(graph, nid, model_ref):
    graph[nid] = {"class_type": "ZImageLabSkipLayerGuidance", "inputs": {
        "model": model_ref, "layers": "7-12", "scale": 2.5, "start_percent": 0.0, "end_percent": 1.0}}
    return [nid, 0]


def refiner_ablation(graph, nid, model_ref):
    graph[nid] = {"class_type": "ZImageLabRefinerAblation", "inputs": {
        "model": model_ref, "context_blocks": "1", "context_scales": "0.0", "noise_blocks": "0", "noise_scales": "0.5",
        "start_percent": 0.0, "end_percent": 1.0}}
    return [nid, 0]


def rope_extend(graph, nid, model_ref):
    graph[nid] = {"class_type": "ZImageLabRoPEExtend", "inputs": {
        "model": model_ref, "method": "ntk", "scale_mode": "factor", "factor": 4.0, "trained_length": 4}}
    return [nid, 0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("patch", [accelerate, slg, refiner_ablation, rope_extend],
                         ids=["accelerate", "skip_layer_guidance", "refiner_ablation", "rope_extend"])
def test_more_nodes_match_or_refuse_clearly(lab, kinds, kind, patch):
    from zlab.api import ComfyError

    try:
        q, r = run_pair(lab, kinds, kind, patch)
    except ComfyError as e:  # a refusal must name the model kind, not be a raw error from deep inside
        assert any(word in str(e) for word in ("fp8", "GGUF", "scaled", "quantized")), str(e)
        return
    assert rel_err(q, r) <= OUTPUT_TOL, rel_err(q, r)
