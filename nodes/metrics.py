"""Metrics nodes: text-embedding statistics of conditionings, and weight-free image metrics."""

from __future__ import annotations

import json
import math

import torch
from comfy_api.latest import io, ui

from ..core import conditioning as cond
from ..core import metrics as core
from . import CATEGORY

SUBCATEGORY = f"{CATEGORY}/research"
TOKEN_CHOICES = ("content", "all")
NOT_MEASURED = -1.0


def as_image_tensor(array) -> torch.Tensor:
    """RGB uint8 array [H, W, 3] -> IMAGE [1, H, W, 3] float in [0, 1]."""
    return torch.from_numpy(array).float().div(255.0).unsqueeze(0)


def token_matrices(conditioning: list, label: str, input_name: str, which: str) -> list[tuple[str, torch.Tensor]]:
    """(label, [tokens, width]) for every entry and batch row of a conditioning."""
    cond.require_tokens(conditioning, input_name)
    out = []
    for entry, (tokens, extras) in enumerate(conditioning):
        for row in range(tokens.shape[0]):
            name = label if entry == 0 and row == 0 else f"{label}#{len(out) + 1}"
            matrix = tokens[row]
            mask = extras.get("attention_mask")
            if mask is not None and mask.shape[-1] == tokens.shape[1]:
                matrix = matrix[mask[min(row, mask.shape[0] - 1)].bool()]  # drop padding tokens, if any
            if which == "content":
                start, end = cond.content_span(extras, matrix.shape[0])
                matrix = matrix[start:end]
            out.append((name, matrix))
    return out


class EmbeddingStats(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabEmbeddingStats",
            display_name="Z-Image Embedding Stats",
            category=SUBCATEGORY,
            description=(
                "Statistics of text conditionings (Qwen3 hidden states): mean token norm, Frobenius norm, variance, "
                "Hoyer sparsity, effective rank, and the cosine similarity between the conditionings' mean-pooled "
                "tokens. Reads only; the conditionings pass through unchanged elsewhere."
            ),
            search_aliases=["embedding statistics", "effective rank", "cosine similarity", "conditioning stats"],
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="A conditioning to measure (label a)."),
                io.Combo.Input("tokens", options=list(TOKEN_CHOICES), default="content",
                               tooltip="content: only the prompt's own tokens (chat-template tokens left out, as recorded by "
                                       "our encoder or the default template's 3 + 5); all: every token."),
                io.Conditioning.Input("conditioning_b", optional=True, tooltip="Another conditioning to compare (label b)."),
                io.Conditioning.Input("conditioning_c", optional=True, tooltip="Another conditioning to compare (label c)."),
                io.Conditioning.Input("conditioning_d", optional=True, tooltip="Another conditioning to compare (label d)."),
            ],
            outputs=[
                io.String.Output("json", tooltip="Per conditioning statistics and the pairwise cosine matrix, as JSON."),
                io.Image.Output("table", tooltip="The numbers as a table image."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, tokens, conditioning_b=None, conditioning_c=None, conditioning_d=None) -> io.NodeOutput:
        if tokens not in TOKEN_CHOICES:
            raise ValueError(f"tokens is {tokens!r}: choose one of {', '.join(TOKEN_CHOICES)}")
        matrices = []
        for label, name, c in (("a", "conditioning", conditioning), ("b", "conditioning_b", conditioning_b),
                               ("c", "conditioning_c", conditioning_c), ("d", "conditioning_d", conditioning_d)):
            if c is not None:
                matrices += token_matrices(c, label, name, tokens)
        names = [n for n, _ in matrices]
        stats = [core.embedding_stats(m) for _, m in matrices]
        cos = core.pairwise_cosine([m for _, m in matrices]) if len({m.shape[1] for _, m in matrices}) == 1 else None
        rows = []
        for i, (name, s) in enumerate(zip(names, stats)):
            row = {"name": name, **{k: v for k, v in s.items() if k != "width"}}
            if cos is not None and len(names) > 1:
                row.update({f"cos {other}": float(cos[i, j]) for j, other in enumerate(names)})
            rows.append(row)
        info = {"tokens": tokens, "conditionings": rows,
                "pairwise_cosine": cos.tolist() if cos is not None else None, "names": names}
        table = as_image_tensor(core.table_image(rows, f"embedding statistics ({tokens} tokens)"))
        text = "\n".join(", ".join(f"{k} {core.format_value(v)}" for k, v in r.items()) for r in rows)
        return io.NodeOutput(json.dumps(info, indent=1), table,
                             ui={**ui.PreviewImage(table, cls=cls).as_dict(), "text": [text], "stats": [info]})


def pair_rows(n: int, n_ref: int, what: str, of: str = "the input") -> list[int]:
    """Reference index for each of n items: one reference for all, or one per item."""
    if n_ref == 1:
        return [0] * n
    if n_ref == n:
        return list(range(n))
    raise ValueError(f"{what} has batch {n_ref} but {of} has {n}: give one reference, or one per item")


def same_size(a: torch.Tensor, b: torch.Tensor, name: str, other: str, what: str) -> None:
    """ValueError naming the input unless two batches have the same per-item shape."""
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        raise ValueError(f"{name} has {what} {list(b.shape[1:])} but {other} has {list(a.shape[1:])}: "
                         f"connect a {name} of the same size")


class ImageMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabImageMetrics",
            display_name="Z-Image Image Metrics",
            category=SUBCATEGORY,
            description=(
                "Image metrics that need no downloaded weights: sharpness (Laplacian variance), edge density (Sobel), "
                "colourfulness (Hasler-Suesstrunk); with a reference image the pixel distance (RMSE, MAE, PSNR), with "
                "two latents the latent distance (RMSE, cosine). Outputs the numbers, JSON and a table image."
            ),
            search_aliases=["sharpness", "colorfulness", "colourfulness", "psnr", "image quality", "edge density"],
            inputs=[
                io.Image.Input("image", tooltip="Images to measure (a batch gives one row per image; the number outputs are batch means)."),
                io.Float.Input("edge_threshold", default=0.5, min=0.001, max=8.0, step=0.01,
                               tooltip="Sobel magnitude (luma 0..1) that counts as an edge; a step of height h gives 4h, so 0.5 = steps of 1/8."),
                io.Image.Input("reference", optional=True, tooltip="Reference image(s) for the pixel distance (one for all, or one per image)."),
                io.Latent.Input("latent", optional=True, tooltip="A latent for the latent distance (with reference_latent)."),
                io.Latent.Input("reference_latent", optional=True, tooltip="The latent to compare it with."),
            ],
            outputs=[
                io.String.Output("json", tooltip="Every number per image, as JSON."),
                io.Image.Output("table", tooltip="The numbers as a table image."),
                io.Float.Output("sharpness", tooltip="Laplacian variance (batch mean)."),
                io.Float.Output("edge_density", tooltip="Fraction of edge pixels (batch mean)."),
                io.Float.Output("colourfulness", tooltip="Hasler-Suesstrunk colourfulness (batch mean)."),
                io.Float.Output("pixel_rmse", tooltip="RMSE to the reference on 0..1 (batch mean); -1 without a reference."),
                io.Float.Output("latent_rmse", tooltip="RMSE between the two latents; -1 without both latents."),
            ],
        )

    @classmethod
    def execute(cls, image, edge_threshold, reference=None, latent=None, reference_latent=None) -> io.NodeOutput:
        if (latent is None) != (reference_latent is None):
            raise ValueError("latent distance needs both latent and reference_latent connected (or neither)")
        if min(image.shape[1], image.shape[2]) < 3:
            raise ValueError(f"image is {image.shape[2]}x{image.shape[1]} pixels: these metrics need at least 3x3")
        if reference is not None:
            same_size(image, reference, "reference", "image", "image shape [height, width, channels]")
        if latent is not None:
            same_size(latent["samples"], reference_latent["samples"], "reference_latent", "latent", "latent shape")
        rows = []
        refs = pair_rows(image.shape[0], reference.shape[0], "reference", "image") if reference is not None else None
        for i in range(image.shape[0]):
            row = {"image": i, **core.image_metrics(image[i], edge_threshold)}
            if refs is not None:
                d = core.pixel_distance(image[i], reference[refs[i]])
                # identical images have infinite PSNR; JSON (and the browser) has no infinity, so it is reported as null
                row.update({"pixel_rmse": d["rmse"], "pixel_mae": d["mae"], "psnr": d["psnr"] if math.isfinite(d["psnr"]) else None})
            rows.append(row)
        latent_rows = []
        if latent is not None:
            a, b = latent["samples"], reference_latent["samples"]
            for i, j in enumerate(pair_rows(a.shape[0], b.shape[0], "reference_latent", "latent")):
                latent_rows.append({"latent": i, **{f"latent_{k}": v for k, v in core.latent_distance(a[i], b[j]).items()}})

        def mean(key, source):
            values = [r[key] for r in source if key in r]
            return float(sum(values) / len(values)) if values else NOT_MEASURED

        info = {"edge_threshold": edge_threshold, "images": rows, "latents": latent_rows}
        table_rows = [dict(r, **(latent_rows[i] if i < len(latent_rows) else {})) for i, r in enumerate(rows)]
        table = as_image_tensor(core.table_image(table_rows, "image metrics"))
        text = "\n".join(", ".join(f"{k} {core.format_value(v)}" for k, v in r.items()) for r in table_rows)
        return io.NodeOutput(json.dumps(info, indent=1), table, mean("sharpness", rows), mean("edge_density", rows),
                             mean("colourfulness", rows), mean("pixel_rmse", rows), mean("latent_rmse", latent_rows),
                             ui={**ui.PreviewImage(table, cls=cls).as_dict(), "text": [text], "metrics": [info]})


NODES = [EmbeddingStats, ImageMetrics]
