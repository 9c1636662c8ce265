"""Seed Diversity node: how different are the images of one prompt over seeds (and against a baseline)."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io, ui

from ..core import diversity as core
from ..core import metrics as core_metrics
from . import CATEGORY

SUBCATEGORY = f"{CATEGORY}/seed variance"
PERCEPTUAL = ("none", "lpips alex", "lpips vgg", "lpips squeeze")
NOT_MEASURED = -1.0
_LPIPS_CACHE: dict[str, object] = {}


def lpips_model(choice: str):
    """The LPIPS network for a PERCEPTUAL choice, loaded once per process."""
    net = choice.split()[-1]
    if net not in _LPIPS_CACHE:
        _LPIPS_CACHE[net] = core.load_lpips(net)
    return _LPIPS_CACHE[net]


def report(images, latents, size, bins, perceptual) -> dict:
    """Every diversity number of one IMAGE batch (and its latents, when given)."""
    out = core.image_diversity(images, size, bins)
    if perceptual != "none":
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
                         "images, latent RMSE when latents are given, LPIPS when chosen. With a baseline batch (e.g. the "
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
                                       "hub cache once when missing)."),
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
    def execute(cls, images, size, bins, perceptual, baseline=None, latents=None, baseline_latents=None) -> io.NodeOutput:
        if perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual is {perceptual!r}: choose one of {', '.join(PERCEPTUAL)}")
        if baseline_latents is not None and baseline is None:
            raise ValueError("baseline_latents needs the baseline images connected too")
        measured = {"images": report(images, latents, size, bins, perceptual)}
        grid_rows = [("images", images)]
        if baseline is not None:
            try:
                measured["baseline"] = report(baseline, baseline_latents, size, bins, perceptual)
            except ValueError as err:  # the same checks as for images, said of the baseline inputs
                raise ValueError(f"baseline / baseline_latents: {err}") from None
            grid_rows.insert(0, ("baseline", baseline))
        rows = [{"batch": name, **core.format_row(r)} for name, r in measured.items()]
        table = to_image(core_metrics.table_image(rows, "seed diversity (mean pairwise distance)"))
        grid = to_image(core.seed_grid(grid_rows))
        text = "\n".join(", ".join(f"{k} {core_metrics.format_value(v)}" for k, v in r.items()) for r in rows)
        info = {"size": size, "bins": bins, "perceptual": perceptual, **measured}
        main = measured["images"]
        preview = ui.PreviewImage(torch.cat([table[:, :, :min(table.shape[2], grid.shape[2])]], 0), cls=cls)
        return io.NodeOutput(json.dumps(info, indent=1), table, grid, main["ssim"], main["histogram"],
                             ui={**preview.as_dict(), "text": [text], "diversity": [info]})


NODES = [SeedDiversity]
