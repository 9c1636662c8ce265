"""The pack inside a real ComfyUI server (0.18.1 or 0.30.2): loading, schema, the sampler, the API client."""

import json
import subprocess
import sys

import pytest
import torch

import harness
from core import sampler as core_sampler

pytestmark = pytest.mark.integration


def test_pack_loads_without_errors_or_warnings(lab):
    # the start-up part only: tests that run earlier on this shared server log their expected node errors
    log = lab.server.log().split("Starting server")[0]
    assert "Import times for custom nodes" in log
    pack_lines = [l for l in log.splitlines() if harness.PACK_FOLDER in l or "zimage_lab" in l.lower()]
    assert pack_lines and all("IMPORT FAILED" not in l for l in pack_lines), pack_lines
    for bad in ("Traceback", "Cannot import", "Unable to parse pyproject.toml"):
        assert bad not in log, log
    assert not [l for l in log.splitlines() if "WARNING" in l and harness.PACK_FOLDER in l]


def test_comfyui_under_test_is_in_the_declared_range_and_the_docs(comfyui_path, repo):
    import tomllib

    from packaging.specifiers import SpecifierSet

    declared = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    version = harness.comfyui_version(comfyui_path)
    assert version in SpecifierSet(declared), \
        f"ComfyUI {version} is outside requires-comfyui {declared!r}: once it passes, widen the range and docs/compatibility.md"
    assert f"| {version} |" in (repo / "docs" / "compatibility.md").read_text(), "docs/compatibility.md must list it"


def test_object_info_lists_the_sampler_and_matches_the_snapshot(lab):
    info = lab.client.object_info()
    assert "ZImageLabSampler" in info
    sampler = info["ZImageLabSampler"]
    assert sampler["input"]["required"]["steps"][1]["default"] == 8
    assert sampler["input"]["required"]["shift"][1]["default"] == 3.0
    assert sampler["input"]["required"]["sampler_name"][1]["default"] == "res_multistep"
    assert "negative" in sampler["input"]["optional"]
    snapshot = json.loads((harness.DATA / "object_info-zimage-lab.json").read_text())
    live = harness.our_schema(info)
    # Model-file dropdowns list whatever files other tests have written by now (trained LoRAs, saved vectors).
    assert without_file_lists(live) == without_file_lists(snapshot), \
        "tests/data/object_info-zimage-lab.json is stale: run `python tests/harness.py schema`"


MODEL_FOLDER_INPUTS = {"model_folder", "fidelity_model"}


def without_file_lists(schema: dict) -> dict:
    """The schema with the options of model-file dropdowns emptied (they depend on the models folder)."""
    schema = json.loads(json.dumps(schema))
    for node, spec in schema.items():
        for group in ("required", "optional"):
            for name, input_spec in spec["input"].get(group, {}).items():
                options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
                listed = (name.endswith("_name") and name != "sampler_name") or name in MODEL_FOLDER_INPUTS \
                    or (node, name) == ("ZImageLabImageScore", "model")
                if input_spec[0] == "COMBO" and listed:
                    options["options"] = []
    return schema


def test_pack_loads_under_another_folder_name(comfyui_path, tmp_path):
    base = tmp_path / "base"
    harness.make_base(comfyui_path, base)
    (base / "custom_nodes" / harness.PACK_FOLDER).rename(base / "custom_nodes" / "zimage.lab-dev copy")
    with harness.ComfyServer(comfyui_path, base) as server:
        info = harness.ComfyClient(server.url).object_info()
        assert "ZImageLabSampler" in info
        assert "IMPORT FAILED" not in server.log()


def _compare_graph(seed, steps, shift, sampler_name, scheduler, cfg=1.0):
    """Stock UNET -> ModelSamplingAuraFlow -> KSampler beside our sampler, on one loaded model."""
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": shift}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": seed, "steps": steps, "cfg": cfg,
              "sampler_name": sampler_name, "scheduler": scheduler, "positive": ["3", 0], "negative": ["4", 0],
              "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "ZImageLabSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "latent_image": ["5", 0],
              "seed": seed, "steps": steps, "shift": shift, "sampler_name": sampler_name, "scheduler": scheduler,
              "cfg": cfg, "denoise": 1.0, **({"negative": ["4", 0]} if cfg != 1.0 else {})}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"cmp/stock_{seed}_{shift}"}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": f"cmp/lab_{seed}_{shift}"}},
    }


@pytest.mark.parametrize("seed, steps, shift, sampler_name, scheduler, cfg", [
    (42, 8, 3.0, "res_multistep", "simple", 1.0),   # the official Turbo settings
    (7, 4, 1.0, "euler", "simple", 1.0),
    (123, 12, 5.5, "dpmpp_2m", "beta", 1.0),
    (5, 6, 2.0, "euler", "simple", 2.5),            # real CFG with a negative
])
def test_sampler_latent_equals_stock_ksampler_bit_for_bit(lab, seed, steps, shift, sampler_name, scheduler, cfg):
    result = lab.run(_compare_graph(seed, steps, shift, sampler_name, scheduler, cfg))
    (stock,), (ours,) = lab.latents(result, "9"), lab.latents(result, "10")
    assert stock.shape == (1, 16, 8, 8) and torch.isfinite(stock).all()
    assert stock.abs().max() > 0
    assert torch.equal(stock, ours)


def test_sampler_reports_the_shifted_schedule(lab):
    api = _compare_graph(1, 8, 3.0, "euler", "simple")
    result = lab.run(api)
    sigmas = torch.tensor(result.outputs["8"]["sigmas"], dtype=torch.float64)
    expected = core_sampler.simple_schedule(8, 3.0)
    assert sigmas.shape == (9,)
    assert torch.allclose(sigmas, expected, atol=1e-6), (sigmas, expected)
    assert "8 steps" in result.outputs["8"]["text"][0]


def test_different_shift_gives_a_different_latent(lab):
    a = lab.latents(lab.run(_compare_graph(3, 4, 1.0, "euler", "simple")), "10")[0]
    b = lab.latents(lab.run(_compare_graph(3, 4, 3.0, "euler", "simple")), "10")[0]
    assert not torch.equal(a, b)


def _expect_failure(lab, api, *words):
    from zlab.api import ComfyError

    with pytest.raises(ComfyError) as err:
        lab.run(api)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_bad_settings_get_clear_errors(lab):
    api = _compare_graph(1, 4, 3.0, "euler", "simple")
    for nid in ("7", "9", "6"):
        api.pop(nid)
    four_channel = json.loads(json.dumps(api))
    four_channel["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    _expect_failure(lab, four_channel, "4 channels", "EmptySD3LatentImage")
    zero_shift = json.loads(json.dumps(api))
    zero_shift["8"]["inputs"]["shift"] = 0.0
    _expect_failure(lab, zero_shift, "shift")
    zero_steps = json.loads(json.dumps(api))
    zero_steps["8"]["inputs"]["steps"] = 0
    _expect_failure(lab, zero_steps, "steps")
    no_negative = json.loads(json.dumps(api))
    no_negative["8"]["inputs"]["cfg"] = 3.0
    _expect_failure(lab, no_negative, "negative conditioning is required")


def test_main_workflow_runs_through_the_api_client(lab, tmp_path, repo):
    workflow = tmp_path / "turbo.json"
    workflow.write_text(json.dumps(lab.workflow("zimage_turbo_lab.json", image_size=128)))
    out = tmp_path / "images"
    proc = subprocess.run([sys.executable, "-m", "zlab", "run", str(workflow), "--server", lab.url,
                           "--prompt", "a lighthouse at dawn", "--seed", "9", "--set", "Z-Image Sampler.steps=4",
                           "--out", str(out), "--quiet"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 1
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(files[0]))
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert image.std() > 0


def test_client_reports_a_missing_node(lab, tmp_path, repo):
    workflow = tmp_path / "missing.json"
    workflow.write_text(json.dumps({"1": {"class_type": "NoSuchNodeAnywhere", "inputs": {}}}))
    proc = subprocess.run([sys.executable, "-m", "zlab", "run", str(workflow), "--server", lab.url],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "lacks these node types: NoSuchNodeAnywhere" in proc.stderr


def test_client_reports_a_validation_failure(lab, tmp_path, repo):
    api = lab.workflow("zimage_turbo_lab.json")
    api["6"]["inputs"]["sampler_name"] = "not_a_sampler"
    workflow = tmp_path / "invalid.json"
    workflow.write_text(json.dumps(api))
    proc = subprocess.run([sys.executable, "-m", "zlab", "run", str(workflow), "--server", lab.url],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "rejected the workflow" in proc.stderr and "sampler_name" in proc.stderr


def test_client_reports_a_server_that_is_down(repo):
    port = harness.free_port()  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "zlab", "run", "workflows/api/zimage_turbo_lab.json",
                           "--server", f"http://127.0.0.1:{port}"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach ComfyUI" in proc.stderr


def test_client_runs_a_ui_format_workflow(lab, tmp_path, repo):
    from zlab import workflow as wf

    api = lab.workflow("zimage_turbo_lab.json")
    ui = wf.api_to_ui(api, lab.client.object_info())
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    out = tmp_path / "ui_images"
    proc = subprocess.run([sys.executable, "-m", "zlab", "run", str(path), "--server", lab.url, "--steps", "2",
                           "--out", str(out), "--quiet"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*.png"))) == 1
