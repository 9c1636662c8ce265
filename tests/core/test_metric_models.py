"""Learned metrics: each loader runs on a tiny random model of the real architecture saved in the
users' layout, and each score equals an independent computation from the same weights."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from core import metric_models as mm
from metric_fixtures import (fid_by_hand, register_tiny_open_clip, save_random_alexnet, save_random_inception,
                             save_tiny_clip, save_tiny_hpsv2, save_tiny_siglip)

PROMPTS = ["a red cube on a table", "a portrait of an old sailor", "a red cube on a table", "neon city at night"]


def images(n=4, h=40, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def uint8_list(imgs):
    """The pixels as ComfyUI's SaveImage writes them (nodes.py: clip(255. * x, 0, 255).astype(uint8), truncating)."""
    return [np.clip(255. * im.numpy(), 0, 255).astype(np.uint8) for im in imgs]


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
    inputs.pop("attention_mask", None)  # SigLIP was trained attending to the padding (big_vision; open_clip issue 984)
    with torch.no_grad():
        out = scorer.model(**inputs)
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
    pytest.importorskip("scipy.linalg")
    path = save_random_inception(str(tmp_path / "inception"))
    scorer = mm.load_inception(str(tmp_path / "inception"))
    fake, real = images(5, 32, 32, seed=5), images(6, 40, 40, seed=6) * 0.5
    got = mm.fid_score(scorer, fake, real)
    expected = fid_by_hand(path, uint8_list(fake), uint8_list(real))
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert got > 0


@pytest.mark.parametrize("loader, layout, expected", [
    (mm.load_clip, "clip/missing", "config.json"),
    (mm.load_siglip, "siglip/missing", "config.json"),
    (mm.load_pickscore, "pickscore/missing", "config.json"),
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


# ----- ImageReward: the port against BLIP's forward written out from the checkpoint's own key names -----

def _ln(x, state, prefix, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)


def _lin(x, state, prefix):
    return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]


def _attention(q, k, v, heads, mask=None):
    b, n, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, None, :].float()) * torch.finfo(scores.dtype).min
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)


def blip_vit_by_hand(state, pixels, patch, heads):
    """BLIP vit.py VisionTransformer.forward: patch conv, [CLS] + pos, pre-norm blocks, final norm (eps 1e-6)."""
    p = "blip.visual_encoder"
    x = torch.nn.functional.conv2d(pixels, state[f"{p}.patch_embed.proj.weight"], state[f"{p}.patch_embed.proj.bias"],
                                   stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([state[f"{p}.cls_token"].expand(x.shape[0], -1, -1), x], 1) + state[f"{p}.pos_embed"]
    n = 0
    while f"{p}.blocks.{n}.norm1.weight" in state:
        b = f"{p}.blocks.{n}"
        q, k, v = _lin(_ln(x, state, f"{b}.norm1", 1e-6), state, f"{b}.attn.qkv").chunk(3, dim=-1)
        x = x + _lin(_attention(q, k, v, heads), state, f"{b}.attn.proj")
        h = _ln(x, state, f"{b}.norm2", 1e-6)
        x = x + _lin(torch.nn.functional.gelu(_lin(h, state, f"{b}.mlp.fc1")), state, f"{b}.mlp.fc2")
        n += 1
    return _ln(x, state, f"{p}.norm", 1e-6)


def med_bert_by_hand(state, ids, mask, image, heads, eps=1e-12):
    """BLIP med.py BertModel (multimodal): post-norm self-attention, cross-attention to the image, feed-forward."""
    t = "blip.text_encoder"
    x = state[f"{t}.embeddings.word_embeddings.weight"][ids] + state[f"{t}.embeddings.position_embeddings.weight"][:ids.shape[1]]
    x = _ln(x, state, f"{t}.embeddings.LayerNorm", eps)
    n = 0
    while f"{t}.encoder.layer.{n}.attention.self.query.weight" in state:
        b = f"{t}.encoder.layer.{n}"
        for att, source, m in (("attention", x, mask), ("crossattention", image, None)):
            a = _attention(_lin(x, state, f"{b}.{att}.self.query"), _lin(source, state, f"{b}.{att}.self.key"),
                           _lin(source, state, f"{b}.{att}.self.value"), heads, m)
            x = _ln(_lin(a, state, f"{b}.{att}.output.dense") + x, state, f"{b}.{att}.output.LayerNorm", eps)
        h = _lin(torch.nn.functional.gelu(_lin(x, state, f"{b}.intermediate.dense")), state, f"{b}.output.dense")
        x = _ln(h + x, state, f"{b}.output.LayerNorm", eps)
        n += 1
    return x


def imagereward_pixels(arrays, size):
    """ImageReward's _transform by hand: PIL bicubic resize of the short side, centre crop, CLIP normalisation."""
    from PIL import Image

    out = []
    for a in arrays:
        im = Image.fromarray(a)
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((round(w * scale), round(h * scale)) if w != h else (size, size), Image.BICUBIC)
        left, top = int(round((im.width - size) / 2.0)), int(round((im.height - size) / 2.0))
        x = torch.from_numpy(np.asarray(im.crop((left, top, left + size, top + size)))).permute(2, 0, 1).float() / 255
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]
        out.append((x - mean) / std)
    return torch.stack(out)


def test_image_reward_port_matches_blip_written_out(tmp_path):
    from core import image_reward as ir
    from metric_fixtures import save_tiny_image_reward

    folder = save_tiny_image_reward(str(tmp_path / "imagereward"))
    scorer = ir.load_image_reward(folder)
    imgs = images(seed=7)
    got = ir.image_reward(scorer, imgs, PROMPTS)
    state = torch.load(os.path.join(folder, "ImageReward.pt"))
    pixels = imagereward_pixels(uint8_list(imgs), 32)
    tokens = scorer.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"][0, 0] == scorer.tokenizer.cls_token_id  # ImageReward keeps [CLS] first
    with torch.no_grad():
        image = blip_vit_by_hand(state, pixels, patch=8, heads=1)
        text = med_bert_by_hand(state, tokens["input_ids"], tokens["attention_mask"], image, heads=2)
        r = text[:, 0]
        for k in (0, 2, 4, 6, 7):  # the head's Linear layers (Dropouts between them, no activations)
            r = _lin(r, state, f"mlp.layers.{k}")
        expected = (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.std() > 0


def test_image_reward_missing_files_are_named(tmp_path):
    from core import image_reward as ir

    (tmp_path / "imagereward").mkdir()
    with pytest.raises(mm.MissingWeights, match="ImageReward.pt"):
        ir.load_image_reward(str(tmp_path / "imagereward"))
