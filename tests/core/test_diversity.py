"""Diversity measures against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from core import diversity as d

C1, C2 = 0.01 ** 2, 0.03 ** 2  # SSIM constants for data range 1


def flat(colour, size=32):
    """An IMAGE [1, size, size, 3] of one colour."""
    return torch.tensor(colour, dtype=torch.float32).view(1, 1, 1, 3).expand(1, size, size, 3).clone()


def test_ssim_distance_of_flat_images_is_the_luminance_term():
    # constant images: every window has mean m, variance 0, so SSIM = (2 m_a m_b + C1) / (m_a^2 + m_b^2 + C1)
    a, b = flat([0.2, 0.2, 0.2]), flat([0.6, 0.6, 0.6])
    expected = 1 - (2 * 0.2 * 0.6 + C1) / (0.2 ** 2 + 0.6 ** 2 + C1)
    report = d.image_diversity(torch.cat([a, b]), size=32)
    assert report["ssim"] == pytest.approx(expected, abs=1e-6)
    assert d.image_diversity(torch.cat([a, a]), size=32)["ssim"] == pytest.approx(0.0, abs=1e-9)


def test_histogram_distance_by_hand():
    red, blue, purple = flat([1.0, 0.0, 0.0]), flat([0.0, 0.0, 1.0]), flat([1.0, 0.0, 1.0])
    # red vs blue: R channel all in the top bin vs all in the bottom bin (TV 1), G equal (0), B (1) -> mean 2/3
    # red vs purple: only B differs -> 1/3; blue vs purple: only R differs -> 1/3
    report = d.image_diversity(torch.cat([red, blue, purple]), size=32, bins=4)
    assert report["histogram"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    half = torch.zeros(1, 2, 2, 3)
    half[0, 0] = 0.9  # half the pixels white-ish, half black
    h = d.colour_histogram(d.as_batch(half)[0], 2)
    assert torch.allclose(h, torch.tensor([[0.5, 0.5]] * 3, dtype=torch.float64))


def test_pixel_and_latent_rmse_by_hand():
    a, b, c = flat([0.0] * 3, 8), flat([0.5] * 3, 8), flat([1.0] * 3, 8)
    report = d.image_diversity(torch.cat([a, b, c]), size=8)
    assert report["pixel_rmse"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    latents = torch.zeros(3, 4, 2, 2)
    latents[1] += 1.0
    latents[2] += 3.0
    assert d.latent_diversity(latents) == pytest.approx((1.0 + 3.0 + 2.0) / 3)


def test_ms_ssim_only_on_large_enough_images():
    g = torch.Generator().manual_seed(0)
    small = torch.rand(2, 64, 64, 3, generator=g)
    assert d.image_diversity(small, size=64)["ms_ssim"] is None
    big = torch.rand(2, 200, 200, 3, generator=g)
    report = d.image_diversity(big, size=256)
    assert 0.0 < report["ms_ssim"] <= 1.0 and report["size"] == [200, 200]


def test_downscale_keeps_aspect_and_small_images():
    x = torch.rand(2, 3, 100, 400)
    assert d.downscale(x, 200).shape[-2:] == (50, 200)
    assert d.downscale(x, 1000) is x


def test_embedding_diversity_and_fidelity_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # cosines: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2
    expected = ((1 - 0) + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert d.embedding_diversity(e) == pytest.approx(expected)
    text = torch.tensor([3.0, 0.0])
    assert d.fidelity(e, text) == pytest.approx((1 + 0 + 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match="one model"):
        d.fidelity(e, torch.ones(3))


def test_pairwise_needs_two_items():
    with pytest.raises(ValueError, match="at least 2 images"):
        d.image_diversity(flat([0.1, 0.2, 0.3]))


def test_plots_are_images():
    grid = d.seed_grid([("stock", torch.rand(3, 16, 16, 3)), ("noise", torch.rand(2, 16, 16, 3))], tile=64)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[-1] == 3
    plot = d.strength_plot({"caption": [(0.0, 0.1), (1.0, 0.3)], "empty": []}, "ssim")
    assert plot.shape[-1] == 3 and plot.std() > 0


def test_lpips_loads_real_weights_through_the_real_loader_and_matches_the_formula(tmp_path, monkeypatch):
    """LPIPS (squeeze) built by the lpips package from torchvision's cache file: a random SqueezeNet 1.1 of the real
    architecture written where torchvision looks (no download), the package's own linear heads; the distance is
    recomputed by hand from the backbone features and the heads file."""
    lpips = pytest.importorskip("lpips")
    tv = pytest.importorskip("torchvision")
    import os

    torch.manual_seed(0)
    backbone = tv.models.squeezenet1_1()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(backbone.state_dict(), cache / os.path.basename(tv.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = d.load_lpips("squeeze")
    assert torch.equal(model.net.slice1[0].weight, backbone.features[0].weight)  # the file's weights, not torchvision's

    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 48, 48, 3, generator=g)
    got = d.lpips_diversity(model, images, size=48)

    heads = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "squeeze.pth"), map_location="cpu")
    slices = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)]
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(x):
        h, out = (x * 2 - 1 - shift) / scale, []
        for a, b in slices:
            for layer in backbone.features[a:b]:
                h = layer(h)
            out.append(h)
        return out

    def distance(a, b):
        total = 0.0
        for k, (fa, fb) in enumerate(zip(features(a[None]), features(b[None]))):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total += float(((na - nb).pow(2) * w).sum(1).mean())
        return total

    x = images.permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = (distance(x[0], x[1]) + distance(x[0], x[2]) + distance(x[1], x[2])) / 3
    assert got == pytest.approx(expected, rel=1e-4)


def test_distance_matrix_by_hand_and_low_frequency_pooling():
    b = torch.tensor([[[1.0, -1.0], [1.0, -1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    batch = torch.stack([torch.zeros(2, 2, 2), b])
    full = d.distance_matrix(batch)
    assert full[0, 1] == pytest.approx(math.sqrt((4 * 1 + 4 * 4) / 8))  # (1,-1,1,-1, 2,2,2,2)
    pooled = d.distance_matrix(batch, pool=2)  # channel means: 0 and 2 -> RMSE over 2 values sqrt(4 / 2)
    assert pooled[0, 1] == pytest.approx(math.sqrt(2.0))
    assert full[1, 0] == full[0, 1] and full[0, 0] == 0


def test_paired_bootstrap_by_hand():
    rng = np.random.default_rng(1)
    base = rng.random((6, 6))
    base = base + base.T
    shifted = base + 0.5
    r = d.paired_bootstrap(base, shifted, rounds=200)
    assert r["difference"] == pytest.approx(0.5) and r["low"] == pytest.approx(0.5) and r["high"] == pytest.approx(0.5)
    assert r["base"] == pytest.approx(base[np.triu_indices(6, 1)].mean())
    noisy = base + rng.normal(0, 1, (6, 6))
    r = d.paired_bootstrap(base, (noisy + noisy.T) / 2, rounds=500)
    assert r["low"] < r["difference"] < r["high"]
    with pytest.raises(ValueError, match="same N"):
        d.paired_bootstrap(base, base[:5, :5])
