"""Every MODEL-patching node on every weight kind, on a real ComfyUI: the quantized model (UNETLoader fp8
weight dtypes, scaled fp8 / mixed precision checkpoints, ComfyUI-GGUF Q8_0 / Q4_K) through the node gives the
latents the same node gives on a float32 model holding the dequantized weights, within OUTPUT_TOL (1e-4 of
the reference's largest magnitude), or the node refuses before patching with a message naming the model kind.
Bad and extreme values on those models end in a clear error or a finite result, never a raw error."""

import sys

import pytest

import harness
import quant_files
import quant_graphs as qg

sys.path.insert(0, str(harness.TESTING_PACK))
import quant_models  # noqa: E402

pytestmark = pytest.mark.integration

KINDS = ["fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "scaled_fp8", "mixed_precision", "gguf_Q8_0", "gguf_Q4_K"]
REFUSED: dict = {}  # (case, kind) -> words the refusal must contain; nothing refuses today


@pytest.fixture(scope="module")
def kinds(lab, comfyui_path):
    gguf_reason = quant_models.gguf_missing_reason(str(comfyui_path))
    return quant_files.write_all(lab.base / "models", harness.TINY_FILES["unet_name"], gguf_reason is None), gguf_reason


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(qg.CASES))
def test_node_matches_the_dequantized_model_or_refuses(lab, kinds, kind, name):
    from zlab.api import ComfyError

    case, changes = qg.CASES[name]
    if (name, kind) in REFUSED:
        with pytest.raises(ComfyError) as err:
            qg.run_pair(lab, kinds, kind, case)
        assert all(w in str(err.value) for w in REFUSED[name, kind]), str(err.value)
        return
    q, r = qg.run_pair(lab, kinds, kind, case)
    assert q.shape == r.shape and q.isfinite().all()
    assert qg.rel_err(q, r) <= qg.OUTPUT_TOL, qg.rel_err(q, r)
    if changes:  # the node did something here, so the agreement is not the stock result's
        plain, _ = qg.run_pair(lab, kinds, kind)
        assert qg.rel_err(q, plain) > 10 * qg.OUTPUT_TOL


# the schema's extreme settings must run to a finite result; bad values must be refused naming the input
EXTREME = {"nag": {"scale": 50.0, "tau": 20.0, "alpha": 1.0}, "rope_extend": {"factor": 64.0},
           "refined_steering": {"alpha": -100.0}, "layer_ablation": {"scale": -10.0}}
BAD = {"layer_ablation": ({"layers": "0-99"}, "layers"), "skip_layer_guidance": ({"layers": "x"}, "layers"),
       "refiner_ablation": ({"context_blocks": "7"}, "context_blocks")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(EXTREME))
def test_extreme_values_run_on_quantized_models(lab, kinds, kind, name):
    q, r = qg.run_pair(lab, kinds, kind, qg.CASES[name][0], **EXTREME[name])
    assert q.shape == r.shape and bool(q.isfinite().all()) and bool(r.isfinite().all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(BAD))
def test_bad_values_are_refused_naming_the_input(lab, kinds, kind, name):
    from zlab.api import ComfyError

    over, word = BAD[name]
    with pytest.raises(ComfyError) as err:
        qg.run_pair(lab, kinds, kind, qg.CASES[name][0], **over)
    assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("name", [*qg.CASES, *qg.LORA_CASES])
def test_every_patching_node_refuses_a_nunchaku_model_by_name(lab, name):
    """nunchaku SVDQuant replaces the blocks' layers; detected by class names (no nunchaku wheel here)."""
    from zlab.api import ComfyError

    case = qg.LORA_CASES.get(name) or qg.CASES[name][0]
    graph = {"b": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "n": {"class_type": "ZImageLabTestFakeNunchaku", "inputs": {"model": ["b", 0]}}}
    latent = case(graph, f"nunchaku_{name}", ["n", 0])
    if latent:
        qg.save(graph, f"nunchaku_{name}_save", latent)
    with pytest.raises(ComfyError) as err:
        lab.run(graph)
    assert "nunchaku SVDQuant" in str(err.value) and "instead" in str(err.value), str(err.value)


# mixed precision keeps its refiners in float32: those blocks do get the fp8 matmul (by design), so there is
# no unpatched reference for that kind (measured 6.8e-2 on the tiny random model; see docs/performance.md)
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "mixed_precision"])
def test_accelerator_blocks_read_quantized_weights(lab, kinds, kind):
    """With fp8_matmul the accelerator replaces every block and fetches the weights itself: on quantized weights
    (fp8, QuantizedTensor, GGUF) it uses them as the layer dequantizes them (no second fp8 rounding), so the
    result is the dequantized model's unpatched one, within OUTPUT_TOL."""
    quant, ref = qg.loaders(kinds, kind)
    graph = {"q": quant, "r": ref}
    accel = qg.patched("ZImageLabAccelerate", attention="math", compile_blocks=False, cuda_graphs=False,
                       fp8_matmul=True, sync_free_sampling=False, cache_text_encodes=False, graph_text_encoder="off",
                       vae_channels_last=False, vae_compile=False)
    q = qg.save(graph, f"accel_blocks_q_{kind}", accel(graph, "accel_blocks_q", ["q", 0]))
    r = qg.save(graph, f"accel_blocks_r_{kind}", qg.sample(graph, "stock_r_s", ["r", 0]))
    result = lab.run(graph)
    got, want = lab.latents(result, q)[0], lab.latents(result, r)[0]
    assert qg.rel_err(got, want) <= qg.OUTPUT_TOL, qg.rel_err(got, want)
