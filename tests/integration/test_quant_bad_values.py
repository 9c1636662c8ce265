"""Bad and extreme values on quantized models (issue 15): on an fp8 e4m3fn model, a scaled-fp8 checkpoint and a
ComfyUI-GGUF Q4_K model, each MODEL-patching node (the LoRA loader and trainer, the accelerator and the ensemble /
trajectory / attribution samplers included) given NaN / inf / huge / negative values, out-of-range layers or steps,
unparsable lists or a 20,000-character prompt through POST /prompt ends in an error naming the input (ComfyUI's validation or the pack's own), with no raw
traceback; the server answers afterwards and the loaded quantized model still samples like its dequantized reference."""

import sys

import pytest
from safetensors.torch import load_file, save_file

import harness
import lora_layouts
import quant_files
import quant_graphs as qg

sys.path.insert(0, str(harness.TESTING_PACK))
import quant_models  # noqa: E402

pytestmark = pytest.mark.integration

KINDS = ["fp8_e4m3fn", "scaled_fp8", "gguf_Q4_K"]
NAN, INF = float("nan"), float("inf")
BAD = [  # (case, inputs, the input the error must name)
    ("nag", {"scale": NAN}, "scale"), ("nag", {"tau": INF}, "tau"), ("nag", {"alpha": -1e30}, "alpha"),
    ("rope_extend", {"factor": NAN}, "factor"), ("rope_extend", {"factor": -4.0}, "factor"),
    ("refined_steering", {"alpha": NAN}, "alpha"), ("refined_steering", {"alpha": 1e308}, "alpha"),
    ("layer_ablation", {"scale": INF}, "scale"), ("layer_ablation", {"layers": "0-99"}, "layers"),
    ("layer_ablation", {"layers": "-3"}, "layers"), ("skip_layer_guidance", {"scale": NAN}, "scale"),
    ("skip_layer_guidance", {"layers": "40"}, "layers"), ("refiner_ablation", {"context_blocks": "7"}, "context_blocks"),
    ("refiner_ablation", {"noise_scales": "nan"}, "noise_scales"),
    ("lora_loader", {"lora_name": "quant_bad_values.safetensors", "strength": NAN}, "strength"),
    ("lora_loader", {"lora_name": "quant_bad_values.safetensors", "block_strengths": "refiner=1"}, "block_strengths"),
    ("lora_trainer", {"learning_rate": NAN}, "learning_rate"), ("lora_trainer", {"prompts": "word " * 4000}, "prompts"),
    ("lora_trainer", {"rank": 0}, "rank"),
    ("accelerate", {"attention": "fastest"}, "attention"),
    ("ensemble", {"seeds": "one, two"}, "seeds"), ("ensemble", {"cfg": NAN}, "cfg"),
    ("trajectory", {"cfg": NAN}, "cfg"), ("trajectory", {"every": 0}, "every"),
    ("token_attribution", {"prompt": "word " * 4000}, "prompt"), ("token_attribution", {"batch_size": 0}, "batch_size"),
    ("caption_noise", {"strength": NAN}, "strength"), ("initial_noise_structure", {"strength": INF}, "strength"),
    ("early_step_variation", {"strength": NAN}, "strength"),
]


@pytest.fixture(scope="module")
def lora_file(lab):
    """A context-refiner LoRA for the tiny DiT, so the loader's own inputs (not a missing file) meet the check."""
    shapes = {k: tuple(v.shape) for k, v in
              load_file(str(lab.base / "models" / "diffusion_models" / harness.TINY_FILES["unet_name"])).items()}
    state, _ = lora_layouts.make("musubi", shapes, blocks=("context_refiner.0",))
    save_file(state, str(lab.base / "models" / "loras" / "quant_bad_values.safetensors"))


@pytest.fixture(scope="module")
def kinds(lab, comfyui_path):
    gguf_reason = quant_models.gguf_missing_reason(str(comfyui_path))
    return quant_files.write_all(lab.base / "models", harness.TINY_FILES["unet_name"], gguf_reason is None), gguf_reason


def fresh_pair(lab, kinds, kind, seed):
    """The quantized model and its dequantized reference sampled at a seed no earlier prompt used (so the
    cached loader's MODEL samples again, rather than the sampler's cached output coming back)."""
    quant, ref = qg.loaders(kinds, kind)
    graph, saves = {"q": quant, "r": ref}, {}
    for k in ("q", "r"):
        qg._common(graph)
        graph[f"fresh_{k}"] = {"class_type": "ZImageLabSampler", "inputs": {"model": [k, 0], **qg.settings(seed=seed)}}
        saves[k] = qg.save(graph, f"badfresh_{kind}_{k}_{seed}", [f"fresh_{k}", 0])
    result = lab.run(graph)
    return lab.latents(result, saves["q"])[0], lab.latents(result, saves["r"])[0]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_values_on_quantized_models_are_refused_naming_the_input(lab, kinds, lora_file, kind):
    from zlab.api import ComfyError

    quant, _ = qg.loaders(kinds, kind)
    failures = []
    for i, (name, over, word) in enumerate(BAD):
        graph = {"q": quant}
        out = (qg.LORA_CASES.get(name) or qg.CASES[name][0])(graph, f"bad{i}", ["q", 0], **over)
        if out is not None:
            qg.save(graph, f"bad_{kind}_{i}", out)
        try:
            lab.run(graph)
            failures.append(f"{name} {over}: ran without an error")
        except ComfyError as err:
            msg = str(err)
            if word not in msg or "Traceback" in msg:
                failures.append(f"{name} {over}: {msg[:300]}")
    q, r = fresh_pair(lab, kinds, kind, seed=911)  # the server answers; the loaded model still is the reference's
    assert q.isfinite().all() and qg.rel_err(q, r) <= qg.OUTPUT_TOL, qg.rel_err(q, r)
    assert not failures, "\n".join(failures)
