"""bench/e2e.py, the field benchmark, in its tiny CPU configuration: a real server started like a user's, the
stock graph and ours timed side by side, stock = zimage_turbo_lab pixel for pixel, shipped workflows run
(the trainer's file feeding the LoRA workflow), JSON and table written."""

import json
import subprocess
import sys

import numpy as np
import pytest

import harness

pytestmark = pytest.mark.integration

WORKFLOWS = "zimage_turbo_lab.json,zimage_turbo_accelerated.json,zimage_refiner_lora.json,zimage_refiner_lora_train.json"


@pytest.fixture(scope="module")
def field(comfyui_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "field.json"
    proc = subprocess.run([sys.executable, str(harness.REPO / "bench" / "e2e.py"), "--tiny", "--comfyui",
                           str(comfyui_path), "--configs", "defaults", "--blocks", "2", "--per-block", "1",
                           "--workflows", WORKFLOWS, "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    return proc, json.loads(out.read_text())


def test_runs_and_reports_every_step(field):
    proc, report = field
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = report["runs"]
    assert run["config"] == "defaults" and run["crashes"] == 0 and "error" not in run
    assert run["system"]["comfyui"] and "--cpu" not in run["system"]["flags"]
    assert "| defaults | stock |" in proc.stdout and "stock = lab pixels" in proc.stdout


def test_times_every_variant_per_image_and_per_node(field):
    _, report = field
    timing = report["runs"][0]["timing"]
    assert set(timing) == {"stock", "lab", "accelerated", "accelerated_fp8"}
    for name, row in timing.items():
        assert not row["errors"], (name, row["errors"])
        assert row["n"] == 2 and len(row["all_server_s"]) == 2 and row["server_s"] > 0
        assert row["server_s"] == float(np.median(row["all_server_s"]))
    assert "KSampler" in timing["stock"]["nodes"] and "ZImageLabSampler" in timing["lab"]["nodes"]
    assert "ZImageLabSampler" not in timing["stock"]["nodes"] and "VAEDecode" in timing["lab"]["nodes"]
    assert timing["stock"]["x_stock"] == 1.0


def test_stock_graph_and_lab_workflow_give_the_same_pixels(field):
    _, report = field
    ident = report["runs"][0]["identity"]
    assert ident["identical"] is True and ident["max_abs_diff"] == 0 and len(ident["seeds"]) == 2


def test_workflows_run_and_the_trained_file_feeds_the_lora_workflow(field):
    _, report = field
    results = report["runs"][0]["workflows"]
    assert set(results) == set(WORKFLOWS.split(","))
    for name, result in results.items():
        assert result["ok"] and result["server_alive"], (name, result)
    assert list(results).index("zimage_refiner_lora.json") > list(results).index("zimage_refiner_lora_train.json")
