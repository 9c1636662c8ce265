"""Layer surgery on a real ComfyUI server: SLG, refiner and main-layer ablations on the tiny Z-Image DiT.

The block trace (a test-only node) hooks the stock block objects, so it shows what really ran:
a skipped block leaves no record, a repeated one leaves one per run.
"""

import json
import uuid
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

import harness
from core import sampler as core_sampler
from zlab import workflow as wf
from zlab.api import ComfyError

pytestmark = pytest.mark.integration

N_LAYERS = 30  # the tiny DiT keeps Z-Image's real 30 main layers
ALL_LAYERS = [f"layers.{i}" for i in range(N_LAYERS)]
CONTEXT = ["context_refiner.0", "context_refiner.1"]
NOISE = ["noise_refiner.0", "noise_refiner.1"]
STOCK_BLOCKS = CONTEXT + NOISE + ALL_LAYERS


def base_graph(prompt="a red fox in the snow"):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def add_sampler(api, nid, model, seed=7, steps=8, sampler_name="res_multistep", cfg=1.0, shift=3.0):
    """A Z-Image sampler on `model` saving its latent under node id `nid`_save."""
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": ["3", 0], "latent_image": ["5", 0], "seed": seed, "steps": steps, "shift": shift,
        "sampler_name": sampler_name, "scheduler": "simple", "cfg": cfg, "denoise": 1.0,
        **({"negative": ["4", 0]} if cfg != 1.0 else {})}}
    api[f"{nid}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0],
                                                                 "filename_prefix": f"surgery/{nid}_{uuid.uuid4().hex[:6]}"}}


def add_node(api, nid, class_type, **inputs):
    api[nid] = {"class_type": class_type, "inputs": inputs}
    return [nid, 0]


def slg(api, nid, model, layers="7-12", scale=2.5, start=0.05, end=0.5):
    return add_node(api, nid, "ZImageLabSkipLayerGuidance", model=model, layers=layers, scale=scale,
                    start_percent=start, end_percent=end)


def refiner(api, nid, model, context_blocks="all", context_scales="1.0", noise_blocks="all", noise_scales="1.0",
            start=0.0, end=1.0):
    return add_node(api, nid, "ZImageLabRefinerAblation", model=model, context_blocks=context_blocks,
                    context_scales=context_scales, noise_blocks=noise_blocks, noise_scales=noise_scales,
                    start_percent=start, end_percent=end)


def ablation(api, nid, model, layers="", scale=0.0, start=0.0, end=1.0):
    return add_node(api, nid, "ZImageLabLayerAblation", model=model, layers=layers, scale=scale,
                    start_percent=start, end_percent=end)


def traced(api, nid, model, record_tensors=False):
    """Insert a block trace on `model`; returns (traced model ref, label)."""
    label = f"{nid}_{uuid.uuid4().hex[:8]}"
    return add_node(api, nid, "ZImageLabTestBlockTrace", model=model, label=label, record_tensors=record_tensors), label


def report(api, nid, sampler_id, label):
    add_node(api, nid, "ZImageLabTestTraceReport", samples=[sampler_id, 0], label=label)


def read_trace(lab, result, nid):
    out = result.outputs[nid]
    calls = json.loads(out["trace"][0])
    tensors = load_file(str(lab.output / out["tensor_files"][0])) if out.get("tensor_files") else {}
    return calls, tensors


def latent(lab, result, nid):
    (tensor,) = lab.latents(result, f"{nid}_save")
    return tensor


def by_sigma(calls):
    groups = defaultdict(list)
    for call in calls:
        groups[round(call["sigma"], 6)].append(call)
    return groups


def window_sigmas(schedule, start, end, shift=3.0):
    """Steps inside [start, end] percent: percent p is the flow time t = 1 - p, shifted (computed here, not by the pack)."""
    hi = float(core_sampler.shifted_sigma(1.0 - start, shift)) if start > 0 else 1.0
    lo = float(core_sampler.shifted_sigma(1.0 - end, shift)) if end < 1 else 0.0
    return {round(s, 6) for s in schedule if lo <= s <= hi}


# ---------------------------------------------------------------- identity settings

@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_every_identity_setting_equals_the_stock_model(lab, cfg):
    api = base_graph()
    add_sampler(api, "stock", ["1", 0], cfg=cfg)
    add_sampler(api, "slg0", slg(api, "10", ["1", 0], scale=0.0), cfg=cfg)
    add_sampler(api, "ref", refiner(api, "11", ["1", 0]), cfg=cfg)
    add_sampler(api, "ref_explicit", refiner(api, "12", ["1", 0], context_blocks="0, 1", context_scales="1, 1",
                                             noise_blocks="0-1", noise_scales="1.0"), cfg=cfg)
    add_sampler(api, "abl_none", ablation(api, "13", ["1", 0], layers=""), cfg=cfg)
    add_sampler(api, "abl_one", ablation(api, "14", ["1", 0], layers="3-9", scale=1.0), cfg=cfg)
    result = lab.run(api)
    stock = latent(lab, result, "stock")
    assert stock.abs().max() > 0 and torch.isfinite(stock).all()
    for name in ("slg0", "ref", "ref_explicit", "abl_none", "abl_one"):
        assert torch.equal(latent(lab, result, name), stock), name


# ---------------------------------------------------------------- skip-layer guidance

@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_slg_skips_the_named_layers_only_inside_its_window(lab, cfg):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0])
    add_sampler(api, "slg", slg(api, "10", model), cfg=cfg)  # the research preset: 7-12, 2.5, 5%-50%
    report(api, "20", "slg", label)
    add_sampler(api, "stock", ["1", 0], cfg=cfg)
    result = lab.run(api)
    calls, _ = read_trace(lab, result, "20")
    schedule = result.outputs["slg"]["sigmas"][:-1]
    inside = window_sigmas(schedule, 0.05, 0.5)
    assert 0 < len(inside) < len(schedule)  # the preset window holds some steps, not all
    skipped_pass = [b for b in STOCK_BLOCKS if b not in {f"layers.{i}" for i in range(7, 13)}]
    groups = by_sigma(calls)
    assert sorted(groups) == sorted(round(s, 6) for s in schedule)
    main_batch = 2 if cfg != 1.0 else 1
    for sigma, step_calls in groups.items():
        if sigma in inside:
            assert len(step_calls) == 2, (sigma, step_calls)
            normal, extra = step_calls
            assert normal["blocks"] == STOCK_BLOCKS and normal["batch"] == main_batch
            assert extra["blocks"] == skipped_pass and extra["batch"] == 1 and extra["cond_or_uncond"] == [0]
        else:
            assert len(step_calls) == 1, (sigma, step_calls)  # no extra pass outside the window
            assert step_calls[0]["blocks"] == STOCK_BLOCKS and step_calls[0]["batch"] == main_batch
    assert not torch.equal(latent(lab, result, "slg"), latent(lab, result, "stock"))


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_slg_adds_scale_times_cond_minus_cond_skipped(lab, cfg):
    # One Euler step from sigma 1 returns the model's denoised prediction, an affine image of the
    # DiT output: so SLG's result must equal  guided + scale * (cond - cond_with_layers_skipped)
    # where cond comes from a stock cfg-1 sampler and cond_skipped from a cfg-1 sampler with the
    # layers ablated by the other node.
    scale = 2.5
    api = base_graph()
    one_step = {"steps": 1, "sampler_name": "euler"}
    add_sampler(api, "slg", slg(api, "10", ["1", 0], layers="7-12", scale=scale, start=0.0, end=1.0), cfg=cfg, **one_step)
    add_sampler(api, "guided", ["1", 0], cfg=cfg, **one_step)
    add_sampler(api, "cond", ["1", 0], cfg=1.0, **one_step)
    add_sampler(api, "skipped", ablation(api, "11", ["1", 0], layers="7-12", scale=0.0), cfg=1.0, **one_step)
    result = lab.run(api)
    got = latent(lab, result, "slg")
    guided, cond, skipped = (latent(lab, result, n) for n in ("guided", "cond", "skipped"))
    expected = guided + scale * (cond - skipped)
    assert (cond - skipped).abs().max() > 1e-3  # skipping the layers matters
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


# ---------------------------------------------------------------- refiner ablations

def test_skipping_the_context_refiner_never_calls_its_blocks(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0])
    add_sampler(api, "noctx", refiner(api, "10", model, context_blocks="none"))
    report(api, "20", "noctx", label)
    add_sampler(api, "stock", ["1", 0])
    result = lab.run(api)
    calls, _ = read_trace(lab, result, "20")
    assert len(calls) == 8
    for call in calls:
        assert call["blocks"] == NOISE + ALL_LAYERS  # no context_refiner.* at all
    assert not torch.equal(latent(lab, result, "noctx"), latent(lab, result, "stock"))


def test_refiner_blocks_run_in_the_chosen_order_and_repeat(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0], record_tensors=True)
    add_sampler(api, "r", refiner(api, "10", model, context_blocks="1", noise_blocks="1, 0, 0"), steps=2)
    report(api, "20", "r", label)
    result = lab.run(api)
    calls, tensors = read_trace(lab, result, "20")
    assert len(calls) == 2
    for n, call in enumerate(calls):
        assert call["blocks"] == ["context_refiner.1", "noise_refiner.1", "noise_refiner.0", "noise_refiner.0"] + ALL_LAYERS
        # a repeated block is fed its own output: the chain is x -> nr1 -> nr0 -> nr0
        for k in (1, 2):
            assert torch.equal(tensors[f"{n}.{k + 1}.{call['blocks'][k + 1]}.in"], tensors[f"{n}.{k}.{call['blocks'][k]}.out"])


def test_refiner_scale_multiplies_each_blocks_residual_update(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0], record_tensors=True)
    add_sampler(api, "r", refiner(api, "10", model, context_scales="0.5, 1", noise_scales="1.0, -1.5"), steps=1)
    report(api, "20", "r", label)
    result = lab.run(api)
    (call,), t = read_trace(lab, result, "20")
    assert call["blocks"] == STOCK_BLOCKS
    x0, y0 = t["0.0.context_refiner.0.in"], t["0.0.context_refiner.0.out"]
    assert torch.allclose(t["0.1.context_refiner.1.in"], x0 + 0.5 * (y0 - x0), atol=1e-6)
    # noise_refiner.1 scaled by -1.5: what layer 0 receives for the image tokens is x + (-1.5) * (y - x)
    x1, y1 = t["0.3.noise_refiner.1.in"], t["0.3.noise_refiner.1.out"]
    layer0_in = t["0.4.layers.0.in"]
    image_part = layer0_in[:, -x1.shape[1]:]
    assert torch.allclose(image_part, x1 + (-1.5) * (y1 - x1), atol=1e-5)


# ---------------------------------------------------------------- main-layer ablations

def test_layer_ablation_skips_layers_for_the_whole_schedule(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0])
    add_sampler(api, "abl", ablation(api, "10", model, layers="3, 17"))
    report(api, "20", "abl", label)
    add_sampler(api, "stock", ["1", 0])
    result = lab.run(api)
    calls, _ = read_trace(lab, result, "20")
    assert len(calls) == 8
    expected = [b for b in STOCK_BLOCKS if b not in ("layers.3", "layers.17")]
    assert all(call["blocks"] == expected for call in calls)
    assert not torch.equal(latent(lab, result, "abl"), latent(lab, result, "stock"))


def test_layer_ablation_window_limits_it_to_part_of_the_schedule(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0])
    add_sampler(api, "abl", ablation(api, "10", model, layers="5", start=0.3, end=0.7))
    report(api, "20", "abl", label)
    result = lab.run(api)
    calls, _ = read_trace(lab, result, "20")
    inside = window_sigmas(result.outputs["abl"]["sigmas"][:-1], 0.3, 0.7)
    assert 0 < len(inside) < 8
    for call in calls:
        if round(call["sigma"], 6) in inside:
            assert call["blocks"] == [b for b in STOCK_BLOCKS if b != "layers.5"]
        else:
            assert call["blocks"] == STOCK_BLOCKS


def test_layer_scale_multiplies_the_residual_update(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0], record_tensors=True)
    add_sampler(api, "abl", ablation(api, "10", model, layers="5", scale=0.5), steps=1)
    report(api, "20", "abl", label)
    result = lab.run(api)
    (call,), t = read_trace(lab, result, "20")
    assert call["blocks"] == STOCK_BLOCKS
    x, y = t["0.9.layers.5.in"], t["0.9.layers.5.out"]
    assert torch.allclose(t["0.10.layers.6.in"], x + 0.5 * (y - x), atol=1e-6)
    assert not torch.allclose(t["0.10.layers.6.in"], y, atol=1e-4)


def test_slg_on_an_ablated_model_keeps_the_ablation_in_both_passes(lab):
    api = base_graph()
    model, label = traced(api, "9", ["1", 0])
    add_sampler(api, "s", slg(api, "11", ablation(api, "10", model, layers="20"), layers="7", start=0.0, end=1.0), steps=2)
    report(api, "20", "s", label)
    calls, _ = read_trace(lab, lab.run(api), "20")
    assert len(calls) == 4
    for normal, extra in zip(calls[::2], calls[1::2]):
        assert normal["blocks"] == [b for b in STOCK_BLOCKS if b != "layers.20"]
        assert extra["blocks"] == [b for b in STOCK_BLOCKS if b not in ("layers.20", "layers.7")]


# ---------------------------------------------------------------- bad input

def fingerprint(lab):
    api = {"1": base_graph()["1"], "2": {"class_type": "ZImageLabTestModelFingerprint", "inputs": {"model": ["1", 0]}}}
    return json.loads(lab.run(api).outputs["2"]["fingerprint"][0])


@pytest.mark.parametrize("class_type, inputs, words", [
    ("ZImageLabSkipLayerGuidance", {"layers": "7-35", "scale": 2.5, "start_percent": 0.05, "end_percent": 0.5},
     ["layers", "30", "out of range", "0-29"]),
    ("ZImageLabSkipLayerGuidance", {"layers": "", "scale": 2.5, "start_percent": 0.05, "end_percent": 0.5},
     ["layers is empty", "scale"]),
    ("ZImageLabSkipLayerGuidance", {"layers": "7-12", "scale": 2.5, "start_percent": 0.6, "end_percent": 0.5},
     ["start_percent", "after end_percent"]),
    ("ZImageLabSkipLayerGuidance", {"layers": "seven", "scale": 2.5, "start_percent": 0.05, "end_percent": 0.5},
     ["layers", "cannot read 'seven'"]),
    ("ZImageLabLayerAblation", {"layers": "30", "scale": 0.0, "start_percent": 0.0, "end_percent": 1.0},
     ["layers", "index 30 is out of range", "30 main layers"]),
    ("ZImageLabLayerAblation", {"layers": "4", "scale": 0.0, "start_percent": 0.9, "end_percent": 0.1},
     ["start_percent", "after end_percent"]),
    ("ZImageLabRefinerAblation", {"context_blocks": "2", "context_scales": "1.0", "noise_blocks": "all",
                                  "noise_scales": "1.0", "start_percent": 0.0, "end_percent": 1.0},
     ["context_blocks", "index 2 is out of range", "2 context-refiner blocks"]),
    ("ZImageLabRefinerAblation", {"context_blocks": "all", "context_scales": "1.0", "noise_blocks": "all",
                                  "noise_scales": "1, 2, 3", "start_percent": 0.0, "end_percent": 1.0},
     ["noise_scales", "3 factors for 2 blocks"]),
])
def test_bad_input_gets_a_clear_error_and_leaves_the_model_untouched(lab, class_type, inputs, words):
    before = fingerprint(lab)
    api = base_graph()
    add_sampler(api, "s", add_node(api, "10", class_type, model=["1", 0], **inputs), steps=1)
    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert f"failed in node 10 ({class_type})" in str(err.value)
    after = fingerprint(lab)
    assert after == before  # the same cached MODEL object, with the same patches, wrappers and options


def test_the_fingerprint_sees_a_patched_clone(lab):
    # guards the test above: the fingerprint does change when a node patches a model
    before = fingerprint(lab)
    api = {"1": base_graph()["1"]}
    add_node(api, "2", "ZImageLabSkipLayerGuidance", model=["1", 0], **{"layers": "7-12", "scale": 2.5,
                                                                         "start_percent": 0.05, "end_percent": 0.5})
    add_node(api, "3", "ZImageLabTestModelFingerprint", model=["2", 0])
    patched = json.loads(lab.run(api).outputs["3"]["fingerprint"][0])
    assert patched["id"] != before["id"]
    assert patched["wrappers"] != before["wrappers"]
    assert patched["model_options"] != before["model_options"]
    assert patched["blocks"] == before["blocks"]  # clones share the stock blocks; nothing was swapped for good
    assert fingerprint(lab) == before


def test_nodes_report_what_they_did(lab):
    api = base_graph()
    add_node(api, "10", "ZImageLabSkipLayerGuidance", model=["1", 0], layers="7-12", scale=2.5, start_percent=0.05,
             end_percent=0.5)
    add_node(api, "11", "ZImageLabLayerAblation", model=["1", 0], layers="3, 5-6", scale=0.0, start_percent=0.0,
             end_percent=1.0)
    for nid in ("10", "11"):
        add_node(api, f"{nid}_show", "PreviewAny", source=[nid, 1])
    result = lab.run(api)
    slg_info = json.loads(result.outputs["10_show"]["text"][0])
    assert slg_info["layers"] == [7, 8, 9, 10, 11, 12] and slg_info["scale"] == 2.5
    assert "7, 8, 9, 10, 11, 12" in result.outputs["10"]["text"][0]
    abl_info = json.loads(result.outputs["11_show"]["text"][0])
    assert abl_info["layers"] == [3, 5, 6]
    assert abl_info["edits"][0]["scales"] == {"3": 0.0, "5": 0.0, "6": 0.0}


# ---------------------------------------------------------------- shipped workflows

def run_images(lab, api, *save_ids):
    result = lab.run(api)
    images = [lab.images(result, nid)[0] for nid in save_ids]
    for image in images:
        assert image.shape == (64, 64, 3) and image.std() > 0
    return images


def test_slg_workflow_guides_and_scale_zero_is_stock(lab):
    api = lab.workflow("zimage_slg.json")
    slg_image, stock_image = run_images(lab, api, "9", "12")
    assert (slg_image != stock_image).any()
    off = wf.set_input(api, "Skip-Layer Guidance.scale=0")
    slg_image, stock_image = run_images(lab, off, "9", "12")
    assert (slg_image == stock_image).all()


def test_refiner_skip_workflow_changes_the_image_and_defaults_are_stock(lab):
    api = lab.workflow("zimage_refiner_ablation.json")
    ablated, stock = run_images(lab, api, "9", "12")
    assert (ablated != stock).any()
    ablated, stock = run_images(lab, wf.set_input(api, 'Refiner Ablation.context_blocks="all"'), "9", "12")
    assert (ablated == stock).all()


def test_layer_sweep_spec_runs_through_the_sweep_runner(lab, repo, tmp_path):
    # the shipped spec with three of its rows and one seed, on its own workflow made tiny, through `zlab sweep`
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    spec = json.loads((repo / "sweeps" / "layer_ablation.json").read_text())
    api = harness.shrink_images(harness.use_tiny_models(json.loads((repo / "workflows/api/zimage_layer_sweep.json").read_text())), 64)
    (tmp_path / "tiny.json").write_text(json.dumps(api))
    (key, values), = spec["params"].items()
    spec.update(workflow="tiny.json", params={key: [values[0], values[1], values[13]]}, seeds=spec["seeds"][:1])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "zlab", "sweep", str(tmp_path / "spec.json"), "--server", lab.url,
                           "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["params"][key]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"", "0", "12"} and all(r["status"] == "ok" for r in rows.values())

    def image(row):
        return np.asarray(Image.open(out / row["image"]))

    assert rows[""]["pixel_rmse"] == 0.0
    assert rows["0"]["pixel_rmse"] > 0 and rows["12"]["pixel_rmse"] > 0
    assert (image(rows["0"]) != image(rows["12"])).any()
    # a row's image is the ablated one: the same as running the workflow directly with that layer
    direct = run_images(lab, wf.set_every(wf.set_input(api, 'Layer Ablation.layers="12"'), ("seed",), spec["seeds"][0])[0],
                        "9", "12")
    assert (image(rows["12"]) == direct[0]).all() and (image(rows[""]) == direct[1]).all()
