"""Seed Diversity node: how different are the images of one prompt over seeds (and against a baseline)."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io, ui

from ..core import diversity as core
from ..core import metrics as core_metrics
from . import CATEGORY
from . import dreamsim as dreamsim_node
from . import metric_models as shared_metrics

SUBCATEGORY = f"{CATEGORY}/seed variance"
PERCEPTUAL = ("none", "lpips alex", "lpips vgg", "lpips squeeze") + dreamsim_node.PERCEPTUAL
NOT_MEASURED = -1.0
_LPIPS_CACHE: dict[str, object] = {}
FIDELITY = {"clip": ("clip_score", "CLIPScore model"), "siglip": ("siglip", "SigLIP model")}


def fidelity_models() -> list[str]:
    """'none' and every CLIP / SigLIP folder under models/metrics (the shared loaders of nodes/metric_models.py)."""
    return ["none"] + [m for m in shared_metrics.prompt_models() if m.split("/")[0] in FIDELITY]


def fidelity(images, prompt: str, choice: str) -> dict:
    """{'fidelity_<score>': mean image-prompt score} through the shared CLIP / SigLIP loaders and scores."""
    metric = choice.split("/")[0]
    if metric not in FIDELITY:
        raise ValueError(f"fidelity_model is {choice!r}: choose none or a clip/ or siglip/ folder of models/metrics")
    if not prompt.strip():
        raise ValueError("fidelity_model is set but prompt is empty: give the prompt the images were made from")
    load, score, _ = shared_metrics.PROMPT_SCORES[metric]
    name, what = FIDELITY[metric]
    scorer = shared_metrics.cached((metric, choice), lambda: load(shared_metrics.resolve(choice, what)))
    return {f"fidelity_{name}": float(score(scorer, images, prompt).mean())}


def lpips_model(choice: str):
    """The LPIPS network for a PERCEPTUAL choice, loaded once per process."""
    net = choice.split()[-1]
    if net not in _LPIPS_CACHE:
        _LPIPS_CACHE[net] = core.load_lpips(net)
    return _LPIPS_CACHE[net]


def report(images, latents, size, bins, perceptual, prompt="", fidelity_model="none") -> dict:
    """Every diversity number of one IMAGE batch (and its latents, when given), and its fidelity to the prompt."""
    out = core.image_diversity(images, size, bins)
    if fidelity_model != "none":
        out.update(fidelity(images, prompt, fidelity_model))
    if perceptual.startswith("dreamsim "):
        out[perceptual.replace(" ", "_")] = dreamsim_node.diversity(images, perceptual.split()[1])
    elif perceptual != "none":
        out[perceptual.replace(" ", "_")] = core.lpips_diversity(lpips_model(perceptual), images, size)
    if latents is not None:
        samples = latents["samples"]
        if samples.shape[0] != images.shape[0]:
            raise ValueError(f"latents has batch {samples.shape[0]} but images {images.shape[0]}: give the latents of "
                             "the same seeds (e.g. the sampler's LATENT before VAE Decode)")
        out["latent_rmse"] = core.latent_diversity(samples)
    return out


def to_image(array) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> IMAGE [1, H, W, 3]."""
    return torch.from_numpy(array).float().div(255.0).unsqueeze(0)


class SeedDiversity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSeedDiversity",
            display_name="Z-Image Seed Diversity",
            category=SUBCATEGORY,
            description=("How different are images of one prompt over seeds: mean pairwise 1 - SSIM, 1 - MS-SSIM (images "
                         "of 161 px and more after downscaling), colour-histogram distance and pixel RMSE on downscaled "
                         "images, latent RMSE when latents are given, LPIPS when chosen, fidelity (CLIPScore or SigLIP cosine to the prompt) when a model is chosen. With a baseline batch (e.g. the "
                         "stock sampler's) both are measured side by side. Outputs JSON, a table and a seed grid."),
            search_aliases=["diversity", "seed variance", "lpips", "ssim", "mode collapse"],
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="An IMAGE batch of one prompt over seeds (at least 2 images)."),
                io.Int.Input("size", default=256, min=8, max=4096,
                             tooltip="Images are downscaled (antialiased) to at most this many pixels on the longer "
                                     "side before comparing: composition, not fine detail."),
                io.Int.Input("bins", default=16, min=2, max=256, tooltip="Histogram bins per colour channel."),
                io.Combo.Input("perceptual", options=list(PERCEPTUAL), default="none",
                               tooltip="Also LPIPS (lpips package; the torchvision backbone is fetched into the torch "
                                       "hub cache once when missing) or DreamSim (dreamsim package, weights read from "
                                       "models/metrics/dreamsim, never downloaded: docs/metrics.md)."),
                io.Combo.Input("fidelity_model", options=fidelity_models(), default="none", optional=True,
                               tooltip="Fidelity: mean image-prompt score of each batch with a local CLIP (CLIPScore, "
                                       "100 * max(cos, 0)) or SigLIP (cosine) folder of models/metrics (docs/metrics.md), "
                                       "so more diversity is not bought with another prompt. Nothing is downloaded."),
                io.String.Input("prompt", multiline=True, default="", optional=True,
                                tooltip="The prompt the images were made from (for the fidelity score)."),
                io.Image.Input("baseline", optional=True,
                               tooltip="Another batch to measure the same way (e.g. the stock sampler with the same seeds)."),
                io.Latent.Input("latents", optional=True,
                                tooltip="Latents of the images (or x0 predictions at a chosen step) for the latent RMSE."),
                io.Latent.Input("baseline_latents", optional=True, tooltip="Latents of the baseline batch."),
            ],
            outputs=[
                io.String.Output("json", tooltip="Every number, for images and baseline, as JSON."),
                io.Image.Output("table", tooltip="The numbers as a table image."),
                io.Image.Output("grid", tooltip="Seed grid: the baseline row (if given) above the images row."),
                io.Float.Output("ssim_diversity", tooltip="Mean pairwise 1 - SSIM of images."),
                io.Float.Output("histogram_diversity", tooltip="Mean pairwise colour-histogram distance of images."),
            ],
        )

    @classmethod
    def execute(cls, images, size, bins, perceptual, fidelity_model="none", prompt="", baseline=None, latents=None,
                baseline_latents=None) -> io.NodeOutput:
        if perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual is {perceptual!r}: choose one of {', '.join(PERCEPTUAL)}")
        if baseline_latents is not None and baseline is None:
            raise ValueError("baseline_latents needs the baseline images connected too")
        measured = {"images": report(images, latents, size, bins, perceptual, prompt, fidelity_model)}
        grid_rows = [("images", images)]
        if baseline is not None:
            try:
                measured["baseline"] = report(baseline, baseline_latents, size, bins, perceptual, prompt, fidelity_model)
            except ValueError as err:  # the same checks as for images, said of the baseline inputs
                raise ValueError(f"baseline / baseline_latents: {err}") from None
            grid_rows.insert(0, ("baseline", baseline))
        rows = [{"batch": name, **core.format_row(r)} for name, r in measured.items()]
        table = to_image(core_metrics.table_image(rows, "seed diversity (mean pairwise distance)"))
        grid = to_image(core.seed_grid(grid_rows))
        text = "\n".join(", ".join(f"{k} {core_metrics.format_value(v)}" for k, v in r.items()) for r in rows)
        info = {"size": size, "bins": bins, "perceptual": perceptual, "fidelity_model": fidelity_model, **measured}
        main = measured["images"]
        preview = ui.PreviewImage(torch.cat([table[:, :, :min(table.shape[2], grid.shape[2])]], 0), cls=cls)
        return io.NodeOutput(json.dumps(info, indent=1), table, grid, main["ssim"], main["histogram"],
                             ui={**preview.as_dict(), "text": [text], "diversity": [info]})


NODES = [SeedDiversity]
