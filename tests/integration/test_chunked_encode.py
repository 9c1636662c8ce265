"""ZImageLabChunkedEncode on a real ComfyUI: one window == CLIPTextEncode; long prompts are joined
from per-window encodings that the test rebuilds with stock CLIPTextEncode."""

import json

import pytest
import torch
from safetensors.torch import load_file

import harness

pytestmark = pytest.mark.integration

SHORT = "a lighthouse on a cliff at dawn, oil painting"
UNIT = "a small red house on a green hill under a wide blue sky with white clouds, "
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(comfyui_path):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(comfyui_path / "comfy" / "text_encoders" / "qwen25_tokenizer"))


def graph_with(text, window=480, overlap=64, join="crossfade", extra_texts=()):
    graph = {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "4": {"class_type": "ZImageLabChunkedEncode", "inputs": {"clip": ["2", 0], "text": text, "window": window,
                                                                "overlap": overlap, "join": join}},
        "5": {"class_type": "ZImageLabTestSaveConditioningFile", "inputs": {"conditioning": ["3", 0], "filename_prefix": "chunk/stock"}},
        "6": {"class_type": "ZImageLabTestSaveConditioningFile", "inputs": {"conditioning": ["4", 0], "filename_prefix": "chunk/ours"}},
    }
    for i, t in enumerate(extra_texts):
        graph[f"w{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": t, "clip": ["2", 0]}}
        graph[f"ws{i}"] = {"class_type": "ZImageLabTestSaveConditioningFile",
                           "inputs": {"conditioning": [f"w{i}", 0], "filename_prefix": f"chunk/window_{i}"}}
    return graph


def saved(lab, prefix):
    return load_file(str(lab.output / f"{prefix}.safetensors"))


def test_a_prompt_within_one_window_is_clip_text_encode_exactly(lab):
    graph = graph_with(SHORT)
    graph["7"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    for nid, cond in (("8", "3"), ("9", "4")):
        graph[nid] = {"class_type": "ZImageLabSampler", "inputs": {
            "model": ["1", 0], "positive": [cond, 0], "latent_image": ["7", 0], "seed": 5, "steps": 2, "shift": 3.0,
            "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
        graph[nid + "s"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"chunk/lat_{nid}"}}
    result = lab.run(graph)
    stock, ours = saved(lab, "chunk/stock"), saved(lab, "chunk/ours")
    assert torch.equal(stock["tokens_0"], ours["tokens_0"]) and torch.equal(stock["mask_0"], ours["mask_0"])
    assert torch.equal(lab.latents(result, "8s")[0], lab.latents(result, "9s")[0])
    assert "one window" in result.outputs["4"]["text"][0]
    meta = json.loads(result.outputs["6"]["zimage_lab"][0])
    assert meta["content_span"] == [3, stock["tokens_0"].shape[1] - 5]


@pytest.mark.parametrize("join", ["crossfade", "average"])
def test_long_prompt_is_the_blend_of_stock_encodings_of_its_windows(lab, tokenizer, join):
    text = UNIT * 90  # about 1,260 content tokens
    ids = tokenizer(TEMPLATE.format(text))["input_ids"]
    content = ids[3:-5]
    n, window, overlap = len(content), 480, 64
    assert n > 2 * window
    # windows of 480 tokens at stride 416, the last one cut where the prompt ends
    windows = [(s, min(s + window, n)) for s in range(0, n - overlap, window - overlap)]
    texts = [tokenizer.decode(content[a:b]) for a, b in windows]
    for (a, b), t in zip(windows, texts):  # the window texts tokenize back to exactly the window's tokens
        assert tokenizer(TEMPLATE.format(t))["input_ids"] == ids[:3] + content[a:b] + ids[-5:]
    result = lab.run(graph_with(text, window, overlap, join, texts))
    ours = saved(lab, "chunk/ours")["tokens_0"][0].double()
    stock = saved(lab, "chunk/stock")["tokens_0"][0].double()
    per_window = [saved(lab, f"chunk/window_{i}")["tokens_0"][0].double() for i in range(len(windows))]
    assert ours.shape == (n + 8, stock.shape[1]) and stock.shape[0] == n + 8
    assert saved(lab, "chunk/ours")["mask_0"].shape == (1, n + 8)
    assert result.outputs["4"]["text"][0].startswith(f"{n} content tokens in {len(windows)} windows")

    # expected: template prefix of the first window, blended content, template suffix of the last
    total = torch.zeros(n, ours.shape[1], dtype=torch.float64)
    weight = torch.zeros(n, dtype=torch.float64)
    for k, ((a, b), states) in enumerate(zip(windows, per_window)):
        w = torch.ones(b - a, dtype=torch.float64)
        if join == "crossfade":
            if k > 0:  # fade in over the tokens shared with the previous window
                shared = windows[k - 1][1] - a
                w = torch.clamp(torch.arange(1, b - a + 1, dtype=torch.float64) / (shared + 1), max=1)
            if k + 1 < len(windows):  # fade out over the tokens shared with the next window
                shared = b - windows[k + 1][0]
                w = torch.minimum(w, torch.arange(b - a, 0, -1, dtype=torch.float64) / (shared + 1))
        total[a:b] += w[:, None] * states[3:-5]
        weight[a:b] += w
    expected = torch.cat([per_window[0][:3], total / weight[:, None], per_window[-1][-5:]])
    assert torch.allclose(ours, expected, atol=2e-5, rtol=1e-5), (ours - expected).abs().max()
    # Qwen3 is causal: before the second window starts, the chunked caption is the one-pass encoding
    lead = 3 + windows[1][0]
    assert torch.allclose(ours[:lead], stock[:lead], atol=2e-5, rtol=1e-5)
    assert not torch.allclose(ours[lead + 100:lead + 200], stock[lead + 100:lead + 200], atol=1e-3)


def test_long_chunked_prompt_samples_with_the_rope_extender(lab):
    text = UNIT * 150  # about 2,100 tokens
    graph = graph_with(text, 480, 64)
    graph["7"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["r"] = {"class_type": "ZImageLabRoPEExtend", "inputs": {"model": ["1", 0], "method": "yarn",
                  "scale_mode": "fit to prompt", "factor": 1.0, "trained_length": 512}}
    graph["8"] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": ["r", 0], "positive": ["4", 0], "latent_image": ["7", 0], "seed": 1, "steps": 2, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    graph["8s"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "chunk/long"}}
    result = lab.run(graph)
    latent = lab.latents(result, "8s")[0]
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()
    assert result.outputs["4"]["text"][0].split()[0].isdigit() and int(result.outputs["4"]["text"][0].split()[0]) > 2000


@pytest.mark.parametrize("window, overlap, words", [(480, 240, "overlap"), (480, 300, "overlap")])
def test_bad_windows_get_a_clear_error(lab, window, overlap, words):
    from zlab.api import ComfyError

    with pytest.raises(ComfyError, match=words):
        lab.run(graph_with(SHORT, window, overlap))


def test_chunked_long_prompt_workflow(lab):
    api = lab.workflow("zimage_chunked_long_prompt.json")
    by_type = {n["class_type"]: nid for nid, n in api.items()}
    api[by_type["ZImageLabSampler"]]["inputs"]["steps"] = 2
    result = lab.run(api)
    report = result.outputs[by_type["ZImageLabChunkedEncode"]]["text"][0]
    n = int(report.split()[0])
    assert n > 512 and f"in 2 windows (0-480, 416-{n})" in report, report
    image = lab.images(result, by_type["ZImageLabSaveImage"])[0]
    assert image.shape == (64, 64, 3) and image.std() > 0
