"""Z-Image Refiner LoRA Train: teach the context refiner a style from text alone, save the LoRA."""

from __future__ import annotations

import json
import logging
import os
import re

import folder_paths
import torch
from comfy_api.latest import io, ui
from safetensors.torch import save_file

from ..core import refiner_lora_train as core
from ..core import validation
from ._internals import models as comfy_models
from ._internals import quant
from ._internals.dit import sdpa_attention
from ._internals.memory import detached_copy
from ._internals.server import progress_bar
from . import CATEGORY

log = logging.getLogger(__name__)


def check_zimage(model) -> int:
    """Number of context-refiner blocks; ValueError unless MODEL is a Z-Image DiT."""
    dm = model.get_model_object("diffusion_model")
    refiner = getattr(dm, "context_refiner", None)
    if refiner is None or getattr(dm, "cap_embedder", None) is None or getattr(dm, "rope_embedder", None) is None:
        raise ValueError("model is not a Z-Image (NextDiT) diffusion model with a context refiner: connect the MODEL "
                         "from UNETLoader z_image_turbo_bf16.safetensors")
    return len(refiner)


def clean_lora_name(name: str) -> str:
    """A relative path inside the loras folder (no .., no absolute path, no extension)."""
    name = name.strip().replace("\\", "/")
    name = re.sub(r"\.safetensors$", "", name)
    parts = [p for p in name.split("/") if p]
    if not parts or name.startswith("/") or any(p in (".", "..") for p in parts) or re.search(r"[:*?\"<>|]", name):
        raise ValueError(f"lora_name is {name!r}: give a file name, optionally in a subfolder of the loras folder, "
                         "e.g. 'zimage_lab/refiner_watercolor'")
    return "/".join(parts)


def encode(clip, text: str):
    """Caption states [1, L, W] and token ids of a prompt, exactly as CLIPTextEncode encodes it."""
    tokens = clip.tokenize(text)
    ids = [int(t[0]) for t in next(iter(tokens.values()))[0]]
    return clip.encode_from_tokens_scheduled(tokens)[0][0], ids


def patched_weight(model, key: str, device):
    """A weight as the patcher makes it (its LoRAs etc. applied), dequantized (fp8, scaled fp8, GGUF), float32."""
    return quant.patched_float_weight(model, key, device)


def frozen_copy(module, prefix: str, model, device):
    """A float32 copy of a DiT submodule with the patcher's weights, built as new objects that own nothing of the
    model (DynamicVRAM allocations, pins and patch hooks stay with it; nothing is copied or pickled): see
    ``_internals/memory.py`` for why not ComfyUI's non-dynamic delegate."""
    weights = {name: patched_weight(model, prefix + name, device) for name, _ in module.named_parameters()}
    return detached_copy(module, weights)


def differentiable_attention(func, *args, **kwargs):
    """Route the refiner's attention through PyTorch SDPA, which has a backward (sage/flash may not)."""
    return sdpa_attention(*args, **kwargs)


def refiner_stack(model, device):
    """Frozen float32 copies of the caption path (cap_embedder, pad token, context refiner) as a RefinerStack."""
    n_blocks = check_zimage(model)
    cap_embedder = frozen_copy(model.get_model_object("diffusion_model.cap_embedder"), "diffusion_model.cap_embedder.",
                               model, device)
    blocks = {f"context_refiner.{i}": frozen_copy(model.get_model_object(f"diffusion_model.context_refiner.{i}"),
                                                  f"diffusion_model.context_refiner.{i}.", model, device)
              for i in range(n_blocks)}
    pad_token = patched_weight(model, "diffusion_model.cap_pad_token", device)
    dm = model.get_model_object("diffusion_model")
    stack = core.RefinerStack(cap_embedder, pad_token, model.get_model_object("diffusion_model.rope_embedder"),
                              blocks.values(), dm.pad_tokens_multiple,
                              {"optimized_attention_override": differentiable_attention})
    return stack, blocks


def save_lora(state: dict, name: str, metadata: dict) -> tuple[str, str]:
    """Write the LoRA as NAME_00001.safetensors (first free number) in the loras folder: (relative name, path)."""
    root = folder_paths.get_folder_paths("loras")[0]
    folder = os.path.join(root, os.path.dirname(name))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(name)
    counter = 1
    while os.path.exists(os.path.join(folder, f"{base}_{counter:05d}.safetensors")):
        counter += 1
    path = os.path.join(folder, f"{base}_{counter:05d}.safetensors")
    save_file(state, path, metadata={"zimage_lab": json.dumps(metadata)})
    return os.path.relpath(path, root).replace(os.sep, "/"), path


def plot_image(history, title):
    """The loss plot as a ComfyUI IMAGE [1, H, W, 3]."""
    return torch.from_numpy(core.loss_plot(history, title)).unsqueeze(0)


def train_refiner_lora(model, clip, prompts, style, preserve_prompts, rank, alpha, learning_rate, steps, seed,
                       preservation_weight, modules, lora_name, progress=None):
    """Everything the node does, checked before any work: (state dict, relative name, history, info)."""
    core.validate(rank, alpha, learning_rate, steps, preservation_weight, style, modules)
    train_prompts = core.parse_prompts(prompts, "prompts")
    keep_prompts = core.parse_prompts(preserve_prompts, "preserve_prompts", required=preservation_weight > 0)
    name = clean_lora_name(lora_name)
    if clip is None:
        raise ValueError("clip is empty: connect Z-Image's text encoder (CLIPLoader qwen_3_4b.safetensors, type lumina2)")
    check_zimage(model)
    device = comfy_models.torch_device()

    encoded_src = [encode(clip, p) for p in train_prompts]
    encoded_tgt = [encode(clip, core.with_style(p, style)) for p in train_prompts]
    encoded_keep = [encode(clip, q) for q in keep_prompts] if preservation_weight > 0 else []

    comfy_models.load_models([model])  # our patches applied, other clones' removed
    with torch.inference_mode(False), torch.enable_grad():
        stack, blocks = refiner_stack(model, device)

        def fresh(states):
            return states.detach().clone().to(device=device, dtype=torch.float32)

        hooks = []
        with comfy_models.training_mode():  # ComfyUI's autograd-safe RoPE path
            try:
                with torch.no_grad():
                    style_items, keep_items = [], []
                    for (src, src_ids), (tgt, tgt_ids) in zip(encoded_src, encoded_tgt):
                        a, b = core.aligned_positions(src_ids, tgt_ids)
                        style_items.append((fresh(src), a, stack.refine(fresh(tgt))[0, b].detach()))
                    for states, _ in encoded_keep:
                        keep_items.append((fresh(states), stack.refine(fresh(states))[0].detach()))
                loras, hooks = core.attach_loras(blocks, core.MODULE_SETS[modules], rank, alpha, seed, device)
                params = [p for lora in loras.values() for p in lora.parameters()]
                history = core.train(stack, params, style_items, keep_items, steps, learning_rate, preservation_weight,
                                     callback=progress)
            finally:
                for hook in hooks:
                    hook.remove()
        state = core.lora_state_dict(loras)
    settings = {"prompts": train_prompts, "style": style, "preserve_prompts": keep_prompts, "rank": rank,
                "alpha": alpha, "learning_rate": learning_rate, "steps": steps, "seed": seed,
                "preservation_weight": preservation_weight, "modules": modules,
                "blocks": list(blocks), "initial_loss": history[0]["loss"], "final_loss": history[-1]["loss"]}
    relative, path = save_lora(state, name, settings)
    return state, relative, history, {**settings, "lora_name": relative, "path": path}


class ZImageRefinerLoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabRefinerLoRATrain",
            display_name="Z-Image Refiner LoRA Train (text only)",
            category=f"{CATEGORY}/training",
            description=(
                "Trains a LoRA on Z-Image's two context-refiner blocks from text alone: for each training prompt, the "
                "refined caption of the prompt is pulled toward the refined caption of 'prompt, style' (what the "
                "unchanged model makes of the style words), while preserve prompts are kept as they were. No image "
                "is generated. Saves the LoRA (safetensors) into the loras folder, readable by Z-Image Refiner LoRA "
                "Loader and ComfyUI's LoraLoaderModelOnly; outputs it for use in this graph, with a loss plot."
            ),
            search_aliases=["train lora", "context refiner", "style lora", "text only training"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model; only its caption path is used, and it is not modified."),
                io.Clip.Input("clip", tooltip="Z-Image's text encoder (CLIPLoader qwen_3_4b.safetensors, type lumina2)."),
                io.String.Input("prompts", multiline=True, default="a lighthouse on a cliff\na cat on a sofa\na busy market street",
                                tooltip="Training prompts, one per line, written without the style words."),
                io.String.Input("style", default="watercolor painting, soft pastel colors",
                                tooltip="The words the LoRA should learn to imply; targets are 'prompt, style'."),
                io.String.Input("preserve_prompts", multiline=True, default="\n".join(core.DEFAULT_PRESERVE),
                                tooltip="Prompts whose refined caption must not change, one per line (the preservation loss)."),
                io.Int.Input("rank", default=8, min=1, max=256, tooltip="LoRA rank."),
                io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="LoRA alpha; the update is scaled by alpha / rank (must be > 0)."),
                io.Float.Input("learning_rate", default=5e-4, min=0.0, max=1.0, step=1e-5, round=1e-7,
                               tooltip="AdamW learning rate (must be > 0)."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimizer steps; each step uses every prompt."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Seed of the LoRA's initial down weights."),
                io.Float.Input("preservation_weight", default=1.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Weight of the preservation loss (0 = none)."),
                io.Combo.Input("modules", options=list(core.MODULE_SETS), default="attention + feed-forward",
                               tooltip="Linears of each context-refiner block that get a LoRA."),
                io.String.Input("lora_name", default="zimage_lab/refiner_style",
                                tooltip="File name in the loras folder; _00001 etc. is appended so nothing is overwritten."),
            ],
            outputs=[
                io.LoraModel.Output("lora", tooltip="The trained LoRA, for Z-Image Refiner LoRA Loader or Load LoRA Model."),
                io.String.Output("lora_name", tooltip="The saved file's name in the loras folder."),
                io.Image.Output("loss_plot", tooltip="Loss per step: total, style and preservation."),
                io.String.Output("info", tooltip="JSON record of the training settings and losses."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, prompts, style, preserve_prompts, rank, alpha, learning_rate, steps, seed,
                preservation_weight, modules, lora_name) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Refiner LoRA Train (text only)")
        for name, text in (("prompts", prompts), ("style", style), ("preserve_prompts", preserve_prompts)):
            validation.bounded_text(text, name, why="each line is encoded and trained on at every step")
        validation.filename_prefix(lora_name, "lora_name")
        bar = progress_bar(steps)
        every = max(1, steps // 10)
        seen = []

        def progress(step, record):
            seen.append(record)
            if step % every == 0 or step == steps:
                log.info("Z-Image Lab refiner LoRA step %d/%d loss %.6f (style %.6f, keep %.6f)", step, steps,
                         record["loss"], record["style"], record["keep"])
            if step == steps or step % every:
                bar.update_absolute(min(step + 1, steps), steps)
                return
            from PIL import Image

            plot = (core.loss_plot(seen, f"step {step}: loss {record['loss']:.4g}") * 255).astype("uint8")
            bar.update_absolute(min(step + 1, steps), steps, ("JPEG", Image.fromarray(plot), 512))

        state, relative, history, info = train_refiner_lora(
            model, clip, prompts, style, preserve_prompts, rank, alpha, learning_rate, steps, seed,
            preservation_weight, modules, lora_name, progress)
        image = plot_image(history, f"{relative}: loss {history[0]['loss']:.4g} -> {history[-1]['loss']:.4g}")
        text = (f"saved loras/{relative}: {len(state)} tensors, rank {rank}; loss {history[0]['loss']:.6g} -> "
                f"{history[-1]['loss']:.6g} (style {history[0]['style']:.4g} -> {history[-1]['style']:.4g}, "
                f"keep {history[-1]['keep']:.4g}) after {steps} steps")
        info["history"] = history
        preview = ui.PreviewImage(image, cls=cls).as_dict()
        return io.NodeOutput(state, relative, image, json.dumps(info),
                             ui={**preview, "text": [text], "lora_name": [relative], "loss": [r["loss"] for r in history]})


NODES = [ZImageRefinerLoRATrain]
