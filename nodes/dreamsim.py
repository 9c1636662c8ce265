"""Z-Image DreamSim node: DreamSim distances of an image batch (diversity) or of paired images, from models/metrics."""

from __future__ import annotations

import json
import os

from comfy_api.latest import io

from ..core import dreamsim as core
from ..core import metric_models
from . import metric_models as shared

FOLDER = "dreamsim"


def dreamsim_folder(dreamsim_type: str) -> str:
    """The first models/metrics/dreamsim that holds every file of the type (else the first one, for the error)."""
    folders = [os.path.join(root, FOLDER) for root in shared.metric_roots()]
    for folder in folders:
        if not core.missing_files(folder, dreamsim_type):
            return folder
    return folders[0]


def load(dreamsim_type: str) -> core.DreamSimScorer:
    """The DreamSim model of the type, loaded once (nodes/metric_models.py's one-model cache) on ComfyUI's device."""
    folder = dreamsim_folder(dreamsim_type)
    return shared.cached(("dreamsim", dreamsim_type, folder), lambda: core.load_dreamsim(folder, dreamsim_type))


PERCEPTUAL = tuple(f"dreamsim {t}" for t in core.DREAMSIM_FILES)
"""Choices for Z-Image Seed Diversity's ``perceptual`` menu ("dreamsim <type>")."""


def diversity(images, dreamsim_type: str = "ensemble") -> float:
    """Mean pairwise DreamSim of an IMAGE batch with the model of models/metrics/dreamsim (loaded once, shared)."""
    return core.dreamsim_diversity(load(dreamsim_type), images)


class DreamSimDistance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabDreamSim",
            display_name="Z-Image DreamSim",
            category=shared.SUBCATEGORY,
            description=(
                "DreamSim perceptual distance (Fu et al. 2023; 1 - cosine of DreamSim embeddings, images resized to "
                "224 px). One batch: every pair, and their mean as a diversity measure (higher = more varied, e.g. "
                "across seeds). With images_b: image i against image i of images_b. Weights from "
                "models/metrics/dreamsim (the release checkpoint unzipped there); nothing is downloaded."
            ),
            is_output_node=True,
            search_aliases=["dreamsim", "perceptual distance", "diversity", "seed diversity", "similarity"],
            inputs=[
                io.Image.Input("images", tooltip="A batch of images (any size: each is resized to 224x224)."),
                io.Combo.Input("dreamsim_type", options=list(core.DREAMSIM_FILES), default="ensemble",
                               tooltip="ensemble: DINO + CLIP + OpenCLIP ViT-B/16 (the paper's default); or a single "
                                       "branch. Files per type: docs/metrics.md."),
                io.Image.Input("images_b", optional=True, tooltip="Optional: compare image i with image i of this batch."),
            ],
            outputs=[
                io.Float.Output("mean", tooltip="Mean pairwise (or paired) DreamSim distance."),
                io.String.Output("json", tooltip="The distance matrix (or paired distances), as JSON."),
                io.Image.Output("table", tooltip="The distances as a table image."),
            ],
        )

    @classmethod
    def execute(cls, images, dreamsim_type, images_b=None) -> io.NodeOutput:
        if dreamsim_type not in core.DREAMSIM_FILES:
            raise ValueError(f"dreamsim_type is {dreamsim_type!r}: choose one of {', '.join(core.DREAMSIM_FILES)}")
        if images_b is not None and images_b.shape[0] != images.shape[0]:
            raise ValueError(f"images_b holds {images_b.shape[0]} images, images {images.shape[0]}: "
                             "give the same number of images")
        if images_b is None:
            shared.need_two(images, "DreamSim diversity", " (or connect images_b)")
        scorer = load(dreamsim_type)
        if images_b is None:
            matrix = core.dreamsim_pairwise(scorer, images)
            mean = metric_models.mean_pairwise(matrix)
            rows = [{"image": i, **{f"to {j}": float(matrix[i, j]) for j in range(matrix.shape[0])}}
                    for i in range(matrix.shape[0])]
            info = {"dreamsim_type": dreamsim_type, "matrix": matrix.tolist(), "mean_pairwise": mean}
        else:
            distances = core.dreamsim_paired(scorer, images, images_b).tolist()
            mean = sum(distances) / len(distances)
            rows = [{"image": i, "dreamsim": d} for i, d in enumerate(distances)]
            info = {"dreamsim_type": dreamsim_type, "paired": distances, "mean": mean}
        table, preview = shared.table_outputs(rows, f"DreamSim ({dreamsim_type})", cls)
        return io.NodeOutput(float(mean), json.dumps(info, indent=1), table, ui={**preview, "dreamsim": [info]})


NODES = [DreamSimDistance]
