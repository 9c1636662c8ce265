"""Projectors on a real ComfyUI: a narrower Qwen3 + projector drives the DiT; fit-projector's file loads."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prompt_graphs import encoder, expect_error, read_probe, with_probes

pytestmark = pytest.mark.integration

PROMPT = "a bowl of ramen on a wooden table"
SMALL = "tiny_qwen3_small_hf"


def chain(projector_name, **encoder_kw):
    return {
        "hf": {"class_type": "ZImageLabHFQwen3Loader", "inputs": {"model_folder": SMALL, "dtype": "float32"}},
        "proj": {"class_type": "ZImageLabProjectorLoader", "inputs": {"clip": ["hf", 0], "projector_name": projector_name}},
        "raw": encoder(PROMPT, clip=("hf", 0), **encoder_kw),
        "projected": encoder(PROMPT, clip=("proj", 0), **encoder_kw),
    }


def sample_nodes(positive):
    return {
        "unet": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": "tiny_zimage.safetensors"}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "ZImageLabSampler", "inputs": {"model": ["unet", 0], "positive": [positive, 0],
                   "latent_image": ["latent", 0], "seed": 2, "steps": 2, "shift": 3.0, "sampler_name": "euler",
                   "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "proj/sample"}},
    }


def test_projector_maps_the_narrow_qwen3_to_the_dit_width(lab):
    name = "tiny_small_to_tiny.safetensors"
    result = lab.run(with_probes({**chain(name, layer=-3), **sample_nodes("projected")}, "proj"))
    raw, _, _ = read_probe(lab, result, "raw")
    projected, mask, record = read_probe(lab, result, "projected")
    weights = load_file(str(lab.base / "models" / "projectors" / name))
    assert raw.shape[2] == 64 and projected.shape == (1, raw.shape[1], 128) and mask.shape == (1, raw.shape[1])
    expected = raw @ weights["linear.weight"].T + weights["linear.bias"]
    assert torch.allclose(projected, expected, atol=1e-5)
    assert record["projector"] == "linear projector 64 -> 128" and record["layer"] == -3
    assert "linear projector 64 -> 128" in result.outputs["proj"]["text"][0]
    (latent,) = lab.latents(result, "save")
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()


def test_wrong_width_and_wrong_clip_get_clear_errors(lab):
    expect_error(lab, with_probes(chain("tiny_wrong_width.safetensors"), "bad"),
                 "reads width 32", "gives width 64", "fit-projector")
    stock_clip = {"proj": {"class_type": "ZImageLabProjectorLoader",
                           "inputs": {"clip": ["clip", 0], "projector_name": "tiny_small_to_tiny.safetensors"}},
                  "enc": encoder(PROMPT, clip=("proj", 0))}
    expect_error(lab, with_probes(stock_clip, "bad"), "clip must come from Load HF Qwen3")


def test_fit_projector_command_writes_a_projector_the_node_loads(lab, repo, tmp_path):
    models = lab.base / "models"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["# paired prompts; the first is held out", "a red fox in the snow", PROMPT, "three cats on a sofa",
                                  "a lighthouse at dawn", "city street at night in the rain", "an old sailor"]) + "\n")
    out = models / "projectors" / "tiny_fitted.safetensors"   # listed since the server started
    proc = subprocess.run([sys.executable, "-m", "zlab", "fit-projector", "--source", str(models / "text_encoders" / SMALL),
                           "--target", str(models / "text_encoders" / "tiny_qwen3.safetensors"),
                           "--tokenizer", str(models / "text_encoders" / "tiny_qwen3_hf"),
                           "--prompts", str(prompts), "--out", str(out), "--holdout", "0.2"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote linear projector 64 -> 128" in proc.stdout
    from core import projector

    fitted = projector.load(out)
    assert fitted.info["prompts"] == 5 and fitted.info["train_mse"] < 0.1 * fitted.info["target_variance"]
    result = lab.run(with_probes({**chain("tiny_fitted.safetensors"), **sample_nodes("projected")}, "fitted"))
    # the fitted projector maps the narrow model's layer -2 close to the tiny Qwen3's layer -2 on a training prompt
    target = lab.run(with_probes({"t": encoder(PROMPT)}, "fit_target"))
    projected, target_tokens = read_probe(lab, result, "projected")[0], read_probe(lab, target, "t")[0]
    assert projected.shape == target_tokens.shape
    assert ((projected - target_tokens) ** 2).mean() < 0.1 * target_tokens.var()
    (latent,) = lab.latents(result, "save")
    assert torch.isfinite(latent).all()


def test_fit_projector_reports_bad_inputs(repo, tmp_path):
    prompts = tmp_path / "empty.txt"
    prompts.write_text("# nothing\n\n")
    proc = subprocess.run([sys.executable, "-m", "zlab", "fit-projector", "--source", str(tmp_path), "--target",
                           str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "p.safetensors")],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "holds no prompts" in proc.stderr
    prompts.write_text("a cat\n")
    proc = subprocess.run([sys.executable, "-m", "zlab", "fit-projector", "--source", str(tmp_path), "--target",
                           str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "p.safetensors")],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a Hugging Face model folder" in proc.stderr
