"""Z-Image LoRA Inspector: what a LoRA file is (trainer layout, adapters, rank, alpha, blocks) and which keys will not load."""

from __future__ import annotations

from comfy_api.latest import io

from ..core import lora_formats as core
from ..core import refiner_lora
from . import CATEGORY
from ._internals import lora as comfy_lora
from .refiner_lora import NO_FILE, read_lora_file


def loading_report(model, lora: dict) -> str:
    """What ComfyUI's parsing (with the Z-Image names added by this pack) does with the file on this model."""
    patches, _, _, unused = comfy_lora.parse_patches(model, lora)
    reasons = core.describe(lora)["not_loadable"]
    per_block: dict[str, int] = {}
    sliced = 0
    for key in patches:
        name = key if isinstance(key, str) else key[0]
        sliced += not isinstance(key, str) and key[1] is not None
        block = refiner_lora.block_of(name)
        per_block[block] = per_block.get(block, 0) + 1
    lines = [f"on this model: {len(patches)} patches ({sliced} onto q/k/v slices of a fused qkv) in "
             f"{refiner_lora.compress_blocks(per_block) or 'no block'}"]
    if unused:
        lines.append(f"{len(unused)} keys the loader will skip:")
        lines.extend(f"  {k}: {reasons.get(k, 'its module name matches no weight of this model')}" for k in unused)
    else:
        lines.append("every key is used by a patch")
    return "\n".join(lines)


def inspect(lora: dict, source: str, model=None) -> str:
    """The full inspector text for a LoRA state dict (and, with a model, how it loads there)."""
    if not lora:
        raise ValueError(f"{source} holds no tensors: it is not a LoRA")
    info = core.describe(lora)
    text = core.format_report(source, info, refiner_lora.compress_blocks(info["blocks"]))
    return text if model is None else text + "\n" + loading_report(model, lora)


class ZImageLoRAInspector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="ZImageLabLoRAInspector",
            display_name="Z-Image LoRA Inspector",
            category=f"{CATEGORY}/model",
            description=(
                "Reads a LoRA file and reports its trainer layout (ai-toolkit, musubi-tuner / kohya, DiffSynth, "
                "diffusers / PEFT, LyCORIS), adapter kinds (LoRA, LoKr, LoHa), rank, alpha, the blocks it touches, "
                "the formula of each delta, and every key that will not load and why. With a model connected it "
                "also runs ComfyUI's own parsing on that model. Same text as `python -m zlab lora-info FILE`."
            ),
            search_aliases=["lora info", "lora keys", "lora format", "inspect lora"],
            inputs=[
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras") + [NO_FILE],
                               tooltip="A .safetensors LoRA from ComfyUI's loras folder."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional Z-Image model: also report how many patches land on which blocks "
                                       "of it, and the keys its loader would skip. The model is not changed."),
            ],
            outputs=[io.String.Output("report", tooltip="The inspection report as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora_name, model=None) -> io.NodeOutput:
        if lora_name == NO_FILE:
            raise ValueError(f"lora_name is {NO_FILE}: pick a LoRA file to inspect")
        text = inspect(read_lora_file(lora_name), lora_name, model)
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [ZImageLoRAInspector]
