"""Learned metrics: each loader runs on a tiny random model of the real architecture saved in the
users' layout, and each score equals an independent computation from the same weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core import metric_models as mm
from metric_fixtures import (register_tiny_open_clip, save_random_alexnet, save_random_inception, save_tiny_clip,
                             save_tiny_hpsv2, save_tiny_siglip)

PROMPTS = ["a red cube on a table", "a portrait of an old sailor", "a red cube on a table", "neon city at night"]


def images(n=4, h=40, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def uint8_list(imgs):
    return [(im.numpy() * 255).round().astype(np.uint8) for im in imgs]


def cosine_from_logits(out, model, bias=0.0) -> torch.Tensor:
    """Paired cosines from the model's own forward: logits_per_image = exp(scale) * cos (+ bias)."""
    return (torch.diagonal(out.logits_per_image) - bias) / model.logit_scale.exp()


def test_clip_score_is_100_times_positive_cosine(tmp_path):
    folder = save_tiny_clip(str(tmp_path / "clip" / "tiny"))
    scorer = mm.load_clip(folder)
    imgs = images()
    got = mm.clip_score(scorer, imgs, PROMPTS)
    inputs = scorer.preprocess(text=PROMPTS, images=uint8_list(imgs), return_tensors="pt", padding=True)
    with torch.no_grad():
        cos = cosine_from_logits(scorer.model(**inputs), scorer.model)
    expected = 100.0 * torch.clamp(cos, min=0.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert (cos < 0).any() or (cos > 0).all()  # the clamp matters or every cosine is positive
    one = mm.clip_score(scorer, imgs[:2], "a red cube on a table")  # one prompt for all images
    torch.testing.assert_close(one[0], got[0])


def test_pickscore_is_scaled_cosine(tmp_path):
    folder = save_tiny_clip(str(tmp_path / "pickscore" / "tiny"), seed=1, logit_scale=4.6052)
    scorer = mm.load_pickscore(folder)
    imgs = images(seed=1)
    got = mm.pick_score(scorer, imgs, PROMPTS)
    inputs = scorer.preprocess(text=PROMPTS, images=uint8_list(imgs), return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = torch.diagonal(scorer.model(**inputs).logits_per_image)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert got.abs().max() > 1.0  # exp(4.6) = 100 scales it


def test_siglip_similarity_is_cosine_at_trained_length(tmp_path):
    folder = save_tiny_siglip(str(tmp_path / "siglip" / "tiny"))
    scorer = mm.load_siglip(folder)
    imgs = images(seed=2)
    got = mm.siglip_score(scorer, imgs, PROMPTS)
    inputs = scorer.preprocess(text=PROMPTS, images=uint8_list(imgs), return_tensors="pt",
                               padding="max_length", max_length=16)
    with torch.no_grad():
        out = scorer.model(**inputs)  # whatever the processor gives (SigLIP2's tokenizer adds a mask)
    expected = cosine_from_logits(out, scorer.model, bias=scorer.model.logit_bias)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_hpsv2_is_cosine_of_open_clip_embeddings(tmp_path):
    pytest.importorskip("open_clip")
    arch = register_tiny_open_clip(str(tmp_path / "configs"))
    path = save_tiny_hpsv2(str(tmp_path / "hpsv2" / "HPS_v2.1_compressed.pt"), arch)
    scorer = mm.load_hpsv2(str(tmp_path / "hpsv2"), arch=arch)  # the folder finds the file
    imgs = images(seed=3)
    got = mm.hps_score(scorer, imgs, PROMPTS)
    from PIL import Image

    pixels = torch.stack([scorer.preprocess(Image.fromarray(a)) for a in uint8_list(imgs)])
    with torch.no_grad():
        out = scorer.model(pixels, scorer.tokenizer(PROMPTS))
    image_features, text_features = out[0], out[1]  # open_clip returns normalised features
    expected = (image_features * text_features).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert os.path.exists(path)


def lpips_by_hand(backbone: dict, lin: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 from its definition: AlexNet relu1..5, channel-unit-normalise, squared difference,
    1x1 learned weights, spatial mean, sum over layers. x, y in [-1, 1]."""
    import torchvision

    net = torchvision.models.alexnet()
    net.load_state_dict(backbone)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {1, 4, 7, 9, 11}  # ReLUs after conv1..conv5

    def feats(z):
        z = (z - shift) / scale
        out = []
        for i, layer in enumerate(net.features[:12]):
            z = layer(z)
            if i in taps:
                out.append(z / (z.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        w = lin[f"lin{k}.model.1.weight"]
        total = total + torch.nn.functional.conv2d((a - b) ** 2, w).mean(dim=(2, 3))
    return total.flatten()


def test_lpips_pairwise_matches_definition(tmp_path):
    pytest.importorskip("lpips")
    path = save_random_alexnet(str(tmp_path / "lpips"))
    scorer = mm.load_lpips(str(tmp_path / "lpips"))
    imgs = images(3, 64, 64, seed=4)
    got = mm.lpips_pairwise(scorer, imgs)
    assert got.shape == (3, 3) and torch.equal(got, got.T) and torch.all(got.diagonal() == 0)
    import lpips

    lin = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/alex.pth"), map_location="cpu")
    x = torch.from_numpy(np.stack(uint8_list(imgs))).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # as scored
    with torch.no_grad():
        expected = lpips_by_hand(torch.load(path), lin, x[[0, 0, 1]], x[[1, 2, 2]])
    torch.testing.assert_close(torch.stack([got[0, 1], got[0, 2], got[1, 2]]), expected, rtol=1e-4, atol=1e-6)
    assert mm.mean_pairwise(got) == pytest.approx(float(expected.mean()), rel=1e-4)


def test_fid_matches_frechet_distance_of_inception_features(tmp_path):
    pytest.importorskip("torch_fidelity")
    scipy_linalg = pytest.importorskip("scipy.linalg")
    path = save_random_inception(str(tmp_path / "inception"))
    scorer = mm.load_inception(str(tmp_path / "inception"))
    fake, real = images(5, 32, 32, seed=5), images(6, 40, 40, seed=6) * 0.5
    got = mm.fid_score(scorer, fake, real)

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("check", ["2048"], feature_extractor_weights_path=path)

    def features(batch):
        u8 = torch.from_numpy(np.stack(uint8_list(batch))).permute(0, 3, 1, 2)
        with torch.no_grad():
            return net(u8)[0].double().numpy()

    f, r = features(fake), features(real)
    mu1, mu2, s1, s2 = f.mean(0), r.mean(0), np.cov(f, rowvar=False), np.cov(r, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert got > 0


@pytest.mark.parametrize("loader, layout, expected", [
    (mm.load_clip, "clip/missing", "config.json"),
    (mm.load_hpsv2, "hpsv2", "HPS_v2.1_compressed.pt"),
    (mm.load_lpips, "lpips", "alexnet-owt-7be5be79.pth"),
    (mm.load_inception, "inception", "pt_inception-2015-12-05-6726825d.pth"),
])
def test_missing_weights_name_folder_and_file(tmp_path, loader, layout, expected):
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    with pytest.raises(mm.MissingWeights) as e:
        loader(str(folder))
    assert expected in str(e.value) and str(folder) in str(e.value)


def test_prompt_count_must_match_images():
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        mm.pair_texts(["a", "b", "c"], 2)
