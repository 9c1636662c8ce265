"""Metrics nodes on a real ComfyUI, checked against numbers computed here from the images and tensors."""

import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import harness

pytestmark = pytest.mark.integration

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def write_input(lab, array):
    name = f"metrics_{uuid.uuid4().hex[:8]}.png"
    Image.fromarray(array).save(lab.base / "input" / name)
    return name


def test_image_metrics_of_a_known_image(lab):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, :8] = (255, 0, 0)     # left half red
    image[:, 8:] = (128, 128, 128)  # right half grey
    grey = np.full((16, 16, 3), 128, dtype=np.uint8)
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": write_input(lab, image)}},
        "2": {"class_type": "LoadImage", "inputs": {"image": write_input(lab, grey)}},
        "3": {"class_type": "ZImageLabImageMetrics", "inputs": {"image": ["1", 0], "edge_threshold": 0.5, "reference": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "metrics/table"}},
    }
    result = lab.run(api)
    (row,) = result.outputs["3"]["metrics"][0]["images"]
    x = image.astype(float)
    # colourfulness: rg is 255 or 0, yb is 127.5 or 0, half the pixels each
    rg, yb = x[..., 0] - x[..., 1], (x[..., 0] + x[..., 1]) / 2 - x[..., 2]
    assert row["colourfulness"] == pytest.approx(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))
    assert row["colourfulness"] == pytest.approx(1.3 * math.hypot(127.5, 63.75))
    # sharpness: in every interior row the Laplacian is +d at column 7 and -d at column 8, zero elsewhere
    left, right = LUMA @ [255, 0, 0], LUMA @ [128, 128, 128]
    d = right - left
    assert row["sharpness"] == pytest.approx(2 * d * d / 14, rel=1e-6)
    # edges: the step is 4 * (right - left) / 255 = 0.81 in Sobel units, seen by columns 7 and 8 of 14 interior ones
    assert 4 * d / 255 > 0.5
    assert row["edge_density"] == pytest.approx(2 / 14)
    diff = (x - 128) / 255
    assert row["pixel_rmse"] == pytest.approx(math.sqrt((diff ** 2).mean()))
    assert row["psnr"] == pytest.approx(10 * math.log10(1 / (diff ** 2).mean()))
    (table,) = lab.images(result, "4")
    assert table.std() > 0


def test_latent_distance_and_embedding_stats(lab):
    name_a, name_b = f"emb_a_{uuid.uuid4().hex[:8]}", f"emb_b_{uuid.uuid4().hex[:8]}"
    api = {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox sitting in fresh snow", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a grey wolf howling at night", "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "ZImageLabEmbeddingStats", "inputs": {"conditioning": ["3", 0], "tokens": "content",
              "conditioning_b": ["4", 0], "conditioning_c": ["3", 0]}},
        "7": {"class_type": "ZImageLabEmbeddingStats", "inputs": {"conditioning": ["3", 0], "tokens": "all"}},
        "8": {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": name_a}},
        "9": {"class_type": "ZImageLabTestProbe", "inputs": {"model": ["1", 0], "name": name_b}},
    }
    for nid, probe, positive, seed in (("10", "8", "3", 1), ("11", "9", "4", 2)):
        api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
            "model": [probe, 0], "positive": [positive, 0], "latent_image": ["5", 0], "seed": seed, "steps": 2,
            "shift": 3.0, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
        api[nid + "s"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"metrics/{nid}"}}
    api["12"] = {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}}
    api["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["12", 0]}}
    api["14"] = {"class_type": "ZImageLabImageMetrics", "inputs": {"image": ["13", 0], "edge_threshold": 0.5,
                 "latent": ["10", 0], "reference_latent": ["11", 0]}}
    api["15"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 1]}}
    api["16"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}}
    api["17"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 1]}}
    result = lab.run(api)

    (a,), (b,) = lab.latents(result, "10s"), lab.latents(result, "11s")
    (latent_row,) = result.outputs["14"]["metrics"][0]["latents"]
    x, y = a.double().flatten(), b.double().flatten()
    assert latent_row["latent_rmse"] == pytest.approx(float(((x - y) ** 2).mean().sqrt()), rel=1e-6)
    assert latent_row["latent_cosine"] == pytest.approx(float(x @ y / (x.norm() * y.norm())), rel=1e-6)

    # the conditionings exactly as the DiT received them (recorded by the probe)
    ctx_a = load_file(str(lab.output / "probe" / f"{name_a}.safetensors"))["context.0"][0].double()
    ctx_b = load_file(str(lab.output / "probe" / f"{name_b}.safetensors"))["context.0"][0].double()
    content_a, content_b = ctx_a[3:-5], ctx_b[3:-5]  # the default template: 3 prefix and 5 suffix tokens
    stats = result.outputs["6"]["stats"][0]
    assert stats["names"] == ["a", "b", "c"]
    row = stats["conditionings"][0]
    assert row["tokens"] == content_a.shape[0]
    assert row["mean_token_norm"] == pytest.approx(float(content_a.norm(dim=1).mean()), rel=1e-5)
    assert row["norm"] == pytest.approx(float(content_a.norm()), rel=1e-5)
    assert row["variance"] == pytest.approx(float(content_a.var(correction=0)), rel=1e-5)
    s = torch.linalg.svdvals(content_a)
    p = s / s.sum()
    assert row["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    n = content_a.numel()
    hoyer = (math.sqrt(n) - content_a.abs().sum() / content_a.norm()) / (math.sqrt(n) - 1)
    assert row["sparsity"] == pytest.approx(float(hoyer), rel=1e-5)
    cos = np.array(stats["pairwise_cosine"])
    pooled_a, pooled_b = content_a.mean(dim=0), content_b.mean(dim=0)
    assert cos[0, 1] == pytest.approx(float(pooled_a @ pooled_b / (pooled_a.norm() * pooled_b.norm())), rel=1e-5)
    assert cos[0, 2] == pytest.approx(1.0, abs=1e-6)  # the same prompt twice
    assert cos[0, 1] < cos[0, 2]
    (all_row,) = result.outputs["7"]["stats"][0]["conditionings"]
    assert all_row["tokens"] == ctx_a.shape[0]
    assert all_row["norm"] == pytest.approx(float(ctx_a.norm()), rel=1e-5)


def test_shipped_workflow_runs(lab):
    api = lab.workflow("zimage_metrics.json")
    api["9"]["inputs"]["steps"] = 3
    api["11"]["inputs"]["steps"] = 2
    result = lab.run(api)
    (image,) = lab.images(result, "15")
    (row,) = result.outputs["13"]["metrics"][0]["images"]
    x = image.astype(float)
    rg, yb = x[..., 0] - x[..., 1], (x[..., 0] + x[..., 1]) / 2 - x[..., 2]
    # the node measures the float image; the PNG is its 8-bit rounding
    assert row["colourfulness"] == pytest.approx(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()), rel=0.02)
    assert "pixel_rmse" in row and result.outputs["13"]["metrics"][0]["latents"][0]["latent_rmse"] > 0
    assert len(lab.images(result, "7")) == 1 and len(lab.images(result, "14")) == 1
    names = result.outputs["6"]["stats"][0]["names"]
    assert names == ["a", "b"]


def test_bad_inputs_get_clear_errors(lab):
    from zlab.api import ComfyError

    small = np.zeros((8, 8, 3), dtype=np.uint8)
    big = np.zeros((16, 16, 3), dtype=np.uint8)
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": write_input(lab, small)}},
        "2": {"class_type": "LoadImage", "inputs": {"image": write_input(lab, big)}},
        "3": {"class_type": "ZImageLabImageMetrics", "inputs": {"image": ["1", 0], "edge_threshold": 0.5, "reference": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    with pytest.raises(ComfyError, match="same size"):
        lab.run(api)
