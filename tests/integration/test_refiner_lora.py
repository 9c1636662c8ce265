"""ZImageLabRefinerLoRALoader on a real ComfyUI: weight-by-weight effect of each LoRA format and
target, equality with the stock LoraLoaderModelOnly for target 'everything', strength 0, and bad
files that leave the model untouched."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness

pytestmark = pytest.mark.integration

DIM = 256  # tiny DiT width; q, k and v are 256-row slices of the fused qkv
BLOCKS = ("context_refiner.0", "context_refiner.1", "noise_refiner.0", "layers.3")
TARGET_GROUPS = {"context refiner": ("context_refiner",), "noise refiner": ("noise_refiner",),
                 "both refiners": ("context_refiner", "noise_refiner"), "everything": ("context_refiner", "noise_refiner", "layers")}


def make_lora(fmt, rank=4, seed=0, blocks=BLOCKS, width=DIM):
    """(state dict in a given key format, {native weight key: (row slice or None, delta at strength 1)})."""
    gen = torch.Generator().manual_seed(seed)

    def pair(out_f, in_f):
        return 0.1 * torch.randn(out_f, rank, generator=gen), 0.1 * torch.randn(rank, in_f, generator=gen)

    sd, deltas = {}, {}
    for block in blocks:
        if fmt == "peft":  # diffusers module names, PEFT lora_A / lora_B, no alpha (scale 1)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                up, down = pair(width, width)
                sd[f"diffusion_model.{block}.attention.{name}.lora_A.weight"] = down
                sd[f"diffusion_model.{block}.attention.{name}.lora_B.weight"] = up
                deltas.setdefault(f"{block}.attention.qkv.weight", []).append((slice(i * width, (i + 1) * width), up @ down))
            up, down = pair(width, width)
            sd[f"diffusion_model.{block}.attention.to_out.0.lora_A.weight"] = down
            sd[f"diffusion_model.{block}.attention.to_out.0.lora_B.weight"] = up
            deltas[f"{block}.attention.out.weight"] = [(None, up @ down)]
        elif fmt == "kohya":  # native fused names, lora_up / lora_down with alpha
            for name, shape in (("attention_qkv", (3 * width, width)), ("feed_forward_w2", (width, 3 * width))):
                up, down = pair(*shape)
                key = f"lora_unet_{block.replace('.', '_')}_{name}"
                sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
                sd[f"{key}.alpha"] = torch.tensor(2.0)
                native = f"{block}.{name.replace('_qkv', '.qkv').replace('feed_forward_w2', 'feed_forward.w2')}.weight"
                deltas[native] = [(None, (2.0 / rank) * up @ down)]
        elif fmt == "transformer":  # diffusers names with the transformer. prefix, lora_up / lora_down, alpha
            up, down = pair(width, width)
            sd[f"transformer.{block}.attention.to_k.lora_up.weight"] = up
            sd[f"transformer.{block}.attention.to_k.lora_down.weight"] = down
            sd[f"transformer.{block}.attention.to_k.alpha"] = torch.tensor(8.0)
            deltas[f"{block}.attention.qkv.weight"] = [(slice(width, 2 * width), (8.0 / rank) * up @ down)]
            up, down = pair(3 * width, width)
            sd[f"transformer.{block}.feed_forward.w1.lora_up.weight"] = up
            sd[f"transformer.{block}.feed_forward.w1.lora_down.weight"] = down
            sd[f"transformer.{block}.feed_forward.w1.alpha"] = torch.tensor(8.0)
            deltas[f"{block}.feed_forward.w1.weight"] = [(None, (8.0 / rank) * up @ down)]
    return sd, deltas


@pytest.fixture(scope="module")
def loras(lab):
    folder = lab.base / "models" / "loras"
    names = {}
    for fmt in ("peft", "kohya", "transformer"):
        sd, deltas = make_lora(fmt, seed=len(names))
        save_file(sd, str(folder / f"lab_{fmt}.safetensors"))
        names[fmt] = (f"lab_{fmt}.safetensors", deltas)
    return names


def loader_graph():
    return {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}}}


def ours(model_ref, lora_name, strength=1.0, target="context refiner", block_strengths=""):
    return {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": model_ref, "lora_name": lora_name, "strength": strength, "target": target, "block_strengths": block_strengths}}


def save_weights(model_ref, prefix):
    return {"class_type": "ZImageLabTestSaveWeights", "inputs": {"model": model_ref, "filename_prefix": prefix}}


def weights(lab, prefix):
    return load_file(str(lab.output / f"{prefix}.safetensors"))


@pytest.fixture(scope="module")
def base_weights(lab):
    graph = loader_graph()
    graph["w"] = save_weights(["1", 0], "lora/base")
    lab.run(graph)
    return weights(lab, "lora/base")


def expected_weights(base, deltas, strength, groups, multipliers=None):
    out = dict(base)
    for key, parts in deltas.items():
        block = ".".join(key.split(".")[:2])
        if block.split(".")[0] not in groups:
            continue
        scale = strength * (multipliers or {}).get(block, 1.0)
        w = out[key].clone().double()
        for rows, delta in parts:
            if rows is None:
                w += scale * delta.double()
            else:
                w[rows] += scale * delta.double()
        out[key] = w.float()
    return out


def assert_weights(got, want, base, changed_prefixes):
    assert got.keys() == want.keys()
    changed = []
    for key in got:
        if torch.equal(want[key], base[key]):
            assert torch.equal(got[key], base[key]), f"{key} changed but is outside the target"
        else:
            changed.append(key)
            assert torch.allclose(got[key], want[key], atol=1e-6, rtol=1e-5), key
    assert changed and all(k.startswith(changed_prefixes) for k in changed), changed
    return changed


@pytest.mark.parametrize("fmt, target, strength", [
    ("peft", "context refiner", 1.0),
    ("kohya", "context refiner", 0.8),
    ("transformer", "context refiner", -1.5),
    ("peft", "noise refiner", 1.0),
    ("kohya", "both refiners", 1.0),
])
def test_only_the_targeted_blocks_change_weight_by_weight(lab, loras, base_weights, fmt, target, strength):
    name, deltas = loras[fmt]
    prefix = f"lora/{fmt}_{target.replace(' ', '_')}_{strength}"
    graph = loader_graph()
    graph["2"] = ours(["1", 0], name, strength, target)
    graph["w"] = save_weights(["2", 0], prefix)
    result = lab.run(graph)
    groups = TARGET_GROUPS[target]
    changed = assert_weights(weights(lab, prefix), expected_weights(base_weights, deltas, strength, groups),
                             base_weights, groups)
    report = result.outputs["2"]["text"][0]
    per_block = sum(len(parts) for key, parts in deltas.items() if key.startswith("context_refiner.0."))
    n_blocks = sum(1 for b in BLOCKS if b.split(".")[0] in groups)
    assert f"applied {per_block * n_blocks} patches to {n_blocks} blocks" in report, report
    assert "skipped" in report and "layers.3" in report
    assert {k.split(".")[0] for k in changed} == set(groups)


@pytest.mark.parametrize("fmt, strength", [("peft", 0.7), ("kohya", 1.3), ("transformer", -0.4)])
def test_everything_equals_stock_lora_loader_model_only(lab, loras, base_weights, fmt, strength):
    name, deltas = loras[fmt]
    graph = loader_graph()
    graph["2"] = ours(["1", 0], name, strength, "everything")
    graph["3"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name, "strength_model": strength}}
    graph["w2"] = save_weights(["2", 0], f"lora/every_{fmt}")
    graph["w3"] = save_weights(["3", 0], f"lora/stock_{fmt}")
    lab.run(graph)
    a, b = weights(lab, f"lora/every_{fmt}"), weights(lab, f"lora/stock_{fmt}")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert_weights(a, expected_weights(base_weights, deltas, strength, TARGET_GROUPS["everything"]), base_weights,
                   ("context_refiner", "noise_refiner", "layers"))


def test_block_strengths_scale_whole_blocks(lab, loras, base_weights):
    name, deltas = loras["peft"]
    graph = loader_graph()
    graph["2"] = ours(["1", 0], name, 2.0, "both refiners", "context_refiner.0=0\ncontext_refiner.1=0.25, noise_refiner=-1")
    graph["w"] = save_weights(["2", 0], "lora/blocks")
    result = lab.run(graph)
    want = expected_weights(base_weights, deltas, 2.0, ("context_refiner", "noise_refiner"),
                            {"context_refiner.0": 0.0, "context_refiner.1": 0.25, "noise_refiner.0": -1.0})
    changed = assert_weights(weights(lab, "lora/blocks"), want, base_weights, ("context_refiner.1", "noise_refiner.0"))
    assert not any(k.startswith("context_refiner.0") for k in changed)
    assert "block strength 0: context_refiner.0" in result.outputs["2"]["text"][0]


def _sampler(graph, nid, model_ref):
    graph.setdefault("c", {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}})
    graph.setdefault("t", {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["c", 0]}})
    graph.setdefault("e", {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}})
    graph[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model_ref, "positive": ["t", 0], "latent_image": ["e", 0], "seed": 11, "steps": 2, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    graph[nid + "s"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"lora/lat_{nid}"}}
    return nid + "s"


def test_strength_zero_is_identical_and_context_refiner_lora_changes_the_image(lab, loras):
    name, _ = loras["peft"]
    graph = loader_graph()
    graph["2"] = ours(["1", 0], name, 0.0)
    graph["3"] = ours(["1", 0], name, 1.0)
    stock, zero, one = _sampler(graph, "s1", ["1", 0]), _sampler(graph, "s2", ["2", 0]), _sampler(graph, "s3", ["3", 0])
    result = lab.run(graph)
    a, b, c = (lab.latents(result, n)[0] for n in (stock, zero, one))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert "strength 0" in result.outputs["2"]["text"][0]


def _patch_state(lab):
    graph = loader_graph()
    graph["s"] = {"class_type": "ZImageLabTestPatchState", "inputs": {"model": ["1", 0], "tag": "x"}}
    return json.loads(lab.run(graph).outputs["s"]["text"][0])


def _bad_files(folder):
    wrong, _ = make_lora("peft", width=128, blocks=("context_refiner.0",))
    save_file(wrong, str(folder / "bad_shapes.safetensors"))
    layers_only, _ = make_lora("kohya", blocks=("layers.0", "layers.1"))
    save_file(layers_only, str(folder / "layers_only.safetensors"))
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 4)},
              str(folder / "not_zimage.safetensors"))
    (folder / "pickled.pt").write_bytes(b"\x80\x04not a safetensors file")
    (folder / "corrupt.safetensors").write_bytes(b"garbage" * 10)


@pytest.mark.parametrize("lora_name, inputs, words", [
    ("bad_shapes.safetensors", {}, ["wrong shape", "context_refiner.0.attention.qkv.weight", "another model"]),
    ("pickled.pt", {}, ["not a .safetensors file"]),
    ("corrupt.safetensors", {}, ["not a valid safetensors file"]),
    ("layers_only.safetensors", {}, ["nothing to apply for target 'context refiner'", "layers.0-1"]),
    ("not_zimage.safetensors", {}, ["no key ComfyUI maps", "not a Z-Image LoRA"]),
    ("lab_peft.safetensors", {"block_strengths": "context_refiner.7=1"}, ["context_refiner.7", "does not have"]),
    ("lab_peft.safetensors", {"block_strengths": "refiner=1"}, ["block_strengths entry 'refiner=1'"]),
    ("[none]", {}, ["pick a LoRA file"]),
])
def test_bad_input_gets_a_clear_error_and_leaves_the_model_untouched(lab, loras, lora_name, inputs, words):
    from zlab.api import ComfyError

    _bad_files(lab.base / "models" / "loras")
    before = _patch_state(lab)
    graph = loader_graph()
    graph["2"] = ours(["1", 0], lora_name)
    graph["2"]["inputs"].update(inputs)
    _sampler(graph, "s", ["2", 0])
    with pytest.raises(ComfyError) as err:
        lab.run(graph)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert _patch_state(lab) == before and before["patches"] == {}
