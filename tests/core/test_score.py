"""zlab score on a synthetic sweep with tiny models: per-cell scores equal core's, set metrics, report merge."""

import json

import numpy as np
import pytest
from PIL import Image

from core import metric_models as mm
from metric_fixtures import make_sweep, save_random_alexnet, save_tiny_clip
from zlab import report, score


def test_score_writes_cell_and_condition_metrics(tmp_path):
    pytest.importorskip("lpips")
    sweep_dir = make_sweep(tmp_path / "sweep")
    models = tmp_path / "models"
    save_tiny_clip(str(models / "clip" / "tiny"))
    save_random_alexnet(str(models / "lpips"))
    doc = score.score(sweep_dir, ["clip_score", "lpips"], str(models), prompt="a grey square")
    rows = {r["cell"]: r for r in report.read_rows(sweep_dir)}
    scorer = mm.load_clip(str(models / "clip" / "tiny"))
    for cell, values in doc["cells"].items():
        pixels = np.asarray(Image.open(sweep_dir / rows[cell]["image"]).convert("RGB"))
        assert values["clip_score"] == pytest.approx(float(mm.clip_score(scorer, [pixels], "a grey square")[0]), abs=1e-4)
    # reference cells are at LPIPS 0 from themselves; flat images of different grey differ
    ref = [c for c, r in rows.items() if r["params"]["Z-Image Sampler.shift"] == 3.0 and r["params"]["Z-Image Sampler.steps"] == 8]
    assert all(doc["cells"][c]["lpips_to_reference"] == 0.0 for c in ref)
    assert set(doc["conditions"]) == {"shift=1.0, steps=4", "shift=1.0, steps=8", "shift=3.0, steps=4", "shift=3.0, steps=8"}
    assert doc["conditions"]["shift=1.0, steps=8"]["lpips_diversity"] == 0.0  # three identical images
    sweep = report.load_sweep(sweep_dir)
    assert {"clip_score", "lpips_to_reference"} <= set(sweep.metrics)
    html = report.render_html(sweep, report.build(sweep))
    assert "lpips_diversity" in html and "clip_score" in html
    assert json.loads((sweep_dir / "scores.json").read_text())["metrics"] == ["clip_score", "lpips"]


def test_unknown_metric_and_missing_models_are_clear(tmp_path, capsys):
    from zlab.__main__ import main

    sweep_dir = make_sweep(tmp_path / "sweep")
    assert main(["score", str(sweep_dir), "--metrics", "clipscore"]) == 2
    assert "unknown metrics ['clipscore']" in capsys.readouterr().err
    assert main(["score", str(sweep_dir), "--metrics", "lpips", "--models", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err and str(tmp_path / "none" / "lpips") in err
