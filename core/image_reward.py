"""ImageReward (Xu et al. 2023) on transformers' BLIP classes: a port of the image-reward package's model.

The ``image-reward`` package pins timm 0.6 / fairscale and imports transformers 4 internals, so it does
not run beside current transformers. Its model is BLIP (ViT-L/16 image encoder + BERT text encoder with
cross-attention to the image, ``med_config.json``) and an MLP head on the text [CLS] state:

    reward = (MLP(text_encoder(prompt, image_embeds)[:, 0]) - 0.16717362830052426) / 1.0333394966054072

transformers' ``BlipVisionModel`` and ``BlipTextModel`` are the same blocks (ported from BLIP's vit.py and
med.py); this module maps the checkpoint's keys onto them (as transformers' BLIP conversion script does),
tokenizes like BLIP (bert-base-uncased + [DEC] + [ENC], max_length 35, padded) and preprocesses like
ImageReward (bicubic resize 224, centre crop, CLIP normalisation).

Files (``models/metrics/imagereward/``): ``ImageReward.pt`` (state dict), ``med_config.json``, and the
bert-base-uncased tokenizer files (``vocab.txt``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import os
import re

import torch

from .metric_models import Scorer, pair_texts, require, to_uint8_list

MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_RENAMES = [  # BLIP vit.py name -> transformers BlipVisionModel name
    (r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."), (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."), (r"^norm\.", "post_layernorm."),
]


def vision_state(state: dict) -> dict:
    """blip.visual_encoder.* -> BlipVisionModel keys."""
    out = {}
    for key, value in state.items():
        if not key.startswith("blip.visual_encoder."):
            continue
        name = key[len("blip.visual_encoder."):]
        for pattern, repl in VISION_RENAMES:
            name, n = re.subn(pattern, repl, name)
            if n:
                break
        out[name] = value
    return out


def configs(state: dict, med: dict):
    """BlipVisionConfig / BlipTextConfig sized from the checkpoint and med_config.json."""
    from transformers import BlipTextConfig, BlipVisionConfig

    pos = state["blip.visual_encoder.pos_embed"]
    patch = state["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    hidden = pos.shape[-1]
    layers = len({k.split(".")[3] for k in state if k.startswith("blip.visual_encoder.blocks.")})
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    vision = BlipVisionConfig(hidden_size=hidden, intermediate_size=state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
                              num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), image_size=grid * patch,
                              patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")
    text = BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                          encoder_hidden_size=med.get("encoder_width", hidden), intermediate_size=med["intermediate_size"],
                          num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
                          max_position_embeddings=med["max_position_embeddings"],
                          layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"),
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=True)
    return vision, text


class ImageRewardModel(torch.nn.Module):
    """BLIP image encoder + cross-attending text encoder + ImageReward's MLP head."""

    def __init__(self, vision_config, text_config, image_size: int):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        width = text_config.hidden_size
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                                       torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                                       torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
        self.image_size = image_size

    def forward(self, pixel_values, input_ids, attention_mask):
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                         encoder_attention_mask=image_mask, is_decoder=False).last_hidden_state
        return ((self.mlp(text[:, 0, :].float()) - MEAN) / STD).squeeze(-1)


def load_image_reward(folder: str) -> Scorer:
    """ImageReward from models/metrics/imagereward (ImageReward.pt, med_config.json, BERT tokenizer files)."""
    from transformers import BertTokenizer

    state = torch.load(require(os.path.join(folder, "ImageReward.pt"), "ImageReward checkpoint"), map_location="cpu",
                       weights_only=True)
    with open(require(os.path.join(folder, "med_config.json"), "ImageReward med_config.json"), encoding="utf-8") as f:
        med = json.load(f)
    require(os.path.join(folder, "vocab.txt"), "ImageReward tokenizer (bert-base-uncased vocab.txt)")
    tokenizer = BertTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    vision, text = configs(state, med)
    model = ImageRewardModel(vision, text, vision.image_size)
    model.vision.load_state_dict(vision_state(state))
    model.text.load_state_dict({k[len("blip.text_encoder."):]: v for k, v in state.items()  # med.py names = BlipText's
                                if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")})
    model.mlp.load_state_dict({k[len("mlp.layers."):]: v for k, v in state.items() if k.startswith("mlp.layers.")})
    return Scorer("imagereward", model.eval(), None, tokenizer)


def preprocess(arrays, size: int) -> torch.Tensor:
    """ImageReward's transform: bicubic resize of the short side, centre crop, CLIP normalisation."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    transform = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), ToTensor(),
                         Normalize(CLIP_MEAN, CLIP_STD)])
    return torch.stack([transform(Image.fromarray(a).convert("RGB")) for a in arrays])


@torch.no_grad()
def image_reward(scorer: Scorer, images, texts) -> torch.Tensor:
    """ImageReward per image (normalised so the training set has mean 0, std 1; higher = preferred)."""
    arrays = to_uint8_list(images)
    texts = pair_texts(texts, len(arrays))
    device = scorer.device
    tokens = scorer.tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    pixels = preprocess(arrays, scorer.model.image_size).to(device)
    return scorer.model(pixels, tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
