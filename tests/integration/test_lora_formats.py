"""LoRAs of every trainer layout on a real ComfyUI: the Refiner LoRA Loader (target 'everything' =
the whole-model loader) changes exactly the targeted weights by the trainer's formula, computed
independently in tests/lora_layouts.py; the LoRA Inspector names each layout and accounts for every key."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness
import lora_layouts

pytestmark = pytest.mark.integration


def loader_graph():
    return {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}}}


@pytest.fixture(scope="module")
def base_weights(lab):
    graph = loader_graph()
    graph["w"] = {"class_type": "ZImageLabTestSaveWeights", "inputs": {"model": ["1", 0], "filename_prefix": "fmt/base"}}
    lab.run(graph)
    return load_file(str(lab.output / "fmt/base.safetensors"))


@pytest.fixture(scope="module")
def files(lab, base_weights):
    shapes = {k: tuple(v.shape) for k, v in base_weights.items()}
    out = {}
    for i, layout in enumerate(lora_layouts.LAYOUTS):
        sd, deltas = lora_layouts.make(layout, shapes, seed=10 + i)
        name = f"fmt_{layout}.safetensors"
        save_file(sd, str(lab.base / "models" / "loras" / name))
        out[layout] = (name, deltas)
    return out


def load(lab, name, prefix, strength, preset="none", target="everything"):
    graph = loader_graph()
    graph["2"] = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": ["1", 0], "lora_name": name, "strength": strength, "target": target, "block_strengths": "",
        "block_preset": preset}}
    graph["w"] = {"class_type": "ZImageLabTestSaveWeights", "inputs": {"model": ["2", 0], "filename_prefix": prefix}}
    result = lab.run(graph)
    return load_file(str(lab.output / f"{prefix}.safetensors")), result.outputs["2"]["text"][0]


def assert_exact_change(got, want, base):
    changed = []
    for key in base:
        if torch.equal(want[key], base[key]):
            assert torch.equal(got[key], base[key]), f"{key} changed but the LoRA does not touch it"
        else:
            changed.append(key)
            err = (got[key].double() - want[key].double()).abs().max().item()
            assert err <= 2e-6, f"{key}: max error {err}"
    return changed


@pytest.mark.parametrize("layout", lora_layouts.LAYOUTS)
def test_each_layout_changes_exactly_the_targeted_weights_by_its_formula(lab, base_weights, files, layout):
    name, deltas = files[layout]
    got, report = load(lab, name, f"fmt/{layout}", 0.7)
    changed = assert_exact_change(got, lora_layouts.expected(base_weights, deltas, 0.7), base_weights)
    assert sorted(changed) == sorted(deltas)
    assert "not loaded" not in report, report
    n_patches = sum(len(parts) for parts in deltas.values())
    assert f"applied {n_patches} patches to {len(lora_layouts.BLOCKS)} blocks" in report, report


def test_block_preset_late_layers_patches_only_layers_20_to_29(lab, base_weights, files):
    name, deltas = files["musubi"]
    got, report = load(lab, name, "fmt/late", 1.0, preset="late layers (20-29)")
    multipliers = {"context_refiner.1": 0.0, "noise_refiner.0": 0.0, "layers.2": 0.0}
    changed = assert_exact_change(got, lora_layouts.expected(base_weights, deltas, 1.0, multipliers), base_weights)
    assert changed and all(k.startswith("layers.29.") for k in changed)
    assert "block strength 0: context_refiner.1, layers.2, noise_refiner.0" in report, report


def test_inspector_names_each_layout_and_accounts_for_every_key(lab, files):
    graph = {}
    for layout in lora_layouts.LAYOUTS:
        graph[f"i_{layout}"] = {"class_type": "ZImageLabLoRAInspector", "inputs": {"lora_name": files[layout][0]}}
    graph["m"] = loader_graph()["1"]
    graph["with_model"] = {"class_type": "ZImageLabLoRAInspector", "inputs": {"lora_name": files["musubi"][0], "model": ["m", 0]}}
    result = lab.run(graph)
    for layout in lora_layouts.LAYOUTS:
        text = result.outputs[f"i_{layout}"]["text"][0]
        assert f"layout: {lora_layouts.LAYOUT_NAMES[layout]}" in text, text
        assert "every key is accounted for" in text and "rank: 4" in text
    text = result.outputs["with_model"]["text"][0]
    assert "on this model: 24 patches (12 onto q/k/v slices of a fused qkv)" in text, text
    assert "every key is used by a patch" in text


def test_inspector_lists_keys_that_will_not_load(lab, files):
    sd = load_file(str(lab.base / "models" / "loras" / files["ai-toolkit"][0]))
    sd["diffusion_model.layers.40.attention.to_q.lora_A.weight"] = torch.zeros(4, 256)
    sd["diffusion_model.layers.40.attention.to_q.lora_B.weight"] = torch.zeros(256, 4)
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(4, 4)
    save_file(sd, str(lab.base / "models" / "loras" / "fmt_extra.safetensors"))
    graph = loader_graph()
    graph["i"] = {"class_type": "ZImageLabLoRAInspector", "inputs": {"lora_name": "fmt_extra.safetensors", "model": ["1", 0]}}
    graph["2"] = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": ["1", 0], "lora_name": "fmt_extra.safetensors", "strength": 1.0, "target": "everything"}}
    graph["w"] = {"class_type": "ZImageLabTestSaveWeights", "inputs": {"model": ["2", 0], "filename_prefix": "fmt/extra"}}
    result = lab.run(graph)
    text = result.outputs["i"]["text"][0]
    assert "3 keys the loader will skip" in text, text
    assert "diffusion_model.layers.40.attention.to_q.lora_A.weight: its module name matches no weight" in text
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight: text-encoder key" in text
    report = result.outputs["2"]["text"][0]
    assert "3 file keys not loaded" in report and "layers.40" in report, report


ZEROED_BY_PRESET = {  # which of lora_layouts.BLOCKS each preset sets to strength 0 (read off the preset's meaning)
    "refiners only": {"layers.2", "layers.29"},
    "context refiner only": {"noise_refiner.0", "layers.2", "layers.29"},
    "noise refiner only": {"context_refiner.1", "layers.2", "layers.29"},
    "main layers only": {"context_refiner.1", "noise_refiner.0"},
    "layers 0-9 (early)": {"context_refiner.1", "noise_refiner.0", "layers.29"},
    "layers 10-19 (middle)": {"context_refiner.1", "noise_refiner.0", "layers.2", "layers.29"},
    "no refiners": {"context_refiner.1", "noise_refiner.0"},
}


@pytest.mark.parametrize("preset", list(ZEROED_BY_PRESET))
def test_every_block_preset_patches_only_its_blocks(lab, base_weights, files, preset):
    """ai-toolkit's split q/k/v onto the fused qkv, each preset: exactly the kept blocks change, by the formula."""
    name, deltas = files["ai-toolkit"]
    multipliers = {b: 0.0 for b in ZEROED_BY_PRESET[preset]}
    kept = [b for b in lora_layouts.BLOCKS if b not in multipliers]
    if not kept:  # the preset leaves none of the file's blocks: refused before patching, saying so
        from zlab.api import ComfyError
        with pytest.raises(ComfyError, match="nothing to apply"):
            load(lab, name, "fmt/preset_none", 0.9, preset=preset)
        return
    got, _ = load(lab, name, f"fmt/preset_{len(multipliers)}_{sorted(multipliers)[0][:3]}_{preset[:4]}", 0.9, preset=preset)
    changed = assert_exact_change(got, lora_layouts.expected(base_weights, deltas, 0.9, multipliers), base_weights)
    assert sorted({".".join(k.split(".")[:2]) for k in changed}) == sorted(kept)
