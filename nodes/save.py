"""Z-Image Save Image: SaveImage's files, names, metadata and previews, encoded off the prompt's thread."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..core import save as core
from ..core import validation
from . import CATEGORY
from ._internals import save as internals

WRITER = core.writer_from_env()


def check_images(images) -> None:
    """A clear error for what PIL cannot save as an RGB(A) PNG."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[0] == 0:
        raise ValueError(f"images has shape {shape}: Z-Image Save Image takes an IMAGE batch [batch, height, width, "
                         "channels] with at least one image (connect a VAE Decode output)")
    if shape[-1] not in (3, 4):
        raise ValueError(f"images has {shape[-1]} channel(s): a PNG is saved from RGB (3) or RGBA (4) images; "
                         "convert a mask with Convert Mask to Image first")


class ZImageLabSaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSaveImage",
            display_name="Z-Image Save Image",
            category=CATEGORY,
            description=(
                "Saves images to the output folder exactly as Save Image does (same PNG bytes at compress level 4, "
                "same names and counter, prompt + workflow metadata, previews and history), but encodes and writes "
                "the PNG on a writer thread while the next prompt runs, so the GPU does not wait for it. The file "
                "name is reserved at once and a /view download of the file waits until it is written."
            ),
            search_aliases=["save", "save image", "fast save", "background save", "png"],
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input("filename_prefix", default="ComfyUI",
                                tooltip="The prefix for the file to save, as in Save Image: may hold a subfolder "
                                        "(zimage_lab/turbo) and %date:yyyy-MM-dd% or %Node.input% values."),
                io.Int.Input("compress_level", default=core.STOCK_COMPRESS_LEVEL, min=0, max=9,
                             tooltip="PNG (zlib) compression: 4 = Save Image's setting, byte-identical files. "
                                     "1 encodes about 1.5-2x faster for files about 10% larger; 0 stores raw "
                                     "pixels (3 MB per megapixel); 6-9 cost 2-8x the time for 2-6% smaller files. "
                                     "Pixels are the same at every level."),
                io.Boolean.Input("background", default=True,
                                 tooltip="On: encode and write on a writer thread while the next prompt runs (the "
                                         "prompt only converts the pixels and reserves the name). Off: write before "
                                         "the node finishes, as Save Image does."),
            ],
            outputs=[io.Image.Output("images", tooltip="The input images, unchanged (to chain more nodes).")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix="ComfyUI", compress_level=core.STOCK_COMPRESS_LEVEL,
                background=True) -> io.NodeOutput:
        validation.output_prefix(filename_prefix, "filename_prefix")
        check_images(images)
        if not 0 <= int(compress_level) <= 9:
            raise ValueError(f"compress_level is {compress_level}: choose 0 (none) to 9 (smallest); 4 is Save Image's")
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, images[0].shape[1], images[0].shape[0])
        chunks = None if internals.metadata_disabled() else core.text_chunks(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        names = core.reserve(folder, filename, counter, images.shape[0])
        save(images, [os.path.join(folder, n) for n in names], chunks, int(compress_level), background)
        results = [ui.SavedResult(name, subfolder, io.FolderType.output) for name in names]
        return io.NodeOutput(images, ui=ui.SavedImages(results))


def save(images, paths: list[str], chunks, compress_level: int, background: bool) -> None:
    """Write each image to its reserved path, queued or at once; placeholders of unwritten ones are removed."""
    for n, (image, path) in enumerate(zip(images, paths)):
        try:
            array = core.to_uint8(image)
            if background:
                WRITER.submit(array, path, chunks, compress_level)
            else:
                core.write_png(array, path, chunks, compress_level)
        except BaseException:
            for rest in paths[n:]:
                core.remove_placeholder(rest)
            raise


NODES = [ZImageLabSaveImage]


def on_load() -> None:
    """Downloads wait for queued files, a status / flush route, and SIGTERM finishes the queue."""
    internals.wait_for_pending_views(WRITER)
    internals.serve_status(WRITER)
    internals.flush_on_sigterm(WRITER)
