"""The shipped prompt-side workflows on a real ComfyUI: prompt lab, layer sweep, long prompt."""

import json
import subprocess
import sys

import numpy as np
import pytest

from prompt_graphs import cache_stats
from zlab import workflow as wf

pytestmark = pytest.mark.integration


def fast(api, steps=2):
    """The workflow with fewer sampling steps (the same everywhere, so images stay comparable)."""
    return wf.set_every(api, ("steps",), steps)[0]


def images(lab, api, save_title):
    result = lab.run(fast(api))
    (save_id,) = wf.find_nodes(api, save_title)
    return lab.images(result, save_id), result


def test_prompt_lab_at_its_defaults_is_the_stock_turbo_image(lab):
    (ours,), _ = images(lab, lab.workflow("zimage_prompt_lab.json"), "Save Image")
    (stock,), _ = images(lab, lab.workflow("zimage_turbo_lab.json"), "Save Image")
    assert ours.shape == (64, 64, 3) and ours.std() > 0
    assert np.array_equal(ours, stock)


def test_prompt_lab_runs_through_the_client_with_sweep_settings(lab, tmp_path, repo):
    path = tmp_path / "prompt_lab.json"
    path.write_text(json.dumps(lab.workflow("zimage_prompt_lab.json")))
    outs = {}
    for name, sets in (("default", []), ("think", ["Prompt Formatter.think_mode=empty", "Qwen3 Encoder.layer=-3"])):
        out = tmp_path / name
        args = [sys.executable, "-m", "zlab", "run", str(path), "--server", lab.url, "--prompt", "a teapot on a shelf",
                "--seed", "5", "--steps", "3", "--out", str(out), "--quiet"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        (png,) = out.glob("*.png")
        from PIL import Image

        outs[name] = np.asarray(Image.open(png))
    assert not np.array_equal(outs["default"], outs["think"])


def test_layer_sweep_encodes_once_and_its_layer_minus_2_image_is_the_prompt_lab_one(lab):
    prompt = "a layer sweep of a paper boat on a pond"
    sweep = wf.set_prompt(lab.workflow("zimage_hidden_layer_sweep.json"), prompt)
    before = cache_stats(lab)["forward_passes"]
    shots, result = images(lab, sweep, "Save Layer Sweep")
    assert cache_stats(lab)["forward_passes"] == before + 1     # four layers, one forward pass
    layers = [sweep[i]["inputs"]["layer"] for i in wf.find_nodes(sweep, "ZImageLabQwen3Encode")]
    assert sorted(layers) == [-8, -4, -2, -1] and len(shots) == 4
    lab_api = wf.set_prompt(lab.workflow("zimage_prompt_lab.json"), prompt)
    (reference,), _ = images(lab, lab_api, "Save Image")
    assert cache_stats(lab)["forward_passes"] == before + 1     # the same text again: no new encode
    assert np.array_equal(shots[0], reference)                  # batch order: -2, -1, -4, -8
    for other in shots[1:]:
        assert not np.array_equal(other, reference)
    for node_id in wf.find_nodes(sweep, "ZImageLabQwen3Encode"):
        assert "layer" in result.outputs[node_id]["text"][0]


def test_long_prompt_workflow_fits_the_prompt_to_the_budget(lab):
    api = lab.workflow("zimage_long_prompt.json")
    shots, result = images(lab, api, "Save Long Prompt")
    assert len(shots) == 2 and not np.array_equal(shots[0], shots[1])
    (full_id,), (fitted_id,) = wf.find_nodes(api, "Full Length Encoder"), wf.find_nodes(api, "Long Prompt Encoder")
    full, fitted = result.outputs[full_id]["text"][0], result.outputs[fitted_id]["text"][0]
    assert "OVER BUDGET" in full and "passed on unchanged" in full
    assert "attention_pool -> 512 tokens" in fitted
