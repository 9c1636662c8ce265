"""Per-image metrics of a sweep spec scored on the servers, over HTTP and on a local Ray cluster: each row's
clip_score equals CLIPScore recomputed here with transformers from the saved PNG and the cell's prompt (Ray:
and the HTTP score of the same cell); a missing metric model fails before any cell runs, with the same message."""

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from sweep_fixtures import command, files, ok_rows, ray_cluster, ray_command, sweep_clip  # noqa: F401 (ray_cluster: a fixture)

pytestmark = pytest.mark.integration
SPEC = {"name": "tiny_scored", "params": {"Z-Image Sampler.steps": [2, 3]}, "seeds": [1],
        "metrics": ["clip_score"]}
MISSING = "pickscore: the server's models/metrics/pickscore/ holds no model; put the model there (docs/metrics.md)"


@pytest.fixture(scope="module")
def clip_dir(lab):
    return sweep_clip(lab)


def positive_text(workflow) -> str:
    api = json.loads(workflow.read_text())
    (node,) = [n for n in api.values() if n.get("_meta", {}).get("title") == "Positive Prompt"]
    return next(v for v in node["inputs"].values() if isinstance(v, str) and v.strip())


def clip_score_by_hand(folder, png, text) -> tuple[float, float]:
    """(CLIPScore = 100 * max(cos, 0), cos) of a PNG and a text, through transformers' CLIPModel forward."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(folder)).eval(), CLIPProcessor.from_pretrained(str(folder))
    with Image.open(png) as im:
        image = im.convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    cos = float(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)[0])
    return 100.0 * max(cos, 0.0), cos


def check_scores(out, rows, clip_dir, workflow):
    """Every row's clip_score is CLIPScore of its own saved image (none clamped to 0, no two alike)."""
    text, raw = positive_text(workflow), []
    for row in rows:
        expected, cos = clip_score_by_hand(clip_dir, out / row["image"], text)
        assert row["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4), row["label"]
        raw.append(cos)
    assert min(raw) > 0, raw  # 0 == 0 would prove nothing
    assert len({round(r["clip_score"], 3) for r in rows}) == len(rows)  # each cell scored on its own image
    assert "clip_score" in (out / "results.csv").read_text().splitlines()[0].split(",")


@pytest.fixture(scope="module")
def http_scored(lab, clip_dir, tmp_path_factory, repo):
    """The scored spec run over HTTP on the lab's server."""
    tmp = tmp_path_factory.mktemp("http_scored")
    workflow, spec_path = files(lab, tmp, SPEC)
    out = tmp / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"out": out, "workflow": workflow, "spec": spec_path}


def test_http_sweep_scores_on_the_server(http_scored, clip_dir):
    rows = ok_rows(http_scored["out"])
    assert len(rows) == 2
    check_scores(http_scored["out"], rows, clip_dir, http_scored["workflow"])


def error_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if x.startswith("error: ")]
    return line


def test_missing_metric_model_fails_before_any_cell(lab, clip_dir, tmp_path, repo):
    workflow, spec_path = files(lab, tmp_path, {**SPEC, "metrics": ["pickscore"]})
    out = tmp_path / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and error_line(proc.stderr) == f"error: {lab.url}: {MISSING}", proc.stderr[-2000:]
    assert not (out / "results.jsonl").exists()


def test_ray_sweep_scores_on_the_workers(ray_cluster, http_scored, lab, clip_dir, comfyui_path, tmp_path, repo):
    out = tmp_path / "out"
    proc = subprocess.run(ray_command(http_scored["spec"], http_scored["workflow"], out, ray_cluster, lab,
                                      comfyui_path, extra=["--per-server", "1"]),
                          cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = {r["cell"]: r for r in ok_rows(out)}
    assert len(rows) == 2 and {r["worker"] for r in rows.values()} == {"w0", "w1"}, proc.stdout  # one cell each
    check_scores(out, list(rows.values()), clip_dir, http_scored["workflow"])
    http_rows = {r["cell"]: r for r in ok_rows(http_scored["out"])}
    assert set(http_rows) == set(rows)
    for cell, row in rows.items():
        assert np.array_equal(np.asarray(Image.open(out / row["image"])),
                              np.asarray(Image.open(http_scored["out"] / http_rows[cell]["image"])))
        assert row["clip_score"] == pytest.approx(http_rows[cell]["clip_score"], rel=1e-6, abs=1e-6)


def test_ray_missing_metric_model_fails_before_any_cell(ray_cluster, lab, clip_dir, comfyui_path, tmp_path, repo):
    workflow, spec_path = files(lab, tmp_path, {**SPEC, "metrics": ["pickscore"]})
    out = tmp_path / "out"
    proc = subprocess.run(ray_command(spec_path, workflow, out, ray_cluster, lab, comfyui_path), cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert re.fullmatch(rf"error: Ray worker w[01]: {re.escape(MISSING)}", error_line(proc.stderr)), proc.stderr[-2000:]
    assert not (out / "results.jsonl").exists() and "[1/2]" not in proc.stdout
