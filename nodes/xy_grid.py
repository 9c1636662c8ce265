"""Z-Image XY Grid: sample a grid over two settings in one node, each cell exactly a Z-Image Sampler run."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io, ui

from ..core import sampler as core_sampler
from ..core import xy_grid as core
from . import CATEGORY
from ._internals import xy as internals
from ._internals.sampling import patch_shift, sample_seeds, zero_out
from .encoder import encode
from .nag import patch_nag
from .sampler import check_inputs, sample
from .steering import SteeringApply, SteeringVectorType

SUBCATEGORY = f"{CATEGORY}/research"
NAG_DEFAULTS = {"tau": 2.5, "alpha": 0.25, "end_sigma": 0.0}  # Z-Image NAG's defaults
AXIS_HELP = ("seed, steps, shift, cfg, denoise: numbers ('1, 2, 3' or a range '4-12:4'); sampler_name, scheduler: "
             "names; nag_scale needs nag_negative; steering_alpha needs steering_vector; layer (the Qwen3 hidden "
             "layer, -1..-64) needs clip and text, and replaces positive with text encoded at that layer.")


def cell_model_and_positive(model, positive, cell: dict, nag_negative, steering_vector, clip=None, text=""):
    """The cell's MODEL (NAG on a clone when nag_scale is swept) and conditioning (text encoded at the cell's layer
    by the Z-Image Qwen3 Encoder when layer is swept, then steered when steering_alpha is)."""
    if cell.get("layer") is not None:
        positive = encode(clip, text, cell["layer"])[0]
    if cell.get("nag_scale") is not None:
        model = patch_nag(model, nag_negative, cell["nag_scale"], **NAG_DEFAULTS)
    if cell.get("steering_alpha") is not None:
        positive = SteeringApply.execute(positive, steering_vector, cell["steering_alpha"], "content tokens").result[0]
    return model, positive


def check_axes(x, y, nag_negative, steering_vector, clip=None, text="") -> None:
    names = {a.name for a in (x, y) if a is not None}
    if "layer" in names and (clip is None or not text.strip()):
        raise ValueError("the layer axis needs clip connected and text set (the prompt each cell encodes at its layer)")
    if "nag_scale" in names and nag_negative is None:
        raise ValueError("the nag_scale axis needs nag_negative connected (the negative prompt NAG pushes away from)")
    if "steering_alpha" in names and steering_vector is None:
        raise ValueError("the steering_alpha axis needs steering_vector connected (Build / Load Steering Vector)")


BATCHABLE_SAMPLERS = {"euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "res_multistep", "deis", "ipndm",
                      "ipndm_v", "gradient_estimation", "uni_pc", "uni_pc_bh2", "ddim"}
"""Samplers that draw no noise during sampling; ancestral / SDE ones draw it from one generator per batch."""


def batch_groups(cells: list[dict], batch_seeds: bool) -> list[list[int]]:
    """Cell indices sampled together: cells differing only in seed when batch_seeds (and the sampler draws no
    noise of its own), else one cell per group."""
    if not batch_seeds:
        return [[n] for n in range(len(cells))]
    groups: dict[tuple, list[int]] = {}
    for n, cell in enumerate(cells):
        key = tuple((k, v) for k, v in sorted(cell.items()) if k != "seed")
        if cell["sampler_name"] not in BATCHABLE_SAMPLERS:
            key = (*key, ("cell", n))
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def sample_group(model, positive, negative, latent_image, group: list[dict], nag_negative, steering_vector,
                 clip=None, text=""):
    """LATENT samples of cells that differ only in seed: one batch, each row its own seed's noise."""
    cell = group[0]
    cell_model, cell_positive = cell_model_and_positive(model, positive, cell, nag_negative, steering_vector, clip, text)
    if len(group) == 1:
        out, _ = sample(cell_model, cell_positive, negative, latent_image, cell["seed"], cell["steps"], cell["shift"],
                        cell["sampler_name"], cell["scheduler"], cell["cfg"], cell["denoise"])
        return out["samples"]
    check_inputs(latent_image, cell["steps"], cell["shift"], cell["cfg"], cell["denoise"], negative)
    shifted = patch_shift(cell_model, cell["shift"])
    negative = zero_out(cell_positive) if negative is None else negative
    return sample_seeds(shifted, cell_positive, negative, latent_image, [c["seed"] for c in group], cell["steps"],
                        cell["cfg"], cell["sampler_name"], cell["scheduler"], cell["denoise"])["samples"]


def decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """VAEDecode's result for a latent batch: IMAGE [N, H, W, 3]."""
    images = vae.decode(samples)
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images


class ZImageXYGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        axes = list(core.AXES)
        return io.Schema(
            node_id="ZImageLabXYGrid",
            display_name="Z-Image XY Grid",
            category=SUBCATEGORY,
            description=(
                "Samples a grid over two settings (X columns, Y rows) from one model and conditioning: seed, steps, "
                "shift, cfg, sampler, scheduler, denoise, NAG scale, steering alpha, encoder layer. Each cell is exactly "
                "the Z-Image Sampler run with those settings (NAG / steering / the Qwen3 Encoder's layer applied through "
                "the pack's own nodes, on clones), "
                "decoded with the VAE. Returns the labelled grid, the cell images in row order, their latents and a "
                "JSON record of every cell."
            ),
            search_aliases=["xy plot", "xy grid", "parameter grid", "sweep", "comparison grid"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model."),
                io.Conditioning.Input("positive", tooltip="What the image should show."),
                io.Latent.Input("latent_image", tooltip="16-channel latent (EmptySD3LatentImage); every cell starts from it."),
                io.Vae.Input("vae", tooltip="The Flux VAE (ae.safetensors) that decodes each cell."),
                io.Combo.Input("x_axis", options=axes, default="shift", tooltip="Setting that changes across columns. " + AXIS_HELP),
                io.String.Input("x_values", default="2, 3, 4", tooltip="Comma-separated values of the X setting."),
                io.Combo.Input("y_axis", options=[core.NONE, *axes], default="seed",
                               tooltip="Setting that changes down the rows; none for a single row. " + AXIS_HELP),
                io.String.Input("y_values", default="0, 1", tooltip="Comma-separated values of the Y setting."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of every cell unless an axis sweeps it (same noise as Z-Image Sampler)."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Steps unless an axis sweeps them."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, round=0.001,
                               tooltip="Flow shift unless an axis sweeps it."),
                io.Combo.Input("sampler_name", options=internals.sampler_names(), default="res_multistep",
                               tooltip="Sampler unless an axis sweeps it."),
                io.Combo.Input("scheduler", options=internals.scheduler_names(), default="simple",
                               tooltip="Scheduler unless an axis sweeps it."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG unless an axis sweeps it; 1.0 runs no unconditional pass."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoise unless an axis sweeps it."),
                io.Conditioning.Input("negative", optional=True, tooltip="Negative for cfg != 1 cells."),
                io.Conditioning.Input("nag_negative", optional=True,
                                      tooltip="Negative prompt for the nag_scale axis (Z-Image NAG, tau 2.5, alpha 0.25)."),
                SteeringVectorType.Input("steering_vector", optional=True,
                                         tooltip="Vector for the steering_alpha axis (Apply Steering, content tokens)."),
                io.Boolean.Input("batch_seeds", default=False, optional=True,
                                 tooltip="Off (default): every cell is its own Z-Image Sampler run, bit for bit. On: "
                                         "cells that differ only in seed sample as one batch (each with its own "
                                         "seed's noise): faster on a GPU, but NOT bit-identical to separate runs "
                                         "(another batch size rounds the matmuls differently; measured up to 2e-5 "
                                         "on the CPU test model). Ancestral / SDE samplers are never batched."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Qwen3 text encoder for the layer axis (CLIPLoader type lumina2)."),
                io.String.Input("text", multiline=True, default="", optional=True,
                                tooltip="Prompt for the layer axis: each cell encodes it at its layer (Z-Image Qwen3 "
                                        "Encoder) instead of using positive."),
            ],
            outputs=[
                io.Image.Output("grid", tooltip="All cells in one labelled image (X over the columns, Y beside the rows)."),
                io.Image.Output("images", tooltip="The cell images, row by row."),
                io.Latent.Output("latents", tooltip="The cell latents, row by row (as Z-Image Sampler returns them)."),
                io.String.Output("info", tooltip="JSON: the axes and every cell's settings, in output order."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, vae, x_axis, x_values, y_axis, y_values, seed, steps, shift,
                sampler_name, scheduler, cfg, denoise, negative=None, nag_negative=None,
                steering_vector=None, batch_seeds=False, clip=None, text="") -> io.NodeOutput:
        choices = {"sampler_name": internals.sampler_names(), "scheduler": internals.scheduler_names()}
        x = core.parse_axis(x_axis, x_values, "x", choices)
        y = core.parse_axis(y_axis, y_values, "y", choices)
        check_axes(x, y, nag_negative, steering_vector, clip, text)
        if latent_image["samples"].shape[0] != 1:
            raise ValueError(f"latent_image holds {latent_image['samples'].shape[0]} latents: the grid takes one "
                             "(each cell is one image); sweep seeds with an axis instead of a batch")
        base = {"seed": seed, "steps": steps, "shift": shift, "sampler_name": sampler_name, "scheduler": scheduler,
                "cfg": cfg, "denoise": denoise, "nag_scale": None, "steering_alpha": None, "layer": None}
        cells = core.cells(base, x, y)
        for cell in cells:  # every cell's settings are checked before the first one samples
            core_sampler.validate_schedule(cell["steps"], cell["shift"], cell["denoise"])
            if cell["cfg"] != 1.0 and negative is None:
                raise ValueError(f"a cell has cfg {cell['cfg']}: connect negative (needed when cfg != 1.0)")
        latents, images = [None] * len(cells), [None] * len(cells)
        bar = internals.progress_bar(len(cells))
        groups = batch_groups(cells, batch_seeds)
        for group in groups:
            samples = sample_group(model, positive, negative, latent_image, [cells[n] for n in group], nag_negative,
                                   steering_vector, clip, text)
            for row, n in enumerate(group):
                latents[n] = samples[row:row + 1]
                images[n] = decode(vae, latents[n])
            bar.update(len(group))
        images = torch.cat(images)
        columns = len(x.values) if x else 1
        grid = torch.from_numpy(core.grid_image(images.float().cpu().numpy(), columns,
                                                [x.label(v) for v in x.values] if x else [""],
                                                [y.label(v) for v in y.values] if y else [""]))[None]
        info = {"x": {"axis": x.name, "values": list(x.values)} if x else None,
                "y": {"axis": y.name, "values": list(y.values)} if y else None,
                "cells": [{k: v for k, v in c.items() if v is not None} for c in cells],
                "batches": [g for g in groups if len(g) > 1]}
        return io.NodeOutput(grid, images, {"samples": torch.cat(latents)}, json.dumps(info, indent=1),
                             ui={**ui.PreviewImage(grid, cls=cls).as_dict(), "xy_batches": info["batches"]})


NODES = [ZImageXYGrid]
