"""ZImageLabRefinerLoRATrain on a real ComfyUI: the shipped train-then-load workflow lowers its loss,
the saved file loads through our loader and the stock ones (same weights as the in-graph LoRA),
the trained LoRA moves the real model's refined caption toward the styled one, the headless
command, and bad input."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import harness
from zlab import workflow as wf

pytestmark = pytest.mark.integration

PROMPTS = "a lighthouse on a cliff\na cat sleeping on a sofa"
PRESERVE = "a photo of a dog in a park\na city street at night"
STYLE = "watercolor painting, soft pastel colors"
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def small_training(api, name, steps=6):
    api = wf.set_input(api, f"ZImageLabRefinerLoRATrain.lora_name={name}")
    node = next(n for n in api.values() if n["class_type"] == "ZImageLabRefinerLoRATrain")["inputs"]
    node.update(prompts=PROMPTS, preserve_prompts=PRESERVE, style=STYLE, steps=steps, rank=4, alpha=4.0,
                learning_rate=1e-3, seed=7)
    for n in api.values():
        if n["class_type"] == "ZImageLabSampler":
            n["inputs"]["steps"] = 2
    return api


def save_weights(graph, nid, model_ref, prefix):
    graph[nid] = {"class_type": "ZImageLabTestSaveWeights", "inputs": {"model": model_ref, "filename_prefix": prefix}}


def weights(lab, prefix):
    return load_file(str(lab.output / f"{prefix}.safetensors"))


@pytest.fixture(scope="module")
def trained(lab):
    """The shipped train-then-load workflow, run once with a short training; plus weights of the in-graph LoRA."""
    api = small_training(lab.workflow("zimage_refiner_lora_train.json"), "zimage_lab/refiner_style")
    save_weights(api, "w_ours", ["6", 0], "train/in_graph_ours")
    api["stock_mem"] = {"class_type": "LoraModelLoader", "inputs": {"model": ["1", 0], "lora": ["4", 0], "strength_model": 1.0,
                                                                  "bypass": False}}
    save_weights(api, "w_stock_mem", ["stock_mem", 0], "train/in_graph_stock")
    save_weights(api, "w_base", ["1", 0], "train/base")
    result = lab.run(api)
    return api, result


def test_training_lowers_its_loss_and_saves_a_lora(lab, trained):
    api, result = trained
    out = result.outputs["4"]
    losses = out["loss"]
    assert len(losses) == 7 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    name = out["lora_name"][0]
    assert name == "zimage_lab/refiner_style_00001.safetensors"
    assert f"saved loras/{name}" in out["text"][0]
    path = lab.base / "models" / "loras" / name
    state = load_file(str(path))
    assert state and all(k.startswith(("diffusion_model.context_refiner.0.", "diffusion_model.context_refiner.1."))
                         for k in state)
    for block in (0, 1):
        base = f"diffusion_model.context_refiner.{block}.attention"
        assert torch.equal(state[f"{base}.to_q.lora_A.weight"], state[f"{base}.to_k.lora_A.weight"])
        assert state[f"{base}.to_v.lora_B.weight"].shape == (256, 4)
        assert state[f"{base}.to_out.0.alpha"].item() == 4.0
        assert state[f"diffusion_model.context_refiner.{block}.feed_forward.w2.lora_A.weight"].shape == (4, 768)
        assert state[f"{base}.to_q.lora_B.weight"].abs().max() > 0  # trained away from the zero start
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["zimage_lab"])
    assert meta["style"] == STYLE and meta["steps"] == 6 and meta["final_loss"] == pytest.approx(losses[-1])
    plot = lab.images(result, "5")[0]
    assert plot.ndim == 3 and plot.shape[2] == 3 and plot.std() > 0
    for save in ("12", "14"):
        image = lab.images(result, save)[0]
        assert image.shape == (64, 64, 3)


def test_saved_file_loads_through_both_loaders_to_the_same_weights(lab, trained):
    _, result = trained
    name = result.outputs["4"]["lora_name"][0]
    graph = {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "2": {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {"model": ["1", 0], "lora_name": name, "strength": 1.0,
                                                                         "target": "context refiner", "block_strengths": ""}},
             "3": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name, "strength_model": 1.0}}}
    save_weights(graph, "w2", ["2", 0], "train/file_ours")
    save_weights(graph, "w3", ["3", 0], "train/file_stock")
    loaded = lab.run(graph)
    assert "applied 14 patches to 2 blocks" in loaded.outputs["2"]["text"][0]
    base = weights(lab, "train/base")
    versions = [weights(lab, p) for p in ("train/file_ours", "train/file_stock", "train/in_graph_ours", "train/in_graph_stock")]
    changed = {k for k in base if not torch.equal(base[k], versions[0][k])}
    assert changed and all(k.startswith("context_refiner.") for k in changed)
    assert {k.split(".")[2] for k in changed} == {"attention", "feed_forward"}
    for other in versions[1:]:
        for key in base:
            assert torch.equal(versions[0][key], other[key]), key


def _refined(lab, model_node, text, prefix):
    graph = {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
             "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    model_ref = ["1", 0]
    if model_node is not None:
        graph["m"] = model_node
        model_ref = ["m", 0]
    graph["p"] = {"class_type": "ZImageLabTestRefinedProbe", "inputs": {"model": model_ref, "filename_prefix": prefix}}
    graph["s"] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": ["p", 0], "positive": ["3", 0], "latent_image": ["4", 0], "seed": 1, "steps": 1, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    graph["l"] = {"class_type": "SaveLatent", "inputs": {"samples": ["s", 0], "filename_prefix": prefix + "/latent"}}
    lab.run(graph)
    return load_file(str(lab.output / prefix / "call_0000.safetensors"))["txt"][0].double()


def test_trained_lora_moves_the_real_refined_caption_toward_the_styled_one(lab, trained, comfyui_path):
    from transformers import Qwen2Tokenizer

    _, result = trained
    name = result.outputs["4"]["lora_name"][0]
    tok = Qwen2Tokenizer.from_pretrained(str(comfyui_path / "comfy" / "text_encoders" / "qwen25_tokenizer"))
    lora = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {"model": ["1", 0], "lora_name": name, "strength": 1.0,
                                                                   "target": "context refiner", "block_strengths": ""}}
    for i, prompt in enumerate(PROMPTS.splitlines()):
        styled = f"{prompt}, {STYLE}"
        a, b = tok(TEMPLATE.format(prompt))["input_ids"], tok(TEMPLATE.format(styled))["input_ids"]
        shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # template prefix + the prompt
        base_p = _refined(lab, None, prompt, f"refined/base_{i}")[:shared]
        base_styled = _refined(lab, None, styled, f"refined/styled_{i}")[:shared]
        lora_p = _refined(lab, lora, prompt, f"refined/lora_{i}")[:shared]
        before = (base_p - base_styled).norm()
        after = (lora_p - base_styled).norm()
        assert after < 0.9 * before, (prompt, float(before), float(after))


def test_headless_command_trains_through_the_api(lab, tmp_path, repo):
    workflow = tmp_path / "train.json"
    workflow.write_text(json.dumps(lab.workflow("zimage_refiner_lora_train.json")))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a castle on a hill\n\na boat on a lake\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "zlab", "train-lora", "--server", lab.url, "--workflow", str(workflow),
                           "--prompts", str(prompts), "--style", "pencil sketch", "--steps", "3", "--rank", "2",
                           "--alpha", "2", "--lr", "0.001", "--name", "headless/sketch", "--out", str(out), "--quiet"],
                          cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "lora_name: headless/sketch_00001.safetensors" in proc.stdout
    assert (lab.base / "models" / "loras" / "headless" / "sketch_00001.safetensors").is_file()
    record = json.loads((out / "refiner_lora_training.json").read_text())
    assert len(record["loss"]) == 4 and record["loss"][-1] < record["loss"][0]
    assert [p.name for p in out.glob("refiner_lora_loss_*.png")]  # the loss plot saved on the server, downloaded
    meta_path = lab.base / "models" / "loras" / "headless" / "sketch_00001.safetensors"
    with safe_open(str(meta_path), "pt") as f:
        meta = json.loads(f.metadata()["zimage_lab"])
    assert meta["prompts"] == ["a castle on a hill", "a boat on a lake"] and meta["style"] == "pencil sketch"


def _patch_state(lab):
    graph = {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "s": {"class_type": "ZImageLabTestPatchState", "inputs": {"model": ["1", 0], "tag": "x"}}}
    return json.loads(lab.run(graph).outputs["s"]["text"][0])


@pytest.mark.parametrize("inputs, words", [
    ({"prompts": "  \n\n  "}, ["prompts is empty"]),
    ({"preserve_prompts": ""}, ["preserve_prompts is empty"]),
    ({"alpha": 0.0}, ["alpha"]),
    ({"learning_rate": 0.0}, ["learning_rate"]),
    ({"style": "   "}, ["style is empty"]),
    ({"lora_name": "../outside"}, ["lora_name"]),
])
def test_bad_input_gets_a_clear_error_and_leaves_the_model_untouched(lab, inputs, words):
    from zlab.api import ComfyError

    before = _patch_state(lab)
    loras_before = sorted(p.name for p in (lab.base / "models" / "loras").rglob("*.safetensors"))
    api = small_training(lab.workflow("zimage_refiner_lora_train.json"), "bad/never", steps=2)
    train = next(nid for nid, n in api.items() if n["class_type"] == "ZImageLabRefinerLoRATrain")
    api[train]["inputs"].update(inputs)
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert _patch_state(lab) == before and before["patches"] == {} and before["object_patches"] == []
    assert sorted(p.name for p in (lab.base / "models" / "loras").rglob("*.safetensors")) == loras_before


def test_loading_workflow_applies_the_trained_file(lab, trained):
    api = lab.workflow("zimage_refiner_lora.json")
    assert api["5"]["inputs"]["lora_name"] == trained[1].outputs["4"]["lora_name"][0]  # the training workflow's default name
    api["7"]["inputs"]["steps"] = 2
    result = lab.run(api)
    assert "applied 14 patches to 2 blocks at strength 1 (target context refiner): context_refiner.0-1" in \
        result.outputs["5"]["text"][0]
    image = lab.images(result, "9")[0]
    assert image.shape == (64, 64, 3) and image.std() > 0


def _shared(a, b):
    """Positions of the tokens two id lists share: the common start, then the common end."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return list(range(start)) + list(range(len(a) - end, len(a))), list(range(start)) + list(range(len(b) - end, len(b)))


@pytest.mark.parametrize("pre_lora", [False, True])
def test_initial_loss_is_measured_on_the_real_models_refined_captions(lab, comfyui_path, pre_lora):
    """Step 0's loss, recomputed from the refined captions the real DiT produces (probe), with or
    without a LoRA applied to the model before training."""
    from safetensors.torch import save_file
    from transformers import Qwen2Tokenizer

    pre = None
    if pre_lora:
        gen = torch.Generator().manual_seed(11)
        sd = {}
        for block in ("context_refiner.0", "context_refiner.1"):
            for name in ("to_q", "to_v", "to_out.0"):
                sd[f"diffusion_model.{block}.attention.{name}.lora_A.weight"] = 0.2 * torch.randn(4, 256, generator=gen)
                sd[f"diffusion_model.{block}.attention.{name}.lora_B.weight"] = 0.2 * torch.randn(256, 4, generator=gen)
        save_file(sd, str(lab.base / "models" / "loras" / "pre_lora.safetensors"))
        pre = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {"model": ["1", 0], "lora_name": "pre_lora.safetensors",
                                                                      "strength": 1.0, "target": "context refiner"}}
    graph = {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
             "t": {"class_type": "ZImageLabRefinerLoRATrain", "inputs": {
                 "model": ["m", 0] if pre else ["1", 0], "clip": ["2", 0], "prompts": PROMPTS, "style": STYLE,
                 "preserve_prompts": PRESERVE, "rank": 2, "alpha": 2.0, "learning_rate": 1e-3, "steps": 1, "seed": 0,
                 "preservation_weight": 1.0, "modules": "attention", "lora_name": f"initial/{int(pre_lora)}"}}}
    if pre:
        graph["m"] = pre
    initial = lab.run(graph).outputs["t"]["loss"][0]
    tok = Qwen2Tokenizer.from_pretrained(str(comfyui_path / "comfy" / "text_encoders" / "qwen25_tokenizer"))
    num = den = 0.0
    for i, prompt in enumerate(PROMPTS.splitlines()):
        styled = f"{prompt}, {STYLE}"
        a, b = _shared(tok(TEMPLATE.format(prompt))["input_ids"], tok(TEMPLATE.format(styled))["input_ids"])
        r_p = _refined(lab, pre, prompt, f"initial/{int(pre_lora)}_p{i}")
        r_s = _refined(lab, pre, styled, f"initial/{int(pre_lora)}_s{i}")
        num += float(((r_p[a] - r_s[b]) ** 2).sum())
        den += float((r_s[b] ** 2).sum())
    assert initial == pytest.approx(num / den, rel=1e-4)
