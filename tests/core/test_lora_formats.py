"""core.lora_formats and `python -m zlab lora-info`: each trainer layout is named, with rank, alpha,
blocks, and every key that will not load and why."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lora_layouts
from core import lora_formats as lf
from core import refiner_lora as rl

REPO = Path(__file__).resolve().parents[2]
WIDTH, HIDDEN = 256, 688
SHAPES = {f"{b}.{n}.weight": s for b in lora_layouts.BLOCKS for n, s in (
    ("attention.qkv", (3 * WIDTH, WIDTH)), ("attention.out", (WIDTH, WIDTH)),
    ("feed_forward.w1", (HIDDEN, WIDTH)), ("feed_forward.w2", (WIDTH, HIDDEN)))}


@pytest.mark.parametrize("layout", lora_layouts.LAYOUTS)
def test_each_layout_is_named_with_rank_alpha_and_blocks(layout):
    sd, _ = lora_layouts.make(layout, SHAPES)
    info = lf.describe(sd)
    assert info["layout"].startswith(lora_layouts.LAYOUT_NAMES[layout]), info["layout"]
    assert info["blocks"] == sorted(lora_layouts.BLOCKS)
    assert info["not_loadable"] == {}
    kind = {"lokr": "LoKr", "musubi-lokr": "LoKr", "loha": "LoHa"}.get(layout, "LoRA")
    assert set(info["kinds"]) == {kind}
    assert info["ranks"] == [4]
    want_alpha = {"ai-toolkit": [], "diffsynth": [], "peft": [], "diffusers": [], "musubi": [2.0], "kohya-fused": [2.0],
                  "lokr": [8.0], "musubi-lokr": [8.0], "loha": [2.0]}[layout]
    assert info["alphas"] == want_alpha


def test_keys_that_cannot_load_are_listed_with_the_reason():
    sd, _ = lora_layouts.make("musubi", SHAPES, blocks=("layers.2",))
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(4, 4)
    sd["lora_unet_layers_2_attention_to_q.weird_tensor"] = torch.zeros(1)
    sd["lora_unet_layers_5_ffn.alpha"] = torch.tensor(1.0)
    bad = lf.describe(sd)["not_loadable"]
    assert set(bad) == {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                        "lora_unet_layers_2_attention_to_q.weird_tensor", "lora_unet_layers_5_ffn.alpha"}
    assert "text-encoder" in bad["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"]
    assert "not a LoRA parameter" in bad["lora_unet_layers_2_attention_to_q.weird_tensor"]
    assert "without the weights" in bad["lora_unet_layers_5_ffn.alpha"]


@pytest.mark.parametrize("module, block", [
    ("lora_unet_layers_12_attention_to_q", "layers.12"), ("diffusion_model.context_refiner.1.attention.to_k", "context_refiner.1"),
    ("lycoris_noise_refiner_0_feed_forward_w1", "noise_refiner.0"), ("transformer.x_embedder", "other"),
    ("base_model.model.layers.3.attention.to_out.0", "layers.3")])
def test_block_of_module_in_any_layout(module, block):
    assert lf.block_of_module(module) == block


@pytest.mark.parametrize("preset, on, off", [
    ("refiners only", ["context_refiner.0", "noise_refiner.1"], ["layers.0", "layers.29", "other"]),
    ("layers 0-9 (early)", ["layers.0", "layers.9"], ["layers.10", "context_refiner.0", "other"]),
    ("late layers (20-29)", ["layers.20", "layers.29"], ["layers.19", "noise_refiner.0"]),
    ("no refiners", ["layers.0", "other"], ["context_refiner.1", "noise_refiner.0"]),
])
def test_presets_switch_whole_blocks(preset, on, off):
    entries = rl.preset_entries(preset, "")
    assert all(rl.block_multiplier(entries, b) == 1.0 for b in on)
    assert all(rl.block_multiplier(entries, b) == 0.0 for b in off)


def test_user_entries_come_after_the_preset():
    entries = rl.preset_entries("refiners only", "layers.5=0.5")
    assert rl.block_multiplier(entries, "layers.5") == 0.5 and rl.block_multiplier(entries, "layers.6") == 0.0
    with pytest.raises(ValueError, match="block_preset is 'early'"):
        rl.preset_entries("early", "")


def test_cli_prints_the_report_and_fails_clearly(tmp_path):
    sd, _ = lora_layouts.make("ai-toolkit", SHAPES)
    path = tmp_path / "a.safetensors"
    save_file(sd, str(path))
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"garbage" * 4)
    run = subprocess.run([sys.executable, "-m", "zlab", "lora-info", str(path), str(bad)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "layout: ai-toolkit" in run.stdout and "rank: 4" in run.stdout
    assert "blocks touched: context_refiner.1, layers.2,29, noise_refiner.0" in run.stdout
    assert "every key is accounted for" in run.stdout
    assert "b.safetensors cannot be read as safetensors" in run.stderr
