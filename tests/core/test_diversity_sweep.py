"""The seed-diversity table of a finished sweep: settings grouped, diversity and fidelity columns by hand."""

import csv
import json
import subprocess
import sys

import pytest
from PIL import Image

from core import diversity_sweep as ds
from core import metric_models

CAPTION, INITIAL = "Caption Noise.strength", "Initial Noise Structure.strength"


def write_sweep(folder, settings, extra_rows=()):
    """results.json of a finished sweep: settings maps strength -> [(colour, scores), ...] per seed, 16 px images."""
    (folder / "images").mkdir()
    rows = []
    for strength, seeds in settings.items():
        for seed, (colour, scores) in enumerate(seeds):
            name = f"images/s{strength}_{seed}.png"
            Image.new("RGB", (16, 16), colour).save(folder / name)
            rows.append({"status": "ok", "seed": seed, "image": name, "params": {CAPTION: strength, INITIAL: 0.0},
                         **scores})
    (folder / "results.json").write_text(json.dumps({"rows": rows + list(extra_rows)}))


def by_setting(table):
    return {(r["technique"], r["strength"]): r for r in table}


def test_sweep_diversity_groups_seeds_per_setting(tmp_path):
    black, white = (0, 0, 0), (255, 255, 255)
    write_sweep(tmp_path, {0.0: [(black, {}), (black, {})], 1.0: [(black, {}), (white, {})]},  # identical; opposite
                extra_rows=[{"status": "error", "seed": 9, "params": {CAPTION: 2.0, INITIAL: 0.0}}])
    by = by_setting(ds.sweep_diversity(tmp_path, size=16, bins=4))
    assert set(by) == {("stock", 0.0), ("Caption Noise", 1.0)}
    assert by[("stock", 0.0)]["histogram"] == 0 and by[("Caption Noise", 1.0)]["histogram"] == 1.0
    assert by[("Caption Noise", 1.0)]["pixel_rmse"] == 1.0 and by[("Caption Noise", 1.0)]["seeds"] == 2
    assert (tmp_path / "diversity.csv").read_text().startswith("technique,strength,seeds")
    assert not any(k.startswith("fidelity_") for r in by.values() for k in r)  # no score in the rows: no column
    plot = Image.open(tmp_path / "diversity_vs_strength.png")
    assert plot.size == (640, 400)  # one panel (6.4 x 4.0 in at 100 dpi)


def test_fidelity_columns_are_the_mean_score_of_each_settings_seeds(tmp_path):
    grey, red = (128, 128, 128), (200, 0, 0)
    write_sweep(tmp_path, {
        0.0: [(grey, {"clip_score": 20.0, "siglip": 0.25}), (grey, {"clip_score": 22.5, "siglip": 0.5}),
              (grey, {"clip_score": 30.0, "siglip": -0.25})],
        1.0: [(grey, {"clip_score": 10.0, "siglip": 0.125}), (red, {"clip_score": 11.0}),  # one seed lacks siglip
              (red, {"clip_score": 15.5, "siglip": 0.5})],
    })
    table = ds.sweep_diversity(tmp_path, size=16, bins=4)
    by = by_setting(table)
    stock, noisy = by[("stock", 0.0)], by[("Caption Noise", 1.0)]
    # by hand: (20 + 22.5 + 30) / 3 = 24.1666..., (0.25 + 0.5 - 0.25) / 3 = 0.1666..., (10 + 11 + 15.5) / 3 = 12.1666...
    assert stock["fidelity_clip_score"] == pytest.approx(72.5 / 3, abs=1e-6)
    assert stock["fidelity_siglip"] == pytest.approx(0.5 / 3, abs=1e-6)
    assert noisy["fidelity_clip_score"] == pytest.approx(36.5 / 3, abs=1e-6)
    assert noisy["fidelity_siglip"] is None  # a mean over 2 of 3 seeds would compare unlike with the others
    for absent in ("pickscore", "hpsv2", "image_reward"):
        assert f"fidelity_{absent}" not in stock and f"fidelity_{absent}" not in noisy
    with open(tmp_path / "diversity.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["fidelity_clip_score", "fidelity_siglip"]  # after the diversity columns
    assert header.index("pixel_rmse") < header.index("fidelity_clip_score")
    saved = by_setting(json.loads((tmp_path / "diversity.json").read_text()))
    assert saved[("stock", 0.0)]["fidelity_clip_score"] == pytest.approx(72.5 / 3, abs=1e-6)
    plot = Image.open(tmp_path / "diversity_vs_strength.png")
    assert plot.size == (3 * 640, 400)  # diversity, clip_score and siglip panels


def test_the_command_keeps_its_name(tmp_path):
    from pathlib import Path

    grey = (128, 128, 128)
    write_sweep(tmp_path, {0.0: [(grey, {"clip_score": 1.0}), (grey, {"clip_score": 2.0})]})
    proc = subprocess.run([sys.executable, "-m", "core.diversity", str(tmp_path), "--size", "16"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "technique stock" in proc.stdout and "fidelity_clip_score 1.5" in proc.stdout
    assert (tmp_path / "diversity_vs_strength.png").is_file()


def test_score_names_agree_with_the_sweeps_server_scoring():
    from zlab import server_score

    assert list(metric_models.PROMPT_SCORE_NAMES) == list(server_score.METRIC_FOLDERS)
