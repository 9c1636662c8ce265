"""core.refiner_lora: block membership, targets, per-block strengths, shape checks, the report."""

import pytest

from core import refiner_lora as rl


def test_block_of_names_the_block_or_other():
    assert rl.block_of("diffusion_model.context_refiner.1.attention.qkv.weight") == "context_refiner.1"
    assert rl.block_of("diffusion_model.layers.29.feed_forward.w2.weight") == "layers.29"
    assert rl.block_of("noise_refiner.0.adaLN_modulation.0.bias") == "noise_refiner.0"
    assert rl.block_of("diffusion_model.cap_embedder.1.weight") == "other"
    assert rl.block_of("diffusion_model.layers_extra.1.weight") == "other"


@pytest.mark.parametrize("target, inside", [
    ("context refiner", {"context_refiner.0", "context_refiner.1"}),
    ("noise refiner", {"noise_refiner.0", "noise_refiner.1"}),
    ("both refiners", {"context_refiner.0", "context_refiner.1", "noise_refiner.0", "noise_refiner.1"}),
    ("everything", {"context_refiner.0", "context_refiner.1", "noise_refiner.0", "noise_refiner.1", "layers.0", "other"}),
])
def test_targets(target, inside):
    blocks = {"context_refiner.0", "context_refiner.1", "noise_refiner.0", "noise_refiner.1", "layers.0", "other"}
    assert {b for b in blocks if rl.in_target(b, target)} == inside


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="target is 'refiners'"):
        rl.in_target("layers.0", "refiners")


def test_block_strengths_last_entry_wins_and_ranges_work():
    entries = rl.parse_block_strengths("context_refiner=0.5\ncontext_refiner.1=2; layers.3-5=0, other=-1 # comment\n")
    assert rl.block_multiplier(entries, "context_refiner.0") == 0.5
    assert rl.block_multiplier(entries, "context_refiner.1") == 2.0
    assert [rl.block_multiplier(entries, f"layers.{i}") for i in range(2, 7)] == [1.0, 0, 0, 0, 1.0]
    assert rl.block_multiplier(entries, "noise_refiner.0") == 1.0
    assert rl.block_multiplier(rl.parse_block_strengths("other=3"), "other") == 3.0
    assert rl.parse_block_strengths("  ") == []


@pytest.mark.parametrize("text", ["refiner=1", "context_refiner.1", "layers.5-2=1", "other.1=0", "layers.1=abc",
                                  "layers.1=nan"])
def test_bad_block_strengths_name_the_entry(text):
    with pytest.raises(ValueError, match="block_strengths entry"):
        rl.parse_block_strengths(text)


def test_block_strength_for_a_missing_block_is_an_error():
    blocks = {"context_refiner.0", "context_refiner.1", "layers.0"}
    rl.check_entries_match(rl.parse_block_strengths("context_refiner.1=0"), blocks)
    with pytest.raises(ValueError, match="context_refiner.2"):
        rl.check_entries_match(rl.parse_block_strengths("context_refiner.2=0"), blocks)
    with pytest.raises(ValueError, match="noise_refiner"):
        rl.check_entries_match(rl.parse_block_strengths("noise_refiner=0"), blocks)


def test_lora_shape_check():
    assert rl.lora_shape_error((768, 256), (768, 8), (8, 256)) is None
    assert rl.lora_shape_error((256, 256), (256, 8), (8, 256)) is None
    assert "rows" in rl.lora_shape_error((256, 256), (128, 8), (8, 256))
    assert "rank" in rl.lora_shape_error((256, 256), (256, 8), (4, 256))
    assert "inputs" in rl.lora_shape_error((256, 768), (256, 8), (8, 256))
    assert rl.lora_shape_error((64, 16, 3, 3), (64, 4, 1, 1), (4, 16, 3, 3)) is None  # conv LoRA


def test_report_counts_and_compresses_blocks():
    text = rl.report("x.safetensors", 0.5, "context refiner", {"context_refiner.0": 4, "context_refiner.1": 4},
                     {f"layers.{i}": 2 for i in range(30)} | {"other": 1}, {}, {"a.lora_up.weight": "no weight"})
    lines = text.splitlines()
    assert lines[0] == "x.safetensors: applied 8 patches to 2 blocks at strength 0.5 (target context refiner): context_refiner.0-1"
    assert lines[1] == "skipped 61 patches outside the target: layers.0-29, other"
    assert lines[2] == "1 file keys not loaded:" and lines[3] == "  a.lora_up.weight: no weight"
    assert rl.compress_blocks(["layers.1", "layers.2", "layers.7", "noise_refiner.0"]) == "layers.1-2,7, noise_refiner.0"
