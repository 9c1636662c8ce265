"""Learned image metrics as nodes: prompt alignment / preference scores and LPIPS, from models/metrics."""

from __future__ import annotations

import json
import os

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..core import image_reward
from ..core import metric_models as core
from ..core import metrics as plain_metrics
from . import CATEGORY
from ._internals import xy as internals
from .metrics import as_image_tensor

FOLDER = "metrics"
SUBCATEGORY = f"{CATEGORY}/research"
PROMPT_SCORES = {  # sub-folder -> (loader, score function, output name)
    "clip": (core.load_clip, core.clip_score, "clip_score"),
    "siglip": (core.load_siglip, core.siglip_score, "siglip"),
    "pickscore": (core.load_pickscore, core.pick_score, "pickscore"),
    "hpsv2": (core.load_hpsv2, core.hps_score, "hpsv2"),
    "imagereward": (lambda path: image_reward.load_image_reward(os.path.dirname(path)), image_reward.image_reward,
                    "image_reward"),
}
MODEL_FILES = {"hpsv2": (".pt", ".pth", ".bin", ".safetensors"), "imagereward": ("ImageReward.pt",)}
_loaded: dict[tuple, core.Scorer] = {}


def register_folder() -> None:
    """Make models/metrics a ComfyUI model folder (sub-folders per metric, docs/metrics.md)."""
    path = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        if path not in paths:
            paths.append(path)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([path], {".pt", ".pth", ".safetensors", ".bin"})


def on_load() -> None:
    register_folder()


def metric_roots() -> list[str]:
    register_folder()
    return folder_paths.get_folder_paths(FOLDER)


def prompt_models() -> list[str]:
    """'<metric>/<name>' for every model folder (config.json) under clip/siglip/pickscore and every HPSv2 file."""
    found = set()
    for root in metric_roots():
        for metric in PROMPT_SCORES:
            folder = os.path.join(root, metric)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if metric in MODEL_FILES:
                    if name.endswith(MODEL_FILES[metric]):
                        found.add(f"{metric}/{name}")
                elif os.path.isfile(os.path.join(path, "config.json")):
                    found.add(f"{metric}/{name}")
    return sorted(found)


def resolve(relative: str, what: str) -> str:
    """The full path of '<metric>/<name>' under the first metrics root that has it; a clear error otherwise."""
    roots = metric_roots()
    for root in roots:
        path = os.path.join(root, *relative.split("/"))
        if os.path.exists(path):
            return path
    raise core.MissingWeights(f"{what}: {relative!r} is not in the metrics folder(s) {', '.join(roots)}. "
                              "See docs/metrics.md for the layout.")


def cached(key: tuple, load) -> core.Scorer:
    """One loaded metric model at a time (they are large); moved to ComfyUI's device."""
    if key not in _loaded:
        _loaded.clear()
        device = internals.torch_device()
        scorer = load()
        size = sum(p.numel() * p.element_size() for p in scorer.model.parameters())
        internals.free_memory_for(size, device)
        _loaded[key] = scorer.to(device)
    return _loaded[key]


def need_two(images, metric: str, hint: str = "") -> None:
    """Refuse a batch of fewer than two images, naming the input and the metric."""
    if images.shape[0] < 2:
        raise ValueError(f"images holds {images.shape[0]} image: {metric} needs a batch of two or more{hint}")


def table_outputs(rows: list[dict], title: str, cls):
    table = as_image_tensor(plain_metrics.table_image(rows, title))
    text = "\n".join(", ".join(f"{k} {plain_metrics.format_value(v)}" for k, v in r.items()) for r in rows)
    return table, {**ui.PreviewImage(table, cls=cls).as_dict(), "text": [text]}


class ImageScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabImageScore",
            display_name="Z-Image Image Score",
            category=SUBCATEGORY,
            description=(
                "Scores images against their prompt with a local model from models/metrics: CLIPScore "
                "(100 * max(cos, 0)), SigLIP cosine, PickScore (exp(logit_scale) * cos), HPSv2 (cos) or ImageReward. "
                "The metric follows the model's folder (clip/, siglip/, pickscore/, hpsv2/, imagereward/). Nothing "
                "is downloaded."
            ),
            is_output_node=True,
            search_aliases=["clipscore", "clip score", "pickscore", "hpsv2", "siglip", "imagereward", "prompt alignment", "reward"],
            inputs=[
                io.Image.Input("images", tooltip="Images to score (a batch gives one row per image)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the images should match; one line per image to give each its own."),
                io.Combo.Input("model", options=prompt_models(),
                               tooltip="models/metrics/<metric>/<name>: a transformers folder (clip, siglip, pickscore) "
                                       "or a checkpoint (hpsv2/*.pt, imagereward/ImageReward.pt). Layout: docs/metrics.md."),
            ],
            outputs=[
                io.Float.Output("mean", tooltip="Mean score over the batch."),
                io.String.Output("json", tooltip="Every image's score, the metric and the model, as JSON."),
                io.Image.Output("table", tooltip="The scores as a table image."),
            ],
        )

    @classmethod
    def execute(cls, images, prompt, model) -> io.NodeOutput:
        metric = model.split("/", 1)[0]
        if metric not in PROMPT_SCORES:
            raise ValueError(f"model {model!r} is not under one of {', '.join(PROMPT_SCORES)} in models/metrics")
        lines = [p.strip() for p in prompt.splitlines() if p.strip()]
        if not lines:
            raise ValueError("prompt is empty: give the prompt the images were made from")
        texts = lines if len(lines) == images.shape[0] else [prompt.strip()]
        load, score, name = PROMPT_SCORES[metric]
        path = resolve(model, f"{metric} model")
        scorer = cached((model, path), lambda: load(path))
        values = score(scorer, images, texts).float().cpu().tolist()
        rows = [{"image": i, name: v} for i, v in enumerate(values)]
        table, preview = table_outputs(rows, f"{name} ({model})", cls)
        mean = float(sum(values) / len(values))
        info = {"metric": name, "model": model, "scores": values, "mean": mean, "prompts": texts}
        record = {"metric": name, "model": model, "scores": values}  # full precision, read by zlab sweeps
        return io.NodeOutput(mean, json.dumps(info, indent=1), table, ui={**preview, "zlab_scores": [record]})


class LPIPSDistance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabLPIPS",
            display_name="Z-Image LPIPS",
            category=SUBCATEGORY,
            description=(
                "LPIPS perceptual distance (v0.1). One batch: every pair, and their mean as a diversity measure "
                "(higher = more varied, e.g. across seeds). With images_b: image i against image i of images_b. "
                "Backbone weights from models/metrics/lpips (torchvision's file names)."
            ),
            is_output_node=True,
            search_aliases=["lpips", "perceptual distance", "diversity", "seed diversity"],
            inputs=[
                io.Image.Input("images", tooltip="A batch of images of one size."),
                io.Combo.Input("net", options=list(core.LPIPS_BACKBONES), default="alex",
                               tooltip="alex: alexnet-owt-7be5be79.pth (the LPIPS paper's default); vgg: vgg16-397923af.pth."),
                io.Image.Input("images_b", optional=True, tooltip="Optional: compare image i with image i of this batch."),
            ],
            outputs=[
                io.Float.Output("mean", tooltip="Mean pairwise (or paired) LPIPS distance."),
                io.String.Output("json", tooltip="The distance matrix (or paired distances), as JSON."),
                io.Image.Output("table", tooltip="The distances as a table image."),
            ],
        )

    @classmethod
    def execute(cls, images, net, images_b=None) -> io.NodeOutput:
        if images_b is not None and images_b.shape != images.shape:
            raise ValueError(f"images_b has shape {tuple(images_b.shape)}, images {tuple(images.shape)}: "
                             "give the same number of images of the same size")
        if images_b is None:
            need_two(images, "LPIPS diversity", " (or connect images_b)")
        if min(images.shape[1], images.shape[2]) < 32:
            raise ValueError(f"images are {images.shape[2]}x{images.shape[1]}: LPIPS needs at least 32 pixels a side")
        folder = os.path.join(metric_roots()[0], "lpips")
        for root in metric_roots():
            if os.path.exists(os.path.join(root, "lpips", core.LPIPS_BACKBONES.get(net, ""))):
                folder = os.path.join(root, "lpips")
        scorer = cached(("lpips", net, folder), lambda: core.load_lpips(folder, net))
        if images_b is None:
            matrix = core.lpips_pairwise(scorer, images)
            mean = core.mean_pairwise(matrix)
            rows = [{"image": i, **{f"to {j}": float(matrix[i, j]) for j in range(matrix.shape[0])}}
                    for i in range(matrix.shape[0])]
            info = {"net": net, "matrix": matrix.tolist(), "mean_pairwise": mean}
        else:
            distances = [float(core.lpips_pairwise(scorer, torch.stack([a, b]))[0, 1]) for a, b in zip(images, images_b)]
            mean = sum(distances) / len(distances)
            rows = [{"image": i, "lpips": d} for i, d in enumerate(distances)]
            info = {"net": net, "paired": distances, "mean": mean}
        table, preview = table_outputs(rows, f"LPIPS ({net})", cls)
        return io.NodeOutput(float(mean), json.dumps(info, indent=1), table, ui=preview)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def resolve_reference_folder(text: str) -> str:
    """An absolute folder path, or one relative to ComfyUI's input folder; clear errors when it is unusable."""
    text = text.strip()
    if not text:
        raise ValueError("reference_folder is empty: give a folder of real images (absolute, or relative to "
                         "ComfyUI's input folder)")
    folder = text if os.path.isabs(text) else os.path.join(folder_paths.get_input_directory(), text)
    if not os.path.isdir(folder):
        raise ValueError(f"reference_folder {folder!r} is not a folder: give a folder of real images (absolute, "
                         "or relative to ComfyUI's input folder)")
    return folder


def reference_images(folder: str) -> list:
    """The folder's images as uint8 RGB arrays (sorted by name); at least two are needed."""
    import numpy as np
    from PIL import Image

    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if len(names) < 2:
        raise ValueError(f"reference_folder {folder} holds {len(names)} image(s) ({', '.join(IMAGE_SUFFIXES)}): "
                         "FID needs at least two (a few hundred to mean much)")
    out = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def inception_path() -> str:
    """The FID Inception weights under the first metrics root that has them; MissingWeights names where."""
    for root in metric_roots():
        path = os.path.join(root, "inception", core.INCEPTION_FILE)
        if os.path.exists(path):
            return path
    return os.path.join(metric_roots()[0], "inception", core.INCEPTION_FILE)  # load_inception names it


class FIDScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabFID",
            display_name="Z-Image FID",
            category=SUBCATEGORY,
            description=(
                "Frechet Inception Distance of a batch of images to a folder of reference images (Heusel et al. "
                "2017; torchmetrics with torch-fidelity's FID Inception v3). Lower = closer to the reference set. "
                "Weights from models/metrics/inception/pt_inception-2015-12-05-6726825d.pth; nothing is downloaded. "
                "FID is only meaningful with many images (hundreds); small batches give large, noisy values."
            ),
            is_output_node=True,
            search_aliases=["fid", "frechet inception distance", "inception", "realism"],
            inputs=[
                io.Image.Input("images", tooltip="The generated images (two or more; sizes may differ from the references)."),
                io.String.Input("reference_folder", default="fid_reference",
                                tooltip="Folder of real images (png, jpg, webp, bmp): absolute, or relative to "
                                        "ComfyUI's input folder. Every image in it is used."),
            ],
            outputs=[
                io.Float.Output("fid", tooltip="FID of images against the reference folder (lower = closer)."),
                io.String.Output("json", tooltip="FID, the image counts and the folder, as JSON."),
                io.Image.Output("table", tooltip="The result as a table image."),
            ],
        )

    @classmethod
    def execute(cls, images, reference_folder) -> io.NodeOutput:
        need_two(images, "FID")
        folder = resolve_reference_folder(reference_folder)
        references = reference_images(folder)
        path = inception_path()
        scorer = cached(("fid", path), lambda: core.load_inception(path))
        value = core.fid_score(scorer, images, references)
        rows = [{"images": int(images.shape[0]), "references": len(references), "fid": value}]
        table, preview = table_outputs(rows, "FID (Inception v3)", cls)
        info = {"fid": value, "images": int(images.shape[0]), "references": len(references), "folder": folder}
        return io.NodeOutput(value, json.dumps(info, indent=1), table, ui={**preview, "fid": [value]})


NODES = [ImageScore, LPIPSDistance, FIDScore]
