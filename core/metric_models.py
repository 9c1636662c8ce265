"""Metrics with learned weights: loaders for local files and the scores researchers report.

Nothing is downloaded: every loader reads the user's files and raises ``MissingWeights`` (naming
the folder and the file expected) when one is absent. Images are ComfyUI IMAGE tensors
[N, H, W, 3] float in [0, 1] (or a list of [H, W, 3] arrays); texts are one prompt per image or
one prompt for all. Layout under a metrics root (ComfyUI: ``models/metrics``), see docs/metrics.md:

| metric | folder | what |
|---|---|---|
| CLIPScore | ``clip/<name>/`` | transformers CLIPModel + processor (e.g. openai/clip-vit-large-patch14) |
| SigLIP | ``siglip/<name>/`` | transformers SiglipModel / Siglip2Model + processor |
| PickScore | ``pickscore/<name>/`` | transformers CLIPModel (PickScore_v1) + processor (CLIP-ViT-H-14's) |
| HPSv2 | ``hpsv2/HPS_v2.1_compressed.pt`` | open_clip ViT-H-14 state dict |
| ImageReward | ``imagereward/ImageReward.pt`` + ``med_config.json`` + BERT tokenizer files | see core/image_reward.py |
| LPIPS | ``lpips/alexnet-owt-7be5be79.pth`` (or ``vgg16-397923af.pth``) | torchvision backbone; LPIPS v0.1 heads ship with ``lpips`` |
| FID | ``inception/pt_inception-2015-12-05-6726825d.pth`` | FID Inception v3 (torch-fidelity / pytorch-fid) |

Scores:
- CLIPScore (Hessel et al. 2021): 100 * max(cos(image, text), 0) of the projected embeddings.
- SigLIP: cosine of the projected embeddings (text padded to the trained length, as SigLIP needs).
- PickScore (Kirstain et al. 2023): exp(logit_scale) * cos.
- HPSv2 (Wu et al. 2023): cos of open_clip ViT-H-14 embeddings (the HPSv2 package's score).
- LPIPS (Zhang et al. 2018): learned perceptual distance, pairwise matrix; mean off-diagonal = diversity.
- FID (Heusel et al. 2017): Frechet distance of Inception pool features to a reference set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .save import to_uint8

LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
HPS_FILES = ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt")
# The per-image prompt scores by the names they carry in the Image Score node's output and in a sweep's rows.
# zlab/server_score.py's METRIC_FOLDERS keys are the same names: zlab cannot import core (Ray ships zlab alone to
# the workers) and core never imports zlab, so tests/core/test_diversity_sweep.py checks that the two agree.
PROMPT_SCORE_NAMES = ("clip_score", "siglip", "pickscore", "hpsv2", "image_reward")


class MissingWeights(FileNotFoundError):
    """A metric's weight file is not where the layout says."""


class MissingPackage(ImportError):
    """An optional library for one metric is not installed."""


def require(path: str, what: str) -> str:
    """Return path if it exists, else MissingWeights naming the folder and the file expected."""
    if not os.path.exists(path):
        folder, name = os.path.split(os.path.abspath(path))
        raise MissingWeights(f"{what}: expected {name!r} in folder {folder} (not found). "
                             f"See docs/metrics.md for where to get it.")
    return path


def require_hf_folder(folder: str, what: str) -> str:
    """A transformers model folder: config.json and weights must be there."""
    require(os.path.join(folder, "config.json"), what)
    if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(folder)):
        require(os.path.join(folder, "model.safetensors"), what)
    return folder


def import_optional(module: str, package: str, metric: str):
    """Import an optional library or say which package to install for which metric."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackage(f"{metric} needs the Python package {package!r}: pip install -r "
                             f"requirements-metrics.txt (or pip install {package})") from e


@dataclass
class Scorer:
    """A loaded metric model with what it needs to preprocess (processor / transform / tokenizer)."""
    kind: str
    model: Any
    preprocess: Any = None
    tokenizer: Any = None

    def to(self, device) -> "Scorer":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# ----- images and texts -----

def to_uint8_list(images) -> list[np.ndarray]:
    """IMAGE tensor [N, H, W, 3] in [0, 1] (or a list of such arrays / uint8 arrays) -> uint8 arrays, converted as
    SaveImage converts them (clip(255 x).astype(uint8), core.save.to_uint8): a score is the score of the saved PNG."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        images = list(images)
    out = []
    for im in images:
        a = im.detach().float().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im)
        if a.dtype != np.uint8:
            a = to_uint8(a)
        out.append(a[..., :3])
    return out


def to_float_batch(images) -> torch.Tensor:
    """[N, 3, H, W] float in [0, 1] (all images the same size)."""
    arrays = to_uint8_list(images)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def pair_texts(texts, n: int) -> list[str]:
    """One text per image: a single string / one-item list is repeated."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if len(texts) == 1:
        texts = texts * n
    if len(texts) != n:
        raise ValueError(f"got {len(texts)} prompts for {n} images: give one prompt, or one per image")
    return texts


def pooled(features) -> torch.Tensor:
    """transformers >= 5 returns an output object from get_*_features; 4.x returns the tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def cosine_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity."""
    return torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)


# ----- CLIP / SigLIP / PickScore (transformers) -----

def load_hf_pair(folder: str, kind: str, what: str) -> Scorer:
    """A transformers dual encoder and its processor from one folder."""
    from transformers import AutoModel, AutoProcessor

    require_hf_folder(folder, what)
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise MissingWeights(f"{what}: the folder {folder} has no usable processor / tokenizer files "
                             f"(preprocessor_config.json and the tokenizer's files): {e}") from e
    model = AutoModel.from_pretrained(folder).eval()
    return Scorer(kind, model, processor)


def load_clip(folder: str) -> Scorer:
    """CLIPScore model: a transformers CLIP folder."""
    return load_hf_pair(folder, "clip", "CLIPScore model")


def load_siglip(folder: str) -> Scorer:
    """SigLIP / SigLIP2 model: a transformers folder."""
    return load_hf_pair(folder, "siglip", "SigLIP model")


def load_pickscore(folder: str) -> Scorer:
    """PickScore_v1: a transformers CLIP folder with CLIP-ViT-H-14's processor files."""
    return load_hf_pair(folder, "pickscore", "PickScore model")


@torch.no_grad()
def hf_embeddings(scorer: Scorer, images, texts, mask=True, **text_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected image and text embeddings, one text per image (texts encoded once each); mask: pass attention_mask."""
    arrays = to_uint8_list(images)
    texts = pair_texts(texts, len(arrays))
    unique = sorted(set(texts))
    device = scorer.device
    pixels = scorer.preprocess(images=arrays, return_tensors="pt")["pixel_values"].to(device)
    tokens = scorer.preprocess(text=unique, return_tensors="pt", **text_kwargs)
    tokens = {k: v.to(device) for k, v in tokens.items() if k == "input_ids" or (mask and k == "attention_mask")}
    image_emb = pooled(scorer.model.get_image_features(pixel_values=pixels))
    text_emb = pooled(scorer.model.get_text_features(**tokens))
    index = torch.tensor([unique.index(t) for t in texts], device=device)
    return image_emb, text_emb[index]


def clip_score(scorer: Scorer, images, texts) -> torch.Tensor:
    """CLIPScore per image: 100 * max(cos, 0)."""
    image_emb, text_emb = hf_embeddings(scorer, images, texts, padding=True, truncation=True)
    return 100.0 * cosine_pairs(image_emb, text_emb).clamp(min=0.0)


def siglip_score(scorer: Scorer, images, texts) -> torch.Tensor:
    """SigLIP cosine similarity per image (text padded to max_length with no attention mask, as SigLIP was trained:
    big_vision / open_clip attend to the padding, open_clip issue 984)."""
    length = scorer.model.config.text_config.max_position_embeddings
    image_emb, text_emb = hf_embeddings(scorer, images, texts, mask=False, padding="max_length", max_length=length,
                                        truncation=True)
    return cosine_pairs(image_emb, text_emb)


def pick_score(scorer: Scorer, images, texts) -> torch.Tensor:
    """PickScore per image: exp(logit_scale) * cos."""
    image_emb, text_emb = hf_embeddings(scorer, images, texts, padding=True, truncation=True, max_length=77)
    return scorer.model.logit_scale.exp().float() * cosine_pairs(image_emb, text_emb)


# ----- HPSv2 (open_clip) -----

def load_hpsv2(path: str, arch: str = "ViT-H-14") -> Scorer:
    """HPSv2 / v2.1: an open_clip ``arch`` model with the checkpoint's weights (``state_dict`` or bare)."""
    open_clip = import_optional("open_clip", "open_clip_torch", "HPSv2")
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in HPS_FILES if os.path.exists(os.path.join(path, f))]
        path = found[0] if found else os.path.join(path, HPS_FILES[0])
    require(path, "HPSv2 checkpoint")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, precision="fp32",
                                                                 device="cpu")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    return Scorer("hpsv2", model.eval(), preprocess, open_clip.get_tokenizer(arch))


@torch.no_grad()
def hps_score(scorer: Scorer, images, texts) -> torch.Tensor:
    """HPSv2 score per image: cos of the normalised open_clip embeddings."""
    from PIL import Image

    arrays = to_uint8_list(images)
    texts = pair_texts(texts, len(arrays))
    device = scorer.device
    pixels = torch.stack([scorer.preprocess(Image.fromarray(a)) for a in arrays]).to(device)
    tokens = scorer.tokenizer(texts).to(device)
    image_emb = scorer.model.encode_image(pixels, normalize=True)
    text_emb = scorer.model.encode_text(tokens, normalize=True)
    return (image_emb * text_emb).sum(-1).float()


# ----- LPIPS -----

def load_lpips(folder: str, net: str = "alex") -> Scorer:
    """LPIPS v0.1: torchvision backbone from ``folder`` + the linear heads shipped with the lpips package."""
    lpips = import_optional("lpips", "lpips", "LPIPS")
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net {net!r}: choose one of {', '.join(LPIPS_BACKBONES)}")
    path = require(os.path.join(folder, LPIPS_BACKBONES[net]), f"LPIPS {net} backbone")
    model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    backbone = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for name in model.net.state_dict():
        _slice, index, param = name.split(".")
        state[name] = backbone[f"features.{index}.{param}"]
    model.net.load_state_dict(state)
    return Scorer("lpips", model.eval())


@torch.no_grad()
def lpips_pairwise(scorer: Scorer, images) -> torch.Tensor:
    """Symmetric [N, N] LPIPS distance matrix (zero diagonal); images in [0, 1], same size."""
    x = to_float_batch(images).to(scorer.device) * 2.0 - 1.0
    if min(x.shape[-2:]) < 32:
        raise ValueError(f"images are {x.shape[-1]}x{x.shape[-2]}: LPIPS needs at least 32 pixels a side "
                         "(its backbone downsamples 32x)")
    n = x.shape[0]
    out = torch.zeros(n, n)
    rows, cols = torch.triu_indices(n, n, offset=1)
    for start in range(0, len(rows), 16):
        i, j = rows[start:start + 16], cols[start:start + 16]
        d = scorer.model(x[i], x[j]).flatten().float().cpu()
        out[i, j] = d
        out[j, i] = d
    return out


def mean_pairwise(matrix: torch.Tensor) -> float:
    """Mean of the off-diagonal entries (diversity of a set); nan for fewer than two images."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float(matrix.sum() / (n * (n - 1)))


# ----- FID -----

def load_inception(path: str) -> Scorer:
    """FID Inception v3 (torch-fidelity's FeatureExtractorInceptionV3) from a local weight file."""
    fid = import_optional("torchmetrics.image.fid", "torchmetrics[image]", "FID")
    import_optional("torch_fidelity", "torch-fidelity", "FID")
    if os.path.isdir(path):
        path = os.path.join(path, INCEPTION_FILE)
    require(path, "FID Inception weights")
    metric = fid.FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=path)
    return Scorer("fid", metric)


@torch.no_grad()
def fid_score(scorer: Scorer, images, reference_images) -> float:
    """FID of images against reference_images (each a batch or list; sizes may differ between the sets)."""
    metric = scorer.model
    metric.reset()
    for real, batch in ((True, reference_images), (False, images)):
        for a in to_uint8_list(batch):
            metric.update(to_float_batch([a]).to(scorer.device), real=real)
    return float(metric.compute())
