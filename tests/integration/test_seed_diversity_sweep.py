"""The shipped seed-diversity sweep end to end on a real ComfyUI server: sweeps/seed_diversity.yaml shrunk to stock +
strength 1 of each technique, seeds 0-2, tiny models at 64 px, 2 steps, CLIPScore scored on the server by a tiny
random CLIP; then ``python -m core.diversity`` on its output. Each setting's fidelity_clip_score must equal the mean of
its rows' clip_score and CLIPScore recomputed from the saved PNGs with transformers alone."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sweep_fixtures import command, ok_rows, sweep_clip

pytestmark = pytest.mark.integration
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def clip_dir(lab):
    return sweep_clip(lab)


def shrunk_spec(repo, tmp_path):
    """The shipped spec with the stock setting and strength 1 of each technique, seeds '0-2'; workflow made absolute."""
    spec = yaml.safe_load((repo / "sweeps" / "seed_diversity.yaml").read_text())
    assert spec["metrics"] == ["clip_score"] and spec["mode"] == "zip"
    params = spec["params"]
    settings = list(zip(*params.values()))
    keep = [settings.index((0.0,) * len(params))]
    for i, address in enumerate(params):
        keep.append(settings.index(tuple(1.0 if j == i else 0.0 for j in range(len(params)))))
    spec["params"] = {address: [settings[k][i] for k in keep] for i, address in enumerate(params)}
    spec["seeds"] = f"{SEEDS[0]}-{SEEDS[-1]}"
    spec["workflow"] = str((repo / "sweeps" / spec["workflow"]).resolve())
    path = tmp_path / "seed_diversity_small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


def clip_score_by_hand(folder, png, text) -> float:
    """100 * max(cos, 0) of transformers' CLIP image and text embeddings of a saved PNG (no code of this pack)."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(folder)).eval(), CLIPProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        pixels = processor(images=Image.open(png).convert("RGB"), return_tensors="pt")["pixel_values"]
        tokens = processor(text=[text], return_tensors="pt", padding=True, truncation=True)
        image = model.get_image_features(pixel_values=pixels)
        words = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image, words = (getattr(x, "pooler_output", x) for x in (image, words))
    return 100.0 * max(float(torch.nn.functional.cosine_similarity(image, words)[0]), 0.0)


def test_seed_diversity_sweep_reports_diversity_and_fidelity(lab, clip_dir, tmp_path, repo):
    spec_path, spec = shrunk_spec(repo, tmp_path)
    workflow = tmp_path / "tiny_seed_sweep.json"
    api = lab.workflow("zimage_seed_sweep.json")  # tiny models, 64 px
    # the prompt the sweep-scoring tests' tiny CLIP (sweep_fixtures.sweep_clip) scores above 0 on tiny-model images
    api["4"]["inputs"]["text"] = "a red fox sitting in fresh snow at golden hour, detailed fur, shallow depth of field"
    workflow.write_text(json.dumps(api))
    out = tmp_path / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url, extra=["--set", "Z-Image Sampler.steps=2"]),
                          cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(ok_rows(out)) == 4 * len(SEEDS)

    table_proc = subprocess.run([sys.executable, "-m", "core.diversity", str(out)], cwd=repo, capture_output=True,
                                text=True, timeout=600)
    assert table_proc.returncode == 0, table_proc.stderr[-2000:]
    table = json.loads((out / "diversity.json").read_text())

    rows = json.loads((out / "results.json").read_text())["rows"]
    text = api["4"]["inputs"]["text"]  # the Positive Prompt node of the shipped workflow
    by_hand = {}
    for row in rows:
        key = tuple(row["params"][a] for a in spec["params"])
        by_hand.setdefault(key, []).append((row["clip_score"], clip_score_by_hand(clip_dir, out / row["image"], text)))

    assert all(h > 0 for scores in by_hand.values() for _, h in scores)  # a score clamped to 0 would compare nothing
    assert len(table) == 4 and {tuple(r[a] for a in spec["params"]) for r in table} == set(by_hand)
    names = {"stock"} | {a.rsplit(".", 1)[0] for a in spec["params"]}
    assert {(r["technique"], r["strength"]) for r in table} == {(n, 0.0 if n == "stock" else 1.0) for n in names}
    for entry in table:
        scores = by_hand[tuple(entry[a] for a in spec["params"])]
        assert entry["seeds"] == 3 and len(scores) == 3
        assert entry["fidelity_clip_score"] == pytest.approx(np.mean([s for s, _ in scores]), abs=1e-6)
        assert entry["fidelity_clip_score"] == pytest.approx(np.mean([h for _, h in scores]), rel=1e-4, abs=1e-4)
        for measure in ("ssim", "histogram", "pixel_rmse"):
            assert isinstance(entry[measure], float) and math.isfinite(entry[measure]), (measure, entry)
    csv_header = (out / "diversity.csv").read_text().splitlines()[0].split(",")
    assert "fidelity_clip_score" in csv_header and csv_header.index("ssim") < csv_header.index("fidelity_clip_score")
    plot = Image.open(out / "diversity_vs_strength.png")
    assert plot.size == (2 * 640, 400)  # diversity and fidelity panels
