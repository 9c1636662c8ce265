"""Graph pieces for the quantized-model tests: a quantized MODEL and its dequantized float32 reference, each
through the same node, sampled the same way (tests/integration/test_quant_models.py, test_quant_nodes.py)."""

from __future__ import annotations

import pytest

import harness

OUTPUT_TOL = 1e-4  # latents: max |quantized - reference| / max |reference|
PROMPT = "a red fox in the snow"


def loaders(kinds, kind):
    """(quantized loader node, reference loader node) for a kind; skip with the reason when GGUF is absent."""
    table, gguf_reason = kinds
    if kind not in table:
        pytest.skip(gguf_reason)
    loader, ref = table[kind]
    return loader, {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": ref}}


def _common(graph):
    graph.setdefault("c", {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}})
    graph.setdefault("t", {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["c", 0]}})
    graph.setdefault("e", {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}})
    graph.setdefault("v", {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}})


def settings(seed=5, steps=2):
    return {"positive": ["t", 0], "latent_image": ["e", 0], "seed": seed, "steps": steps, "shift": 3.0,
            "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}


def sample(graph, nid, model_ref):
    """Z-Image Sampler on model_ref; returns the LATENT output."""
    _common(graph)
    graph[nid] = {"class_type": "ZImageLabSampler", "inputs": {"model": model_ref, **settings()}}
    return [nid, 0]


def save(graph, nid, latent_ref):
    graph[nid] = {"class_type": "SaveLatent", "inputs": {"samples": latent_ref, "filename_prefix": f"quant/{nid}"}}
    return nid


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_pair(lab, kinds, kind, case=None, **over):
    """Latents of the quantized model and of its dequantized reference, each through case(graph, id, model)."""
    quant, ref = loaders(kinds, kind)
    graph = {"q": quant, "r": ref}
    fn = case or (lambda g, nid, m, **_: sample(g, nid + "_s", m))
    name = getattr(case, "__name__", "stock")
    saves = {k: save(graph, f"{name}_{k}_{kind}", fn(graph, f"{name}_{k}", [k, 0], **over)) for k in ("q", "r")}
    result = lab.run(graph)
    return lab.latents(result, saves["q"])[0], lab.latents(result, saves["r"])[0]


def patched(node, **inputs):
    """A case: the MODEL-patching node with inputs, then the Z-Image Sampler."""
    def case(graph, nid, model_ref, **over):
        _common(graph)
        graph[nid] = {"class_type": node, "inputs": {"model": model_ref, **inputs, **over}}
        return sample(graph, nid + "_s", [nid, 0])
    return case


def nag(graph, nid, model_ref, **over):
    _common(graph)
    graph.setdefault("neg", {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["c", 0]}})
    graph[nid] = {"class_type": "ZImageLabNAG", "inputs": {"model": model_ref, "negative": ["neg", 0], "scale": 5.0,
                                                           "tau": 2.5, "alpha": 0.25, "end_sigma": 0.0, **over}}
    return sample(graph, nid + "_s", [nid, 0])


def refined_steering(graph, nid, model_ref, **over):
    _common(graph)
    graph[nid + "_vec"] = {"class_type": "ZImageLabSteeringVectorBuild", "inputs": {
        "clip": ["c", 0], "prompts_a": "an oil painting of a boat\nan oil painting of a house",
        "prompts_b": "a photo of a boat\na photo of a house", "layer": -2, "normalize": False, "space": "refined",
        "template": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", "model": model_ref}}
    graph[nid] = {"class_type": "ZImageLabRefinedSteering", "inputs": {
        "model": model_ref, "vector": [nid + "_vec", 0], "alpha": 16.0, "scope": "caption tokens", **over}}
    return sample(graph, nid + "_s", [nid, 0])


def ensemble(graph, nid, model_ref, **over):
    _common(graph)
    graph[nid] = {"class_type": "ZImageLabEnsembleSampler", "inputs": {
        "model": model_ref, **{k: v for k, v in settings().items() if k != "seed"}, "seeds": "1, 2",
        "mode": "prediction average", "start_step": 0, "end_step": 10000, **over}}
    return [nid, 0]


def trajectory(graph, nid, model_ref, **over):
    _common(graph)
    graph[nid] = {"class_type": "ZImageLabTrajectory", "inputs": {"model": model_ref, **settings(), "every": 1, **over}}
    return [nid, 2]  # the predicted clean latents of every step


def attribution(graph, nid, model_ref, **over):
    _common(graph)
    s = settings()
    graph[nid] = {"class_type": "ZImageLabTokenAttribution", "inputs": {
        "model": model_ref, "clip": ["c", 0], "vae": ["v", 0], "prompt": PROMPT, "latent_image": ["e", 0],
        "seed": s["seed"], "steps": s["steps"], "shift": 3.0, "sampler_name": "euler", "scheduler": "simple",
        "cfg": 1.0, "unit": "word", "extra_words": "", "batch_size": 4, **over}}
    return [nid, 4]  # the full prompt's and every shortened prompt's latents


ablation = patched("ZImageLabLayerAblation", layers="3,7-9", scale=0.0, start_percent=0.0, end_percent=1.0)
slg = patched("ZImageLabSkipLayerGuidance", layers="7-12", scale=2.5, start_percent=0.0, end_percent=1.0)
refiner_ablation = patched("ZImageLabRefinerAblation", context_blocks="1", context_scales="0.0", noise_blocks="0",
                           noise_scales="0.5", start_percent=0.0, end_percent=1.0)
rope_extend = patched("ZImageLabRoPEExtend", method="ntk", scale_mode="factor", factor=4.0, trained_length=4)
accelerate = patched("ZImageLabAccelerate", attention="math", compile_blocks=False, cuda_graphs=False, fp8_matmul=False,
                     sync_free_sampling=False, cache_text_encodes=False, graph_text_encoder="off",
                     vae_channels_last=False, vae_compile=False)
caption_noise = patched("ZImageLabCaptionNoise", strength=2.0, fraction=0.5, steps=1, space="refined", seed=3,
                        protect_start=3, protect_end=5)
initial_noise = patched("ZImageLabInitialNoiseStructure", strength=2.0, scale=2, seed=3)
early_step = patched("ZImageLabEarlyStepVariation", strength=1.5, mode="shift", steps=2, seed=3)

# name: (case, whether the node changes the stock result here)
CASES = {
    "nag": (nag, True), "layer_ablation": (ablation, True), "skip_layer_guidance": (slg, True),
    "refiner_ablation": (refiner_ablation, True), "rope_extend": (rope_extend, True),
    "refined_steering": (refined_steering, True), "accelerate": (accelerate, False),
    "ensemble": (ensemble, True), "trajectory": (trajectory, False), "token_attribution": (attribution, False),
    "caption_noise": (caption_noise, True), "initial_noise_structure": (initial_noise, True),
    "early_step_variation": (early_step, True),
}


def lora_loader(graph, nid, model_ref, **over):
    """The Refiner LoRA Loader (a LoRA file, or "[none]"), then the Z-Image Sampler."""
    graph[nid] = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": model_ref, "lora_name": "[none]", "strength": 0.8, "target": "everything", **over}}
    return sample(graph, nid + "_s", [nid, 0])


def lora_trainer(graph, nid, model_ref, **over):
    """One step of the Refiner LoRA Train node (an output node: returns None)."""
    _common(graph)
    graph[nid] = {"class_type": "ZImageLabRefinerLoRATrain", "inputs": {
        "model": model_ref, "clip": ["c", 0], "prompts": "a cat", "style": "watercolor", "preserve_prompts": "a dog",
        "rank": 2, "alpha": 2.0, "learning_rate": 1e-3, "steps": 1, "seed": 0, "preservation_weight": 1.0,
        "modules": "attention", "lora_name": f"quant/{nid}", **over}}
    return None


LORA_CASES = {"lora_loader": lora_loader, "lora_trainer": lora_trainer}
for _name, (_case, _) in CASES.items():
    _case.__name__ = _name
