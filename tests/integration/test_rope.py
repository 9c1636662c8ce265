"""ZImageLabRoPEExtend on a real ComfyUI: identity at scale 1, the exact frequencies of each method
(recorded where they enter the DiT, compared with the formulas written out here), long captions,
bad input."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import harness

pytestmark = pytest.mark.integration

AXES = (32, 48, 48)
THETA = 256.0
SHORT = "a red fox in the snow"
LONG_UNIT = "a small red house on a green hill under a wide blue sky with white clouds, "


def long_prompt(tokens: int) -> str:
    """A prompt of at least ``tokens`` content tokens."""
    return LONG_UNIT * (tokens // 14 + 1)


def base_graph(text, seed=3, steps=1):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def add_sampler(graph, nid, model_ref, prefix, seed=3, steps=1):
    graph[f"{nid}a"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": model_ref, "shift": 3.0}}
    graph[f"{nid}k"] = {"class_type": "KSampler", "inputs": {
        "model": [f"{nid}a", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    graph[f"{nid}s"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{nid}k", 0], "filename_prefix": prefix}}
    return f"{nid}s"


def extender(model_ref, method, scale_mode="factor", factor=2.0, **extra):
    return {"class_type": "ZImageLabRoPEExtend", "inputs": {
        "model": model_ref, "method": method, "scale_mode": scale_mode, "factor": factor, "trained_length": 512, **extra}}


# ---- the formulas, written independently of core/rope.py ----

def frequencies(dim, theta):
    i = torch.arange(dim // 2, dtype=torch.float64)
    return theta ** (-2.0 * i / dim)


def yarn_keep(dim, theta, trained, beta_fast, beta_slow):
    """1 where YaRN keeps a frequency, 0 where it interpolates, linear in the index between
    (reference implementation: the ramp runs from floor(i_fast) to ceil(i_slow), where i_r is the
    index whose frequency turns r times over the trained length)."""
    def index_turning(r):
        # theta^(-2i/dim) * trained / (2 pi) = r  <=>  i = dim/2 * log_theta(trained / (2 pi r))
        return dim / 2 * math.log(trained / (2 * math.pi * r), theta)
    lo = max(math.floor(index_turning(beta_fast)), 0)
    hi = min(math.ceil(index_turning(beta_slow)), dim - 1)
    out = []
    for i in range(dim // 2):
        ramp = 0.0 if i <= lo else 1.0 if i >= hi else (i - lo) / (hi - lo)
        out.append(1.0 - ramp)
    return torch.tensor(out, dtype=torch.float64)


def expected_freqs(ids, method, s, trained=512, beta_fast=32.0, beta_slow=1.0, attention="all dims"):
    """[1, 1, N, 64, 2, 2] rotation blocks the extended embedder must produce for these ids."""
    blocks = []
    for axis, dim in enumerate(AXES):
        w = frequencies(dim, THETA)
        pos = ids[0, :, axis].to(torch.float64)
        if axis == 0 and s != 1.0:
            if method == "linear":
                pos = pos / s
            elif method == "ntk":
                w = frequencies(dim, THETA * s ** (dim / (dim - 2)))
            elif method == "yarn":
                keep = yarn_keep(dim, THETA, trained, beta_fast, beta_slow)
                w = keep * w + (1 - keep) * w / s
        angle = pos[:, None] * w[None, :]
        block = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], -1).view(-1, dim // 2, 2, 2)
        if method == "yarn" and s > 1.0 and (attention == "all dims" or (attention == "text axis dims" and axis == 0)):
            block = block * (0.1 * math.log(s) + 1.0)
        blocks.append(block)
    return torch.cat(blocks, dim=1)[None, None].float()


def read_calls(lab, prefix):
    files = sorted((lab.output / prefix).glob("call_*.safetensors"))
    return [load_file(str(f)) for f in files]


def probe_graph(text, prefix, ext_node=None):
    """Loader -> (extender) -> rope probe -> one sampling step."""
    graph = base_graph(text)
    model_ref = ["1", 0]
    if ext_node is not None:
        graph["20"] = ext_node
        model_ref = ["20", 0]
    graph["p"] = {"class_type": "ZImageLabTestRoPEProbe", "inputs": {"model": model_ref, "filename_prefix": prefix}}
    add_sampler(graph, "9", ["p", 0], f"{prefix}/latent")
    return graph


def caption_and_image_calls(calls):
    """The first forward's two rope calls: caption ids (1..L_pad, 0, 0), then the image's."""
    caption, image = calls[0], calls[1]
    return caption, image


# ---- tests ----

@pytest.mark.parametrize("method", ["linear", "ntk", "yarn"])
def test_scale_one_and_fit_within_trained_length_equal_stock_bit_for_bit(lab, method):
    graph = base_graph(SHORT)
    stock = add_sampler(graph, "10", ["1", 0], f"rope_id/{method}_stock", steps=2)
    graph["20"] = extender(["1", 0], method, "factor", 1.0)
    fixed = add_sampler(graph, "21", ["20", 0], f"rope_id/{method}_factor1", steps=2)
    graph["30"] = extender(["1", 0], method, "fit to prompt", 3.0)
    fit = add_sampler(graph, "31", ["30", 0], f"rope_id/{method}_fit", steps=2)
    result = lab.run(graph)
    (a,), (b,), (c,) = lab.latents(result, stock), lab.latents(result, fixed), lab.latents(result, fit)
    assert a.abs().max() > 0 and torch.isfinite(a).all()
    assert torch.equal(a, b) and torch.equal(a, c)
    assert "s = 1" in result.outputs["20"]["text"][0]


def test_probe_sees_stock_layout_and_identical_frequencies_within_trained_length(lab):
    lab.run(probe_graph(SHORT, "rope_probe/stock_short"))
    lab.run(probe_graph(SHORT, "rope_probe/fit_short", extender(["1", 0], "yarn", "fit to prompt")))
    stock, fit = read_calls(lab, "rope_probe/stock_short"), read_calls(lab, "rope_probe/fit_short")
    assert len(stock) == len(fit) == 2  # one forward: caption call then image call
    caption, image = caption_and_image_calls(stock)
    ids = caption["ids"][0]
    assert ids.shape == (32, 3) and torch.equal(ids[:, 0], torch.arange(1, 33, dtype=torch.float32))
    assert not ids[:, 1:].any()
    assert (image["ids"][0, :, 0] == 33).sum() == 16  # 64 px -> 8x8 latent -> 4x4 patches at axis-0 L_pad + 1
    for s_call, f_call in zip(stock, fit):
        assert torch.equal(s_call["ids"], f_call["ids"]) and torch.equal(s_call["freqs"], f_call["freqs"])
    assert torch.allclose(caption["freqs"], expected_freqs(caption["ids"], "linear", 1.0), atol=1e-5)


@pytest.mark.parametrize("method, scale_mode, factor, extra", [
    ("linear", "factor", 2.5, {}),
    ("ntk", "factor", 2.5, {}),
    ("yarn", "factor", 2.5, {}),
    ("yarn", "factor", 3.0, {"beta_fast": 16.0, "beta_slow": 2.0, "yarn_attention": "text axis dims"}),
    ("yarn", "factor", 1.5, {"yarn_attention": "off"}),
    ("linear", "fit to prompt", 0.0, {}),
    ("ntk", "fit to prompt", 0.0, {}),
    ("yarn", "fit to prompt", 0.0, {}),
])
def test_frequencies_reaching_the_dit_follow_the_formula(lab, method, scale_mode, factor, extra):
    text = long_prompt(700) if scale_mode == "fit to prompt" else SHORT
    prefix = f"rope_probe/{method}_{scale_mode.replace(' ', '_')}_{factor}_{len(extra)}"
    lab.run(probe_graph(text, prefix, extender(["1", 0], method, scale_mode, factor, **extra)))
    calls = read_calls(lab, prefix)
    caption, image = caption_and_image_calls(calls)
    l_pad = int(caption["ids"][0, -1, 0])
    assert l_pad % 32 == 0 and torch.equal(caption["ids"][0, :, 0], torch.arange(1, l_pad + 1, dtype=torch.float32))
    if scale_mode == "fit to prompt":
        assert l_pad > 512
        s = l_pad / 512
    else:
        s = factor
    attention = extra.get("yarn_attention", "all dims")
    kwargs = {k: extra[k] for k in ("beta_fast", "beta_slow") if k in extra}
    for call in (caption, image):
        want = expected_freqs(call["ids"], method, s, attention=attention, **kwargs)
        assert call["freqs"].shape == want.shape
        assert torch.allclose(call["freqs"], want, atol=2e-5, rtol=0), (call["freqs"] - want).abs().max()
    # the image sits one step after the caption on the rescaled text axis: same rotation as position L_pad + 1
    real = image["ids"][0, :, 0] == l_pad + 1
    assert real.sum() == 16 and not image["ids"][0, ~real].any()
    one_after = torch.tensor([[[l_pad + 1.0, 0.0, 0.0]]])
    assert torch.allclose(image["freqs"][0, 0, real][:, :16], expected_freqs(one_after, method, s, attention=attention,
                          **kwargs)[0, 0, 0, :16], atol=2e-5)
    if method == "linear":
        # the effective text position of caption token p is p / s: recover it from the lowest frequency
        w = frequencies(32, THETA)[-1]
        angle = torch.atan2(caption["freqs"][0, 0, :, 15, 1, 0].double(), caption["freqs"][0, 0, :, 15, 0, 0].double())
        assert torch.allclose(angle / w, torch.arange(1, l_pad + 1, dtype=torch.float64) / s, atol=1e-3)


def test_two_thousand_token_caption_samples(lab):
    text = long_prompt(2000)
    graph = base_graph(text)
    graph["20"] = extender(["1", 0], "yarn", "fit to prompt")
    extended = add_sampler(graph, "21", ["20", 0], "rope_long/yarn", steps=2)
    graph["30"] = extender(["1", 0], "linear", "factor", 4.0)
    linear = add_sampler(graph, "31", ["30", 0], "rope_long/linear", steps=2)
    stock = add_sampler(graph, "10", ["1", 0], "rope_long/stock", steps=2)
    graph["t"] = {"class_type": "ZImageLabTestRoPEProbe", "inputs": {"model": ["20", 0], "filename_prefix": "rope_long/probe"}}
    probed = add_sampler(graph, "41", ["t", 0], "rope_long/probed", steps=1)
    result = lab.run(graph)
    (a,), (b,), (c,) = lab.latents(result, extended), lab.latents(result, linear), lab.latents(result, stock)
    for x in (a, b, c):
        assert x.shape == (1, 16, 8, 8) and torch.isfinite(x).all()
    assert not torch.equal(a, c) and not torch.equal(b, c)  # the extension changes what the model does
    caption = read_calls(lab, "rope_long/probe")[0]
    l_pad = int(caption["ids"][0, -1, 0])
    assert l_pad >= 2000
    assert torch.allclose(caption["freqs"], expected_freqs(caption["ids"], "yarn", l_pad / 512), atol=2e-5)
    assert lab.latents(result, probed)[0].shape == (1, 16, 8, 8)


def _patch_state(lab, tag):
    graph = {"1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
             "s": {"class_type": "ZImageLabTestPatchState", "inputs": {"model": ["1", 0], "tag": tag}}}
    return json.loads(lab.run(graph).outputs["s"]["text"][0])


@pytest.mark.parametrize("inputs, words", [
    ({"factor": 0.0}, ["factor", "> 0"]),
    ({"method": "yarn", "beta_fast": 1.0, "beta_slow": 2.0}, ["beta_fast", "beta_slow"]),
])
def test_bad_settings_get_a_clear_error_and_leave_the_model_untouched(lab, inputs, words):
    from zlab.api import ComfyError

    before = _patch_state(lab, "before")
    graph = base_graph(SHORT)
    node = extender(["1", 0], "linear", "factor", 2.0)
    node["inputs"].update(inputs)
    graph["20"] = node
    add_sampler(graph, "21", ["20", 0], "rope_bad/x")
    with pytest.raises(ComfyError) as err:
        lab.run(graph)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value).split("\n")[0]
    assert _patch_state(lab, "after") == before
    assert before["object_patches"] == [] and before["patches"] == {}


def test_negative_factor_is_refused_by_validation(lab):
    from zlab.api import ComfyError

    graph = base_graph(SHORT)
    graph["20"] = extender(["1", 0], "ntk", "factor", -1.0)
    add_sampler(graph, "21", ["20", 0], "rope_bad/neg")
    with pytest.raises(ComfyError, match="factor"):
        lab.run(graph)


def test_long_prompt_workflow_extends_the_caption_positions(lab):
    api = lab.workflow("zimage_rope_long_prompt.json")
    by_type = {n["class_type"]: nid for nid, n in api.items()}
    rope, sampler = by_type["ZImageLabRoPEExtend"], by_type["ZImageLabSampler"]
    assert api[rope]["inputs"]["method"] == "yarn" and api[rope]["inputs"]["scale_mode"] == "fit to prompt"
    api["probe"] = {"class_type": "ZImageLabTestRoPEProbe", "inputs": {"model": [rope, 0], "filename_prefix": "rope_wf/probe"}}
    api[sampler]["inputs"].update(model=["probe", 0], steps=1)
    result = lab.run(api)
    image = lab.images(result, by_type["ZImageLabSaveImage"])[0]
    assert image.shape == (64, 64, 3) and image.std() > 0
    caption, image_call = read_calls(lab, "rope_wf/probe")[:2]
    l_pad = int(caption["ids"][0, -1, 0])
    assert l_pad > 512  # the shipped prompt is longer than the trained length
    for call in (caption, image_call):
        assert torch.allclose(call["freqs"], expected_freqs(call["ids"], "yarn", l_pad / 512), atol=2e-5)


def test_a_second_extender_replaces_the_first(lab):
    graph = probe_graph(SHORT, "rope_probe/chained", extender(["1", 0], "linear", "factor", 2.0))
    graph["21"] = extender(["20", 0], "ntk", "factor", 3.0)
    graph["p"]["inputs"]["model"] = ["21", 0]
    lab.run(graph)
    for call in read_calls(lab, "rope_probe/chained")[:2]:
        assert torch.allclose(call["freqs"], expected_freqs(call["ids"], "ntk", 3.0), atol=2e-5)


def _block_outputs(lab, ext_node, label):
    """Inputs and outputs of the noise-refiner blocks and main layer 0 in the first model call, 1000-token caption."""
    graph = base_graph(long_prompt(1000))
    model_ref = ["1", 0]
    if ext_node is not None:
        graph["20"] = ext_node
        model_ref = ["20", 0]
    graph["t"] = {"class_type": "ZImageLabTestBlockTrace", "inputs": {"model": model_ref, "label": label,
                                                                       "record_tensors": True}}
    graph["9k"] = {"class_type": "KSampler", "inputs": {
        "model": ["t", 0], "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    graph["r"] = {"class_type": "ZImageLabTestTraceReport", "inputs": {"samples": ["9k", 0], "label": label}}
    out = lab.run(graph).outputs["r"]
    tensors = load_file(str(lab.output / out["tensor_files"][0]))
    wanted = ("noise_refiner.", "layers.0.")
    return {k.split(".", 2)[2]: v for k, v in tensors.items()
            if k.startswith("0.") and any(w in k.split(".", 2)[2][:len(w)] for w in wanted)}


def test_yarn_temperature_leaves_the_image_only_noise_refiner_unchanged(lab):
    """The noise refiner attends over image tokens only, whose context does not grow with the caption:
    with a 1000-token caption its output is the same, bit for bit, whether YaRN's temperature is on
    ('all dims' or 'text axis dims') or off; the main layers, which attend to the caption, do get it.
    (The rescaled rotation itself reaches the noise refiner, as every call: its padding tokens sit at
    axis-0 position 0, the image at L_pad + 1, a distance the extension brings back into range.)"""
    off = _block_outputs(lab, extender(["1", 0], "yarn", "fit to prompt", yarn_attention="off"), "nr_off")
    assert len([k for k in off if k.startswith("noise_refiner")]) == 4  # 2 blocks, input and output
    for attention in ("all dims", "text axis dims"):
        hot = _block_outputs(lab, extender(["1", 0], "yarn", "fit to prompt", yarn_attention=attention),
                             f"nr_{attention[:3]}")
        assert sorted(hot) == sorted(off)
        for key in (k for k in hot if k.startswith("noise_refiner")):
            assert torch.equal(hot[key], off[key]), (attention, key, float((hot[key] - off[key]).abs().max()))
        assert (hot["layers.0.out"] - off["layers.0.out"]).abs().max() > 1e-3  # the temperature is applied there
