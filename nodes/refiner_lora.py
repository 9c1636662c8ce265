"""Z-Image Refiner LoRA Loader: apply a LoRA to chosen Z-Image blocks only, and report what it did."""

from __future__ import annotations

import math
import os

import comfy.lora
import comfy.lora_convert
import comfy.weight_adapter
import folder_paths
import torch
from comfy_api.latest import io

from ..core import refiner_lora as core
from . import CATEGORY

NO_FILE = "[none]"
SAFETENSORS = (".safetensors", ".sft")
_CONSUMED_SUFFIXES = (".alpha", ".dora_scale", ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight", ".reshape_weight")


def read_lora_file(lora_name: str) -> dict:
    """A LoRA state dict from the loras folder; ValueError unless it is a readable safetensors file."""
    if not lora_name.lower().endswith(SAFETENSORS):
        raise ValueError(f"lora_name {lora_name!r} is not a .safetensors file: Z-Image Lab only reads safetensors "
                         "(pickled .pt/.ckpt files can run code). Convert it, or pick a .safetensors LoRA.")
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None or not os.path.isfile(path):
        raise ValueError(f"lora_name {lora_name!r} is not in the loras folder ({', '.join(folder_paths.get_folder_paths('loras'))})")
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ValueError(f"lora_name {lora_name!r} is not a valid safetensors file ({e}): re-download or re-save it") from None


def parse_patches(model, lora: dict):
    """ComfyUI's patches for this model (LoraLoader's own parsing) and the file keys it did not use."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    converted = comfy.lora_convert.convert_lora(lora)
    patches = comfy.lora.load_lora(converted, key_map, log_missing=False)
    used = set()
    for patch in patches.values():
        used |= set(getattr(patch, "loaded_keys", ()) or ())
    for name in key_map:
        used.update(name + s for s in _CONSUMED_SUFFIXES if name + s in converted)
    return patches, sorted(k for k in converted if k not in used)


def _target_shape(shapes: dict, key) -> tuple[str, tuple]:
    """(weight name, shape the patch must produce): a slice's shape for offset keys (fused qkv)."""
    if isinstance(key, str):
        return key, tuple(shapes[key])
    name, offset = key[0], key[1]
    shape = list(shapes[name])
    if offset is not None:
        shape[offset[0]] = offset[2]
    return name, tuple(shape)


def shape_problem(patch, target_shape: tuple, name: str) -> str | None:
    """Why a patch cannot apply to a weight of this shape, or None."""
    if isinstance(patch, comfy.weight_adapter.LoRAAdapter) and patch.weights[3] is None and patch.weights[5] is None:
        return core.lora_shape_error(target_shape, tuple(patch.weights[0].shape), tuple(patch.weights[1].shape))
    if isinstance(patch, tuple) and patch[0] in ("diff", "set"):
        got = tuple(patch[1][0].shape)
        return None if got == target_shape else f"{patch[0]} tensor has shape {got}, the weight {target_shape}"
    reached = []

    def record(delta):
        reached.append(True)
        return delta

    try:  # any other adapter: let ComfyUI compute it on a zero weight and see whether it gets through
        patch.calculate_weight(torch.zeros(target_shape), name, 1.0, 1.0, None, record)
    except Exception as e:
        return str(e)
    return None if reached else f"cannot be applied to a weight of shape {target_shape}"


def apply_lora(model, lora: dict, source: str, strength: float, target: str, block_strengths: str = ""):
    """(patched clone or the model itself at strength 0, report); everything is checked before cloning."""
    if not math.isfinite(strength):
        raise ValueError(f"strength is {strength}: use a finite number (1.0 = as trained, 0 = off)")
    core.in_target("other", target)  # validates target
    entries = core.parse_block_strengths(block_strengths)
    if not lora:
        raise ValueError(f"{source} holds no tensors: it is not a LoRA")
    patches, not_understood = parse_patches(model, lora)
    if not patches:
        sample = ", ".join(sorted(lora)[:3])
        raise ValueError(f"{source} has no key ComfyUI maps to this Z-Image model ({len(lora)} keys, e.g. {sample}): "
                         "it is not a Z-Image LoRA, or not in a key format ComfyUI reads (diffusers to_q/to_k/to_v/"
                         "to_out.0, PEFT lora_A/lora_B, kohya lora_up/lora_down)")
    shapes = {k: tuple(v.shape) for k, v in model.model_state_dict().items()}
    core.check_entries_match(entries, {core.block_of(k) for k in shapes if k.startswith("diffusion_model.")})
    selected, outside, muted, problems = [], {}, {}, []
    for key, patch in patches.items():
        name, target_shape = _target_shape(shapes, key)
        block = core.block_of(name)
        if not core.in_target(block, target):
            outside[block] = outside.get(block, 0) + 1
            continue
        multiplier = core.block_multiplier(entries, block)
        if multiplier == 0:
            muted[block] = muted.get(block, 0) + 1
            continue
        problem = shape_problem(patch, target_shape, name)
        if problem:
            problems.append(f"{name}: {problem}")
        selected.append((key, patch, multiplier, block))
    if not selected:
        blocks = core.compress_blocks({**outside, **muted})
        raise ValueError(f"{source} has nothing to apply for target '{target}'" +
                         (" with these block_strengths" if muted else "") +
                         f": its patches are for {blocks}. Choose a target that includes them (e.g. 'everything').")
    if problems:
        raise ValueError(f"{source} does not fit this model: {len(problems)} patches have the wrong shape, e.g. "
                         f"{'; '.join(problems[:3])}. It is a LoRA for another model or model size.")
    applied = {}
    for _, _, _, block in selected:
        applied[block] = applied.get(block, 0) + 1
    text = core.report(source, strength, target, applied, outside, muted, not_understood)
    if strength == 0:
        return model, text + "\nstrength 0: the model is returned unchanged"
    patched = model.clone()
    for multiplier in dict.fromkeys(m for _, _, m, _ in selected):  # one add_patches per strength, file order kept
        group = {key: patch for key, patch, m, _ in selected if m == multiplier}
        added = patched.add_patches(group, strength * multiplier)
        if len(added) != len(group):
            raise ValueError(f"{source}: ComfyUI accepted {len(added)} of {len(group)} patches")  # cannot happen
    return patched, text


class ZImageRefinerLoRALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabRefinerLoRALoader",
            display_name="Z-Image Refiner LoRA Loader",
            category=f"{CATEGORY}/model",
            description=(
                "Loads a LoRA into chosen Z-Image blocks only: the context refiner (the 2 caption-only blocks), "
                "the noise refiner (2 image-only blocks), both, or everything (= ComfyUI's LoraLoaderModelOnly). "
                "Reads every format ComfyUI reads for Z-Image (diffusers to_q/to_k/to_v/to_out.0, PEFT "
                "lora_A/lora_B, kohya lora_up/lora_down with alpha), checks shapes before patching, optional "
                "per-block strengths, and reports which patches it applied and skipped. Strength 0 = unchanged."
            ),
            search_aliases=["lora", "context refiner lora", "refiner lora", "block lora"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model. It is not modified: a patched clone is returned."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras") + [NO_FILE],
                               tooltip="A .safetensors LoRA from ComfyUI's loras folder. Ignored when a LORA_MODEL is connected "
                                       f"to 'lora' ({NO_FILE} then)."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="LoRA strength (negative inverts it). 0 leaves the model unchanged."),
                io.Combo.Input("target", options=list(core.TARGETS), default="context refiner",
                               tooltip="Which blocks the LoRA may patch; its patches for other blocks are skipped and reported."),
                io.String.Input("block_strengths", default="", multiline=True, optional=True,
                                tooltip="Optional per-block multipliers, e.g. 'context_refiner.0=1, context_refiner.1=0.5' "
                                        "or 'layers.0-9=0'. Names: context_refiner[.N], noise_refiner[.N], layers[.N[-M]], other."),
                io.LoraModel.Input("lora", optional=True,
                                   tooltip="A LoRA produced in this graph (e.g. by Z-Image Refiner LoRA Train); used instead of lora_name."),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="The model with the LoRA applied to the chosen blocks."),
                io.String.Output("report", tooltip="How many patches were applied to which blocks, and what was skipped."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, target, block_strengths="", lora=None) -> io.NodeOutput:
        if lora is not None:
            source, state = "the connected LoRA", lora
        elif lora_name == NO_FILE:
            raise ValueError(f"lora_name is {NO_FILE}: pick a LoRA file, or connect a LORA_MODEL to 'lora'")
        else:
            source, state = lora_name, read_lora_file(lora_name)
        patched, text = apply_lora(model, state, source, strength, target, block_strengths)
        return io.NodeOutput(patched, text, ui={"text": [text]})


NODES = [ZImageRefinerLoRALoader]
