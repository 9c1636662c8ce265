"""DreamSim from local files: a full-size random model of the real architecture (ViT-B/16 DINO + CLIP + OpenCLIP
ensemble, and the OpenCLIP ViT-B/32 single branch) written in the release zip's layout, loaded through the dreamsim
package's own code with no network, equals 1 - cos of DreamSim's embedding written out by hand in float64."""

from __future__ import annotations

import os

import pytest
import torch

from core import dreamsim as ds
from core import metric_models as mm

try:
    import dreamsim  # noqa: F401

    MISSING = None
except ImportError as e:
    MISSING = f"the optional dreamsim package is not installed ({e}): pip install -r requirements-metrics.txt"
needs_package = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def images(n, h=40, w=48, seed=0) -> torch.Tensor:
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@needs_package
@pytest.mark.parametrize("dreamsim_type, n", [("ensemble", 3), ("open_clip_vitb32", 4)])
def test_distance_is_one_minus_cosine_of_embeddings_by_hand(tmp_path, no_network, dreamsim_type, n):
    from dreamsim_fixtures import embedding_by_hand, save_random_dreamsim

    folder = str(tmp_path / "dreamsim")
    written = save_random_dreamsim(folder, dreamsim_type, seed=1)
    hub_dir = torch.hub.get_dir()
    scorer = ds.load_dreamsim(folder, dreamsim_type)
    assert torch.hub.get_dir() == hub_dir  # the package's torch.hub.set_dir(folder) is undone
    imgs = images(n, seed=2)
    got = ds.dreamsim_pairwise(scorer, imgs)
    assert got.shape == (n, n) and torch.equal(got, got.T) and torch.all(got.diagonal() == 0)

    pixels = ds.dreamsim_pixels(scorer, imgs)
    from PIL import Image  # the package's preprocessing: PIL bicubic resize to 224, then [0, 1]
    import numpy as np

    first = mm.to_uint8_list(imgs)[0]
    by_pil = np.asarray(Image.fromarray(first).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    torch.testing.assert_close(pixels[0].permute(1, 2, 0), torch.from_numpy(by_pil), rtol=0, atol=1e-7)

    e = embedding_by_hand(written, dreamsim_type, pixels)
    expected = 1.0 - e @ e.T
    expected.fill_diagonal_(0.0)
    assert (got.double() - expected).abs().max() < 1e-5
    assert float(expected[0, 1]) > 1e-3  # distinct images are apart
    no_lora = {**written, "lora": {k: torch.zeros_like(v) for k, v in written["lora"].items()}}
    e0 = embedding_by_hand(no_lora, dreamsim_type, pixels)
    assert ((1.0 - e0 @ e0.T) - expected).abs().max() > 1e-4  # the adapter matters, so it was loaded

    with torch.no_grad():  # the package's own forward (1 - F.cosine_similarity of embed) agrees
        forward = scorer.model(pixels[:1], pixels[1:2])
    assert abs(float(forward) - float(got[0, 1])) < 1e-5
    assert ds.dreamsim_diversity(scorer, imgs) == pytest.approx(float(expected[~torch.eye(n, dtype=bool)].mean()),
                                                                abs=1e-5)
    paired = ds.dreamsim_paired(scorer, imgs[:2], imgs[[1, 1]])
    assert abs(float(paired[0]) - float(expected[0, 1])) < 1e-5 and abs(float(paired[1])) < 1e-5


def test_missing_files_name_folder_and_files(tmp_path, no_network):
    folder = tmp_path / "dreamsim"
    folder.mkdir()
    with pytest.raises(mm.MissingWeights) as e:
        ds.load_dreamsim(str(folder), "ensemble")
    message = str(e.value)
    for name in ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
                 "ensemble_lora/adapter_config.json", os.path.join("checkpoints", "dino_vitbase16_pretrain.pth"),
                 str(folder), "dreamsim_ensemble_checkpoint.zip"):
        assert name in message, message
    (folder / "open_clip_vitb32_pretrain.pth.tar").write_bytes(b"")
    with pytest.raises(mm.MissingWeights, match="open_clip_vitb32_single_lora/adapter_config.json") as e:
        ds.load_dreamsim(str(folder), "open_clip_vitb32")
    assert "open_clip_vitb32_pretrain.pth.tar," not in str(e.value)  # only what is missing is listed
    with pytest.raises(ValueError, match="choose one of ensemble"):
        ds.load_dreamsim(str(folder), "dinov2_vitb14")


@needs_package
def test_adapter_that_does_not_match_is_refused(tmp_path, no_network):
    from safetensors.torch import save_file

    from dreamsim_fixtures import save_random_dreamsim

    folder = str(tmp_path / "dreamsim")
    written = save_random_dreamsim(folder, "open_clip_vitb32")
    renamed = {k.replace("extractor_list", "other"): v for k, v in written["lora"].items()}
    save_file(renamed, os.path.join(folder, "open_clip_vitb32_single_lora", "adapter_model.safetensors"))
    with pytest.raises(mm.MissingWeights, match="did not load"):
        ds.load_dreamsim(folder, "open_clip_vitb32")


def test_missing_package_is_named(tmp_path, monkeypatch):
    import sys

    (tmp_path / "open_clip_vitb32_pretrain.pth.tar").write_bytes(b"")  # the files are there, the package is not
    (tmp_path / "open_clip_vitb32_single_lora").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "open_clip_vitb32_single_lora" / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "dreamsim", None)
    with pytest.raises(mm.MissingPackage, match="pip install dreamsim"):
        ds.load_dreamsim(str(tmp_path), "open_clip_vitb32")


@needs_package
def test_sweep_table_command_adds_the_mean_pairwise_dreamsim(tmp_path, no_network):
    """python -m core.diversity OUT --dreamsim FOLDER: the setting's column is core's mean pairwise DreamSim."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from dreamsim_fixtures import save_random_dreamsim
    from PIL import Image

    folder = str(tmp_path / "dreamsim")
    save_random_dreamsim(folder, "open_clip_vitb32", seed=2)
    out = tmp_path / "sweep"
    (out / "images").mkdir(parents=True)
    batch = images(3, 32, 32, seed=4)
    rows = []
    for seed, im in enumerate(batch):
        Image.fromarray((im.numpy() * 255).astype("uint8")).save(out / f"images/{seed}.png")
        rows.append({"status": "ok", "seed": seed, "image": f"images/{seed}.png", "params": {"X.strength": 0.0}})
    (out / "results.json").write_text(json.dumps({"rows": rows}))
    proc = subprocess.run([sys.executable, "-m", "core.diversity", str(out), "--size", "32", "--dreamsim", folder,
                           "--dreamsim-type", "open_clip_vitb32"], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((out / "diversity.json").read_text())
    saved = torch.stack([torch.from_numpy(np.asarray(Image.open(out / f"images/{s}.png"), dtype=np.float32) / 255.0)
                         for s in range(3)])
    expected = ds.dreamsim_diversity(ds.load_dreamsim(folder, "open_clip_vitb32"), saved)
    assert row["dreamsim_open_clip_vitb32"] == pytest.approx(expected, abs=1e-4)
