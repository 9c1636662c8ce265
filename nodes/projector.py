"""Load Qwen3 Projector: map another Qwen3's hidden width to the width Z-Image reads."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..core import projector as core
from . import CATEGORY

FOLDER = "projectors"


def register_folder() -> None:
    """models/projectors, for projector safetensors files (extra_model_paths.yaml can add more)."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
        folder_paths.folder_names_and_paths[FOLDER] = (folder_paths.folder_names_and_paths[FOLDER][0], {".safetensors"})


def projector_files() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER)


def on_load() -> None:
    register_folder()


class ProjectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabProjectorLoader",
            display_name="Load Qwen3 Projector",
            category=f"{CATEGORY}/prompt",
            description=(
                "Attaches a projector (linear or small MLP, from models/projectors) to a Qwen3 loaded with Load HF Qwen3, "
                "so a Qwen3 of another width (e.g. Qwen3-1.7B, 2048) produces the width Z-Image reads (2560). Fit one "
                "with `python -m zlab fit-projector`. The projector is applied to the chosen layer (or blend) before any "
                "long-prompt mode; the CLIP you give is not changed (a clone carries the projector)."
            ),
            search_aliases=["projector", "adapter", "embedding projection", "qwen3 width"],
            inputs=[
                io.Clip.Input("clip", tooltip="A Qwen3 from Load HF Qwen3 (transformers)."),
                io.Combo.Input("projector_name", options=projector_files(),
                               tooltip="A projector safetensors file in models/projectors (linear.weight/bias or fc1/fc2)."),
            ],
            outputs=[io.Clip.Output("CLIP", tooltip="A clone of the Qwen3 whose embeddings pass through the projector.")],
        )

    @classmethod
    def execute(cls, clip, projector_name) -> io.NodeOutput:
        if not getattr(clip, "zimage_lab_encoder", False):
            raise ValueError("clip must come from Load HF Qwen3 (ZImageLabHFQwen3Loader): projectors attach to a "
                             "transformers Qwen3; CLIPLoader's Qwen3-4B already has Z-Image's width")
        path = folder_paths.get_full_path_or_raise(FOLDER, projector_name)
        try:
            projector = core.load(path)
        except ValueError as e:
            raise ValueError(f"projector_name {projector_name}: {e}") from None
        try:
            core.check_width(projector, clip.hidden_size, f"the text encoder {clip.name}")
        except ValueError as err:
            raise ValueError(f"projector_name {projector_name}: {err}") from None
        return io.NodeOutput(clip.with_projector(projector), ui={"text": [f"{projector_name}: {projector.describe()}"]})


NODES = [ProjectorLoader]
