"""Z-Image Refiner LoRA Loader: apply a LoRA to chosen Z-Image blocks only, and report what it did."""

from __future__ import annotations

import math
import os

import folder_paths
from comfy_api.latest import io

from ..core import lora_formats
from ..core import refiner_lora as core
from . import CATEGORY
from ._internals import quant
from ._internals import lora as comfy_lora

NO_FILE = "[none]"
SAFETENSORS = (".safetensors", ".sft")


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
    """ComfyUI's patches for this model (its own parsing plus the Z-Image names it lacks) and
    {file key it did not use: why}."""
    patches, _, converted, unused = comfy_lora.parse_patches(model, lora)
    reasons = lora_formats.describe(converted)["not_loadable"]
    return patches, {k: reasons.get(k, "its module name matches no weight of this model (a LoRA for another model "
                                       "or size, or a layout not recognised)") for k in unused}


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
    if comfy_lora.is_plain_lora(patch):
        up, down = comfy_lora.lora_factors(patch)
        return core.lora_shape_error(target_shape, tuple(up.shape), tuple(down.shape))
    kind_shape = comfy_lora.tuple_patch_shape(patch)
    if kind_shape is not None:
        kind, got = kind_shape
        return None if got == target_shape else f"{kind} tensor has shape {got}, the weight {target_shape}"
    return comfy_lora.trial_apply(patch, target_shape, name)


def apply_lora(model, lora: dict, source: str, strength: float, target: str, block_strengths: str = "",
               block_preset: str = "none"):
    """(patched clone or the model itself at strength 0, report); everything is checked before cloning."""
    if not math.isfinite(strength):
        raise ValueError(f"strength is {strength}: use a finite number (1.0 = as trained, 0 = off)")
    core.in_target("other", target)  # validates target
    entries = core.preset_entries(block_preset, block_strengths)
    if not lora:
        raise ValueError(f"{source} holds no tensors: it is not a LoRA")
    patches, not_understood = parse_patches(model, lora)
    if not patches:
        sample = ", ".join(sorted(lora)[:3])
        raise ValueError(f"{source} has no key ComfyUI maps to this Z-Image model ({len(lora)} keys, e.g. {sample}): "
                         "it is not a Z-Image LoRA, or not in a key format ComfyUI reads (diffusers to_q/to_k/to_v/"
                         "to_out.0, PEFT lora_A/lora_B, kohya lora_up/lora_down)")
    shapes = quant.logical_shapes(model)  # GGUF: the logical shape, not the blocks'
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
                "Reads the Z-Image LoRAs of every trainer: ai-toolkit, musubi-tuner / kohya (split to_q/to_k/to_v or "
                "fused qkv), DiffSynth / ModelScope, diffusers / PEFT, LyCORIS LoKr / LoHa; split q/k/v land on the "
                "fused qkv. Checks shapes before patching, per-block strengths and presets, and reports which "
                "patches it applied and every key it skipped and why. Strength 0 = unchanged."
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
                io.Combo.Input("block_preset", options=list(core.PRESETS), default="none", optional=True,
                               tooltip="Per-block strength preset (multipliers of whole blocks; q, k and v of the fused qkv "
                                       "move together). block_strengths entries are applied after it and win."),
                io.LoraModel.Input("lora", optional=True,
                                   tooltip="A LoRA produced in this graph (e.g. by Z-Image Refiner LoRA Train); used instead of lora_name."),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="The model with the LoRA applied to the chosen blocks."),
                io.String.Output("report", tooltip="How many patches were applied to which blocks, and what was skipped."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, target, block_strengths="", block_preset="none", lora=None) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Refiner LoRA Loader")
        if lora is not None:
            source, state = "the connected LoRA", lora
        elif lora_name == NO_FILE:
            raise ValueError(f"lora_name is {NO_FILE}: pick a LoRA file, or connect a LORA_MODEL to 'lora'")
        else:
            source, state = lora_name, read_lora_file(lora_name)
        patched, text = apply_lora(model, state, source, strength, target, block_strengths, block_preset)
        return io.NodeOutput(patched, text, ui={"text": [text]})


NODES = [ZImageRefinerLoRALoader]
