"""Load HF Qwen3 on a real ComfyUI: same embeddings as CLIPLoader's path on the same weights, clear errors."""

import pytest
import torch

from prompt_graphs import TEMPLATE, encoder, expect_error, formatter, read_probe, with_probes

pytestmark = pytest.mark.integration

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
HF_FOLDER = "tiny_qwen3_hf"              # the same tiny weights as tiny_qwen3.safetensors, as a transformers folder
SMALL_FOLDER = "tiny_qwen3_small_hf"     # a 64-wide, 6-layer Qwen3


def hf_loader(folder=HF_FOLDER, dtype="float32"):
    return {"class_type": "ZImageLabHFQwen3Loader", "inputs": {"model_folder": folder, "dtype": dtype}}


def test_transformers_path_matches_comfyui_path_on_the_same_weights(lab):
    nodes = {"hf": hf_loader(), "fmt": formatter(PROMPT, think_mode="empty", system_prompt="You draw.")}
    for layer in (-1, -2, -5, -36):
        nodes[f"stock{-layer}"] = encoder(PROMPT, layer=layer)
        nodes[f"hf{-layer}"] = encoder(PROMPT, layer=layer, clip=("hf", 0))
    nodes["stockfmt"] = encoder(["fmt", 0], blend="-2:0.5, -9:0.5")
    nodes["hffmt"] = encoder(["fmt", 0], blend="-2:0.5, -9:0.5", clip=("hf", 0))
    nodes["hf_cte"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["hf", 0]}}
    result = lab.run(with_probes(nodes, "hfpath"))
    for key in ("1", "2", "5", "36", "fmt"):
        stock, stock_mask, stock_record = read_probe(lab, result, f"stock{key}")
        hf, hf_mask, hf_record = read_probe(lab, result, f"hf{key}")
        assert hf.shape == stock.shape and torch.equal(hf_mask, stock_mask)
        assert torch.allclose(hf, stock, atol=2e-4, rtol=1e-4), (key, (hf - stock).abs().max())
        assert hf_record["content_span"] == stock_record["content_span"]
        assert hf_record["encoder"] == f"transformers:{HF_FOLDER}" and stock_record["encoder"] == "comfyui"
    # CLIPTextEncode accepts the transformers Qwen3 and reads Z-Image's layer -2 from it
    assert torch.equal(read_probe(lab, result, "hf_cte")[0], read_probe(lab, result, "hf2")[0])
    assert read_probe(lab, result, "hf2")[2]["text"] == TEMPLATE.format(PROMPT)


def test_a_transformers_qwen3_drives_the_sampler(lab):
    graph = with_probes({
        "hf": hf_loader(dtype="auto"),
        "enc": encoder(PROMPT, clip=("hf", 0)),
        "unet": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": "tiny_zimage.safetensors"}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "ZImageLabSampler", "inputs": {"model": ["unet", 0], "positive": ["enc", 0],
                   "latent_image": ["latent", 0], "seed": 1, "steps": 2, "shift": 3.0, "sampler_name": "euler",
                   "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "hf/sample"}},
    }, "hfsample")
    (latent,) = lab.latents(lab.run(graph), "save")
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()


def test_folders_that_are_not_qwen3_and_layers_it_lacks_get_clear_errors(lab):
    expect_error(lab, with_probes({"hf": hf_loader("tiny_not_qwen3"), "enc": encoder(PROMPT, clip=("hf", 0))}, "bad"),
                 "tiny_not_qwen3 is not a Qwen3 model", "model_type 'llama'")
    expect_error(lab, with_probes({"hf": hf_loader(SMALL_FOLDER), "enc": encoder(PROMPT, layer=-10, clip=("hf", 0))}, "bad"),
                 "layer -10 is out of range", "6 layers", "-6")
    expect_error(lab, with_probes({"hf": hf_loader(SMALL_FOLDER), "enc": encoder(PROMPT, blend="-2:1,-7:1", clip=("hf", 0))}, "bad"),
                 "layer_blend layer -7 is out of range")
