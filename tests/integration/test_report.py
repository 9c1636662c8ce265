"""A real sweep on ComfyUI, then zlab report: the setup section shows what the sweep recorded."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_report_of_a_real_sweep(lab, tmp_path, repo):
    api = lab.workflow("zimage_turbo_lab.json")
    (tmp_path / "tiny.json").write_text(json.dumps(api))
    spec = {"name": "tiny_report", "params": {"Z-Image Sampler.shift": [1.0, 3.0]}, "seeds": [1, 2],
            "fixed": {"Z-Image Sampler.steps": 2}, "reference": {"Z-Image Sampler.shift": 3.0}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "zlab", "sweep", str(tmp_path / "spec.json"), "--workflow", str(tmp_path / "tiny.json"),
            "--out", str(out), "--server", lab.url]
    proc = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    setup = json.loads((out / "sweep.json").read_text())["setup"]
    stats = lab.client.get_json("/system_stats")
    assert setup["command"].startswith("python -m zlab sweep ") and "--server" in setup["command"]
    assert setup["servers"][0]["comfyui_version"] == stats["system"]["comfyui_version"]
    assert setup["servers"][0]["devices"][0]["name"] == stats["devices"][0]["name"]
    proc = subprocess.run([sys.executable, "-m", "zlab", "report", str(out)], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (out / "report.html").read_text()
    assert stats["system"]["comfyui_version"] in html and stats["devices"][0]["name"] in html
    assert "Difference to the reference condition" in html and "sharpness vs shift" in html
    assert 'alt="contact sheet"' in html
    md = (out / "report.md").read_text()
    assert "| shift=1.0 | 2 |" in md  # condition, seeds
