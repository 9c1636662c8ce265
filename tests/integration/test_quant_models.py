"""Quantized Z-Image models on a real ComfyUI, loaded by the real loaders (UNETLoader weight_dtype,
scaled fp8 / mixed precision checkpoints, ComfyUI-GGUF): the weights, stock sampling, the LoRA loader and
the refiner LoRA trainer each give what they give on the dequantized float32 model, within a stated tolerance.
(Every other MODEL-patching node: test_quant_nodes.py.)

Tolerances: weights bit-exact to the reference (GGUF: ComfyUI-GGUF's default float16 dequantization,
derived from the gguf package's decoder, see quant_files.comfy_gguf_default_reference); latents 1e-4 of
the reference's largest magnitude; LoRA-patched weights: float32 rounding for GGUF (ComfyUI-GGUF patches
after dequantizing), one storage step for fp8 kinds (ComfyUI rounds a patched fp8 weight back to fp8)."""

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import harness
import lora_layouts
import quant_files
import quant_graphs as qg

sys.path.insert(0, str(harness.TESTING_PACK))
import quant_models  # noqa: E402

pytestmark = pytest.mark.integration

KINDS = ["fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "scaled_fp8", "mixed_precision", "gguf_Q8_0", "gguf_Q4_K"]
FP8_STEP = {"fp8_e4m3fn": (2.0 ** -3, 2.0 ** -9), "fp8_e4m3fn_fast": (2.0 ** -3, 2.0 ** -9), "fp8_e5m2": (2.0 ** -2, 2.0 ** -16)}
NAMES = {"fp8_e4m3fn": "fp8_e4m3fn", "fp8_e4m3fn_fast": "fp8_e4m3fn_fast", "fp8_e5m2": "fp8_e5m2",
         "scaled_fp8": "scaled fp8", "mixed_precision": "scaled fp8", "gguf_Q8_0": "GGUF", "gguf_Q4_K": "GGUF"}


@pytest.fixture(scope="module")
def kinds(lab, comfyui_path):
    gguf_reason = quant_models.gguf_missing_reason(str(comfyui_path))
    return quant_files.write_all(lab.base / "models", harness.TINY_FILES["unet_name"], gguf_reason is None), gguf_reason


def diffusion_file(lab, name):
    return load_file(str(lab.base / "models" / "diffusion_models" / name))


@pytest.mark.parametrize("kind", KINDS)
def test_weights_dequantize_to_the_reference_and_the_kind_is_named(lab, kinds, kind):
    quant, ref = qg.loaders(kinds, kind)
    graph = {"q": quant, "w": {"class_type": "ZImageLabTestSaveFloatWeights", "inputs": {"model": ["q", 0], "filename_prefix": f"quant/w_{kind}"}}}
    result = lab.run(graph)
    got = load_file(str(lab.output / f"quant/w_{kind}.safetensors"))
    want = diffusion_file(lab, ref["inputs"]["unet_name"])
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), (key, (got[key] - want[key]).abs().max())
    name = result.outputs["w"]["text"][0]
    assert name.startswith(NAMES[kind]), name


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_gguf_float16_dequantization_is_within_its_bound_of_the_gguf_package(lab, kinds, qtype):
    """The reference above is ComfyUI-GGUF's default (float16 arithmetic); the gguf package's float32 values
    differ from it by float16 rounding only: Q8_0 half an ulp (2**-11 relative), Q4_K a few ulps of its terms."""
    table, reason = kinds
    if f"gguf_{qtype}" not in table:
        pytest.skip(reason)
    folder = lab.base / "models" / "diffusion_models"
    exact = folder / f"q_{qtype}_exact.safetensors"
    quant_files.write_gguf(folder / harness.TINY_FILES["unet_name"], folder / f"q_{qtype}_again.gguf",
                           folder / f"q_{qtype}_again_ref.safetensors", qtype, exact)
    f16, f32 = load_file(str(folder / f"q_{qtype}_ref.safetensors")), load_file(str(exact))
    worst = 0.0
    for key in f32:
        err = (f16[key].double() - f32[key].double()).abs()
        if qtype == "Q8_0":
            assert bool((err <= 2.0 ** -11 * f32[key].double().abs() + 2.0 ** -25).all()), key
        worst = max(worst, (err.max() / f32[key].double().abs().max()).item())
    assert 0 < worst <= (2.0 ** -9 if qtype == "Q8_0" else 2.0 ** -8), worst  # measured: 3.4e-4 (Q8_0), 8.6e-4 (Q4_K)


def test_gguf_package_decoder_agrees_with_comfyui_gguf_at_float32(kinds):
    """Independent check of the reference: gguf.quants.dequantize == ComfyUI-GGUF's dequantize at float32."""
    table, reason = kinds
    path = quant_models.gguf_pack_path()
    if "gguf_Q4_K" not in table or path is None:
        pytest.skip(reason)
    import importlib.util

    import gguf

    spec = importlib.util.spec_from_file_location("zlab_test_gguf_dequant", path / "dequant.py")
    dequant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dequant)
    rng = np.random.default_rng(0)
    for qtype in ("Q8_0", "Q4_K"):
        t = getattr(gguf.GGMLQuantizationType, qtype)
        packed = (quant_files.random_q4_k((8, 512), 3) if qtype == "Q4_K"
                  else gguf.quants.quantize(rng.standard_normal((8, 512)).astype(np.float32), t))
        ref = torch.from_numpy(np.asarray(gguf.quants.dequantize(packed, t), dtype=np.float32))
        got32 = dequant.dequantize(torch.from_numpy(packed), t, (8, 512), dtype=torch.float32)
        got16 = dequant.dequantize(torch.from_numpy(packed), t, (8, 512), dtype=None)
        assert torch.equal(got32, ref), qtype
        assert got16.dtype == torch.float16  # the default: float16 arithmetic (the source of the old mismatch)
        assert torch.equal(got16.float(), torch.from_numpy(quant_files.comfy_gguf_default_reference(packed, qtype)))


@pytest.mark.parametrize("kind", KINDS)
def test_stock_sampling_matches_the_dequantized_model(lab, kinds, kind):
    q, r = qg.run_pair(lab, kinds, kind)
    assert qg.rel_err(q, r) <= qg.OUTPUT_TOL, qg.rel_err(q, r)


@pytest.fixture(scope="module")
def musubi_lora(lab):
    base = diffusion_file(lab, harness.TINY_FILES["unet_name"])
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    sd, deltas = lora_layouts.make("musubi", shapes, seed=77)
    save_file(sd, str(lab.base / "models" / "loras" / "quant_musubi.safetensors"))
    return "quant_musubi.safetensors", deltas


@pytest.mark.parametrize("kind", KINDS)
def test_lora_loader_on_quantized_weights_adds_the_formula_delta(lab, kinds, kind, musubi_lora):
    name, deltas = musubi_lora
    quant, ref = qg.loaders(kinds, kind)
    graph = {"q": quant, "l": {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
        "model": ["q", 0], "lora_name": name, "strength": 0.8, "target": "everything"}},
        "w": {"class_type": "ZImageLabTestSaveFloatWeights", "inputs": {"model": ["l", 0], "filename_prefix": f"quant/lora_{kind}"}}}
    lab.run(graph)
    got = load_file(str(lab.output / f"quant/lora_{kind}.safetensors"))
    base = diffusion_file(lab, ref["inputs"]["unet_name"])
    want = lora_layouts.expected(base, deltas, 0.8)
    for key in base:
        err = (got[key].double() - want[key].double()).abs()
        if key not in deltas:
            assert torch.equal(got[key], base[key]), key
        elif kind.startswith("gguf"):
            assert err.max() <= 2e-6, (key, err.max())
        elif kind in FP8_STEP:
            rel, floor = FP8_STEP[kind]
            assert bool((err <= rel * want[key].double().abs() + floor).all()), (key, err.max())
        else:  # scaled fp8: one fp8 step of the scaled value
            bound = 2.0 ** -3 * want[key].double().abs() + want[key].double().abs().max() * 2.0 ** -9
            assert bool((err <= bound).all()), (key, err.max())


def train(graph, nid, model_ref, kind):
    qg._common(graph)
    graph[nid] = {"class_type": "ZImageLabRefinerLoRATrain", "inputs": {
        "model": model_ref, "clip": ["c", 0], "prompts": "a lighthouse\na cat", "style": "watercolor",
        "preserve_prompts": "a photo of a dog", "rank": 2, "alpha": 2.0, "learning_rate": 1e-3, "steps": 2,
        "seed": 0, "preservation_weight": 1.0, "modules": "attention + feed-forward", "lora_name": f"quant/{nid}_{kind}"}}


@pytest.mark.parametrize("kind", KINDS)
def test_refiner_lora_trainer_trains_the_same_lora_as_on_the_dequantized_model(lab, kinds, kind, musubi_lora):
    """The trainer reads the refiner's weights itself (quant.patched_float_weight): the trained file equals the one
    from the reference model (GGUF: with a LoRA already on the model, which ComfyUI-GGUF keeps apart)."""
    quant, ref = qg.loaders(kinds, kind)
    graph = {"q": quant, "r": ref}
    for k in ("q", "r"):
        model = [k, 0]
        if kind.startswith("gguf"):  # fp8 kinds round a LoRA-patched weight back to fp8 (stochastically): no reference
            graph["l" + k] = {"class_type": "ZImageLabRefinerLoRALoader", "inputs": {
                "model": model, "lora_name": musubi_lora[0], "strength": 0.8, "target": "everything"}}
            model = ["l" + k, 0]
        train(graph, "train_" + k, model, kind)
    lab.run(graph)
    loras = lab.base / "models" / "loras" / "quant"
    got = {k: load_file(str(sorted(loras.glob(f"train_{k}_{kind}_*.safetensors"))[-1])) for k in ("q", "r")}
    assert got["q"].keys() == got["r"].keys() and got["q"]
    for key, want in got["r"].items():
        assert torch.allclose(got["q"][key], want, rtol=1e-4, atol=1e-4 * want.abs().max().item()), key
