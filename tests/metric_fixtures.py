"""Tiny random metric models of the real architectures, saved in the layout users would have."""

from __future__ import annotations

import gzip
import json
import os

import torch

TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=77)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=32, patch_size=8)


def clip_tokenizer_files(folder: str) -> None:
    """vocab.json + merges.txt of OpenAI's CLIP BPE, built from the copy open_clip ships."""
    import open_clip.tokenizer as oct

    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def clip_tokenizer(folder: str):
    from transformers import CLIPTokenizer

    clip_tokenizer_files(folder)
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))


def save_tiny_clip(folder: str, seed: int = 0, logit_scale: float | None = None) -> str:
    """A tiny transformers CLIPModel + CLIPProcessor folder (the layout of openai/clip-* and PickScore)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=16))
    if logit_scale is not None:
        model.logit_scale.data.fill_(logit_scale)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=clip_tokenizer(folder + "_tok"))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_siglip(folder: str, seed: int = 0) -> str:
    """A tiny transformers SiglipModel folder with a processor (CLIP's BPE stands in for SigLIP's vocabulary)."""
    from transformers import CLIPTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    torch.manual_seed(seed)
    text = dict(TINY_TEXT, max_position_embeddings=16)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=TINY_VISION))
    clip_tokenizer_files(folder + "_tok")
    tokenizer = CLIPTokenizerFast(os.path.join(folder + "_tok", "vocab.json"),
                                  os.path.join(folder + "_tok", "merges.txt"))
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_open_clip(folder: str, name: str = "tiny-ViT-H-14") -> str:
    """Add a tiny config of ViT-H-14's family (same classes, smaller widths) to open_clip's registry."""
    import open_clip

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(TINY_OPEN_CLIP, f)
    open_clip.add_model_config(path)
    return name


def save_tiny_hpsv2(path: str, arch: str, seed: int = 0) -> str:
    """A random HPSv2-format checkpoint ({'state_dict': ...}) for the open_clip architecture ``arch``."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def save_random_alexnet(folder: str, seed: int = 0) -> str:
    """torchvision's AlexNet with random weights under torchvision's file name."""
    import torchvision

    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "alexnet-owt-7be5be79.pth")
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def save_random_inception(folder: str, seed: int = 0) -> str:
    """torch-fidelity's FID Inception v3 with random (default-initialised) weights under its file name."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Blank(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pt_inception-2015-12-05-6726825d.pth")
    torch.save({}, path)
    torch.manual_seed(seed)
    net = Blank("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    torch.save(net.state_dict(), path)
    return path



def fid_by_hand(weights_path: str, fake: list, real: list) -> float:
    """FID from its definition on uint8 [H, W, 3] arrays: torch-fidelity's Inception pool features (the network
    built directly from the weight file), their means and covariances S1 = A'A, S2 = B'B (A, B the centred
    features / sqrt(n - 1)), and ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2)). The eigenvalues of
    S1 S2 are the squared singular values of A B', so Tr(sqrtm(S1 S2)) is the sum of the singular values of A B'
    (scipy): exact, and fast with fewer images than the 2048 feature dimensions."""
    import numpy as np
    import scipy.linalg
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("by-hand", ["2048"], feature_extractor_weights_path=weights_path).eval()

    def features(arrays):
        with torch.no_grad():
            return np.concatenate([net(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None])[0]
                                   .double().numpy() for a in arrays])

    f, r = features(fake), features(real)
    a = (f - f.mean(0)) / np.sqrt(len(f) - 1)
    b = (r - r.mean(0)) / np.sqrt(len(r) - 1)
    assert np.allclose(a.T @ a, np.cov(f, rowvar=False))
    trace_sqrt = scipy.linalg.svdvals(a @ b.T).sum()
    return float(((f.mean(0) - r.mean(0)) ** 2).sum() + (a ** 2).sum() + (b ** 2).sum() - 2 * trace_sqrt)


TINY_MED = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 40, "vocab_size": 40, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
            "add_cross_attention": True, "pad_token_id": 0}
TINY_WORDS = ["a", "red", "cube", "on", "table", "portrait", "of", "an", "old", "sailor", "neon", "city", "at", "night"]


def save_tiny_image_reward(folder: str, seed: int = 0, vit_width: int = 64, vit_layers: int = 2, patch: int = 8,
                           image_size: int = 32) -> str:
    """A random ImageReward.pt with the image-reward package's key names (BLIP vit.py + med.py + MLP head),
    med_config.json and a small bert-style vocab.txt, in models/metrics/imagereward's layout."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    ln = lambda prefix, n: {f"{prefix}.weight": 1 + rnd(n, s=0.1), f"{prefix}.bias": rnd(n, s=0.1)}  # noqa: E731
    lin = lambda prefix, o, i: {f"{prefix}.weight": rnd(o, i, s=i ** -0.5), f"{prefix}.bias": rnd(o, s=0.05)}  # noqa: E731
    state = {}
    v = "blip.visual_encoder"
    tokens = (image_size // patch) ** 2 + 1
    state.update({f"{v}.cls_token": rnd(1, 1, vit_width), f"{v}.pos_embed": rnd(1, tokens, vit_width),
                  f"{v}.patch_embed.proj.weight": rnd(vit_width, 3, patch, patch, s=0.05),
                  f"{v}.patch_embed.proj.bias": rnd(vit_width, s=0.05)})
    for n in range(vit_layers):
        b = f"{v}.blocks.{n}"
        state.update({**ln(f"{b}.norm1", vit_width), **lin(f"{b}.attn.qkv", 3 * vit_width, vit_width),
                      **lin(f"{b}.attn.proj", vit_width, vit_width), **ln(f"{b}.norm2", vit_width),
                      **lin(f"{b}.mlp.fc1", 4 * vit_width, vit_width), **lin(f"{b}.mlp.fc2", vit_width, 4 * vit_width)})
    state.update(ln(f"{v}.norm", vit_width))
    t, h, med = "blip.text_encoder", TINY_MED["hidden_size"], dict(TINY_MED, encoder_width=vit_width)
    state.update({f"{t}.embeddings.word_embeddings.weight": rnd(med["vocab_size"], h),
                  f"{t}.embeddings.position_embeddings.weight": rnd(med["max_position_embeddings"], h),
                  f"{t}.embeddings.position_ids": torch.arange(med["max_position_embeddings"])[None],
                  **ln(f"{t}.embeddings.LayerNorm", h)})
    for n in range(med["num_hidden_layers"]):
        b = f"{t}.encoder.layer.{n}"
        for att, kv in (("attention", h), ("crossattention", vit_width)):
            state.update({**lin(f"{b}.{att}.self.query", h, h), **lin(f"{b}.{att}.self.key", h, kv),
                          **lin(f"{b}.{att}.self.value", h, kv), **lin(f"{b}.{att}.output.dense", h, h),
                          **ln(f"{b}.{att}.output.LayerNorm", h)})
        state.update({**lin(f"{b}.intermediate.dense", med["intermediate_size"], h),
                      **lin(f"{b}.output.dense", h, med["intermediate_size"]), **ln(f"{b}.output.LayerNorm", h)})
    state.update({**lin("blip.vision_proj", 16, vit_width), **lin("blip.text_proj", 16, h)})  # unused by the score
    for k, (o, i) in zip((0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state.update(lin(f"mlp.layers.{k}", o, i))
    os.makedirs(folder, exist_ok=True)
    torch.save(state, os.path.join(folder, "ImageReward.pt"))
    with open(os.path.join(folder, "med_config.json"), "w") as f:
        json.dump(med, f)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512}, f)
    return folder


# ----- a synthetic sweep folder (zlab report / rate / score tests) -----

SHIFT, STEPS = "Z-Image Sampler.shift", "Z-Image Sampler.steps"
# metric value per (shift, steps) and seed 1, 2, 3
VALUES = {(1.0, 4): [1.0, 2.0, 6.0], (1.0, 8): [2.0, 2.0, 2.0], (3.0, 4): [0.0, 4.0, 5.0], (3.0, 8): [1.0, 1.0, 3.0]}


def make_sweep(folder, with_images=True):
    """A finished 2x2 sweep (shift x steps, seeds 1-3) with a 'quality' column and flat grey images."""
    import numpy as np
    from PIL import Image

    from zlab.sweep import cell_id

    spec = {"name": "synthetic", "description": "shift x steps", "mode": "grid",
            "params": {SHIFT: [1.0, 3.0], STEPS: [4, 8]}, "seeds": [1, 2, 3],
            "reference": {SHIFT: 3.0, STEPS: 8}, "fixed": {}, "workflow": "w.json"}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for (shift, steps), values in VALUES.items():
        for seed, v in zip(spec["seeds"], values):
            params = {SHIFT: shift, STEPS: steps}
            cell = cell_id(params, seed)
            image = f"images/s{shift}_n{steps}_{seed}.png"
            if with_images:
                Image.fromarray(np.full((32, 32, 3), int(40 * v), np.uint8)).save(folder / image)
            lines.append(json.dumps({"cell": cell, "label": f"{shift} {steps} {seed}", "status": "ok", "seed": seed,
                                     "params": params, "image": image, "seconds": 1.0, "quality": v}))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    setup = {"command": "python -m zlab sweep s.yaml", "pack_version": "0.1.0",
             "servers": [{"comfyui_version": "0.18.1", "devices": [{"name": "cuda:0 NVIDIA H200"}]}]}
    (folder / "sweep.json").write_text(json.dumps({"spec": spec, "workflow": "w.json", "setup": setup}))
    return folder
