"""Per-image metrics of a sweep spec scored on the server (HTTP mode): the row's clip_score equals core's
CLIPScore of the saved image with the cell's prompt; a missing metric model fails before any cell runs."""

import subprocess

import numpy as np
import pytest
from PIL import Image

from core import metric_models as mm
from metric_fixtures import save_tiny_clip
from sweep_fixtures import command, files, ok_rows

pytestmark = pytest.mark.integration
# A prompt the tiny CLIP (seed 3) scores above 0 on these images: CLIPScore clamps negative cosines to 0, and a row of
# zeros would equal any recomputation (the workflow's own fox prompt scores below 0 and hid a rounding mismatch).
PROMPT = "a portrait of a woman reading in a cafe, window light, film photograph"
SPEC = {"name": "tiny_scored", "params": {"Z-Image Sampler.steps": [2, 3]}, "seeds": [1],
        "fixed": {"Positive Prompt.text": PROMPT}, "metrics": ["clip_score"]}


@pytest.fixture(scope="module")
def clip_dir(lab):
    path = lab.base / "models" / "metrics" / "clip" / "tiny-clip"
    save_tiny_clip(str(path), seed=3)
    return path


def test_http_sweep_scores_on_the_server(lab, clip_dir, tmp_path, repo):
    workflow, spec_path = files(lab, tmp_path, SPEC)
    out = tmp_path / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = ok_rows(out)
    assert len(rows) == 2
    scorer = mm.load_clip(str(clip_dir))
    for row in rows:
        pixels = np.asarray(Image.open(out / row["image"]).convert("RGB"), dtype=np.float32)[None] / 255.0
        expected = float(mm.clip_score(scorer, pixels, PROMPT)[0])
        assert expected > 0.5, "a clamped score of 0 compares nothing: pick a prompt the tiny CLIP scores above 0"
        assert row["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert "clip_score" in (out / "results.csv").read_text().splitlines()[0].split(",")


def test_missing_metric_model_fails_before_any_cell(lab, clip_dir, tmp_path, repo):
    workflow, spec_path = files(lab, tmp_path, {**SPEC, "metrics": ["pickscore"]})
    out = tmp_path / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "models/metrics/pickscore/ holds no model" in proc.stderr
    assert ok_rows(out) == []
