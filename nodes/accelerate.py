"""Z-Image Accelerate: the same maths faster on NVIDIA GPUs, as patches on clones of MODEL, CLIP and VAE.

The pieces live beside this file: the block stand-in in ``_accelerate_block.py``; ComfyUI internals in
``_internals/`` (``ops`` weight casting and the attention override key, ``graphs`` CUDA-graph and sampler wrappers
and the allocator check, ``llama`` the text encoder, ``vae`` the decode, ``memory`` DynamicVRAM clones).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from comfy_api.latest import io

from ..core import accelerate as core
from . import CATEGORY
from ._accelerate_block import AcceleratedBlock, Runtime, attention_override
from ._internals import graphs, memory, patching, quant
from ._internals.models import check_zimage_model
from ._internals.llama import TEXT_ENCODER_GRAPH, accelerate_clip
from ._internals.ops import attention_override_of, set_attention_override
from ._internals.server import routes as server_routes
from ._internals.vae import accelerate_vae

__all__ = ["accelerate_model", "accelerate_clip", "accelerate_vae", "runtime_of", "safe_options", "NODES"]

WRAPPER_KEY = "zimage_lab_accelerate"
BLOCK_GROUPS = ("layers", "noise_refiner", "context_refiner")
CPU_COMPILE_ENV = "ZLAB_ACCELERATE_CPU_COMPILE"
"""Set to 1 to compile the blocks on a CPU server too (the tests do, to check the compiled maths without a GPU)."""


def safe_options(model, options: core.AccelerateOptions) -> tuple[core.AccelerateOptions, list[str]]:
    """The options that can run on this server and MODEL, and a sentence for each one switched off (decided
    before anything is patched)."""
    notes = []
    device = getattr(getattr(model, "load_device", None), "type", "cpu")
    if options.compile_blocks and device != "cuda" and os.environ.get(CPU_COMPILE_ENV) != "1":
        options = dataclasses.replace(options, compile_blocks=False)
        notes.append(f"compile_blocks switched off: the model runs on the {device}, where compiling every block "
                     f"takes minutes and gains little (it is for NVIDIA GPUs; {CPU_COMPILE_ENV}=1 compiles anyway)")
    reason = graphs.graph_conflict(options.compile_blocks, options.cuda_graphs)
    if reason:
        options = dataclasses.replace(options, cuda_graphs=False)
        notes.append("cuda_graphs switched off: " + reason)
    existing = attention_override_of(model)
    if options.attention != "off" and existing is not None and not getattr(existing, "zimage_lab", False):
        options = dataclasses.replace(options, attention="off")
        notes.append("attention left to the attention override already on this MODEL (e.g. ModelAttentionBackend "
                     "/ BlockSparseAttention); set attention to off here, or remove that node, to silence this")
    return options, notes


def needs_resident_weights(options: core.AccelerateOptions) -> bool:
    """CUDA graphs and FP8 copies need every weight at a fixed GPU address, which DynamicVRAM does not promise."""
    return options.cuda_graphs or options.fp8_matmul


def clone_for(model, options: core.AccelerateOptions, runtime: Runtime):
    """model.clone(), or for a DynamicVRAM MODEL whose options need resident weights, ComfyUI's own
    non-dynamic clone (the checkpoint reloaded for the legacy ModelPatcher, as TorchCompileModel does)."""
    if not (memory.is_dynamic(model) and needs_resident_weights(options)):
        return model.clone()
    if not memory.can_reload_resident(model):
        runtime.stats.fallback("DynamicVRAM model with no loader to reload it resident: CUDA graphs / FP8 skipped")
        return model.clone()
    logging.info("ZImageLabAccelerate: DynamicVRAM model; loading a resident-weights copy for CUDA graphs / FP8.")
    runtime.resident_copy = True
    return memory.resident_clone(model)


def install_blocks(patched, diffusion_model, runtime: Runtime, block_at) -> None:
    """Object patches: every block (block_at(name), unwrapped if already accelerated) behind an AcceleratedBlock."""
    for group in BLOCK_GROUPS:
        for i in range(len(getattr(diffusion_model, group))):
            name = f"diffusion_model.{group}.{i}"
            block = block_at(name)
            if isinstance(block, AcceleratedBlock):
                block = block.original
            patched.add_object_patch(name, AcceleratedBlock(block, runtime))


def accelerate_model(model, options: core.AccelerateOptions):
    """A clone of MODEL with the chosen accelerations installed; the given MODEL is untouched."""
    options.validate()
    diffusion_model = check_zimage_model(model)
    options, notes = safe_options(model, options)
    for note in notes:
        logging.warning("ZImageLabAccelerate: %s", note)
    runtime = Runtime(options)
    runtime.notes.extend(notes)
    patched = clone_for(model, options, runtime)
    if options.compile_blocks or options.fp8_matmul:
        install_blocks(patched, diffusion_model, runtime, patched.get_model_object)  # a resident copy: own modules
        patching.rebuild_on_multigpu_clone(patched, WRAPPER_KEY, lambda clone: install_blocks(
            clone, diffusion_model, runtime, lambda name: patching.own_module(clone, name)))
    if options.attention != "off":
        set_attention_override(patched, attention_override(options.attention, runtime))
    if options.cuda_graphs:
        patched.add_wrapper_with_key(graphs.DIFFUSION_MODEL, WRAPPER_KEY, graphs.graph_wrapper(runtime))
    if options.sync_free_sampling:
        patched.add_wrapper_with_key(graphs.SAMPLER_SAMPLE, WRAPPER_KEY, graphs.sampler_wrapper(runtime))
    patched.set_attachments(WRAPPER_KEY, runtime)
    return patched, runtime


def runtime_of(model):
    """The accelerator state (options, stats) of a MODEL patched by this node, or None."""
    return model.get_attachment(WRAPPER_KEY)


def describe(options: core.AccelerateOptions, clip_done: str, vae_done: str) -> str:
    """One-line summary for the node's UI."""
    on = [name for name, value in options.to_dict().items() if value not in (False, "off")]
    text = "accelerations: " + (", ".join(f"{n}={options.to_dict()[n]}" if n == "attention" else n for n in on)
                                if on else "none (MODEL unchanged)")
    if clip_done:
        text += f"; CLIP encode {clip_done}"
    if vae_done:
        text += f"; VAE decode {vae_done}"
    return text


class ZImageAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabAccelerate",
            display_name="Z-Image Accelerate",
            category=f"{CATEGORY}/speed",
            description=(
                "Makes Z-Image inference faster on NVIDIA GPUs without changing the maths: the fastest SDPA "
                "attention kernel (measured), regional torch.compile of the transformer blocks with fused norms, "
                "gates and real-valued RoPE at fixed shapes, optional CUDA-graph replay and opt-in FP8 matrix "
                "multiplies on Hopper; a process-wide cache of text encodes for the CLIP; channels-last / compiled "
                "decode for the VAE. Everything is off by default and each option works alone; with all off the "
                "outputs are the given objects' outputs, bit for bit. Works on clones: the inputs are untouched."
            ),
            search_aliases=["speed", "fast", "torch.compile", "fp8", "cuda graph", "cudnn attention", "cache"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model to accelerate (a clone is patched)."),
                io.Combo.Input("attention", options=list(core.ATTENTION_CHOICES), default="off",
                               tooltip="Attention kernel. off = ComfyUI's own; auto = time PyTorch's SDPA backends "
                                       "(cuDNN, flash, memory-efficient) on the real shapes once and keep the fastest; "
                                       "or force one backend."),
                io.Boolean.Input("compile_blocks", default=False,
                                 tooltip="Regional torch.compile of every transformer block (fixed shapes, no "
                                         "autotuning): fuses RMSNorms, adaLN scales, tanh gates, residuals and "
                                         "real-valued RoPE around the matrix multiplies. The first run of each image "
                                         "size compiles (tens of seconds); later runs are faster."),
                io.Boolean.Input("cuda_graphs", default=False,
                                 tooltip="Replay each forward of a given size from a CUDA graph (no per-kernel launch "
                                         "cost). Uses extra GPU memory per image size; skipped with model patches "
                                         "such as steering or LoRA hooks on the blocks."),
                io.Boolean.Input("fp8_matmul", default=False,
                                 tooltip="Opt-in: run the block matrix multiplies in FP8 e4m3 with per-row scales "
                                         "(Hopper/Blackwell GPUs). Faster but NOT exact: outputs differ from bf16 "
                                         "beyond rounding. Keeps an FP8 copy of the weights (about 6 GB)."),
                io.Boolean.Input("sync_free_sampling", default=False,
                                 tooltip="Run res_multistep (the Turbo default sampler) without waiting for the GPU "
                                         "at every step (ComfyUI's loop reads two GPU values per step); the same "
                                         "operations in the same order, so bit-identical latents. Other samplers run "
                                         "as they are (euler has no such waits)."),
                io.Boolean.Input("cache_text_encodes", default=False,
                                 tooltip="CLIP: encode each distinct prompt (with the same template, layer and "
                                         "encoder weights) once per server process; repeats return the cached "
                                         "conditioning. Needs the clip input."),
                io.Combo.Input("graph_text_encoder", options=list(TEXT_ENCODER_GRAPH), default="off",
                               tooltip="CLIP: replay the Qwen3 forward from a CUDA graph (prompts padded at the end "
                                       "to a multiple of 32 tokens; causal attention keeps the real tokens' states), "
                                       "removing the Python and launch overhead of a first encode. 'on + TF32' also "
                                       "runs its float32 matrix multiplies on TF32 tensor cores (faster, ~1e-3 "
                                       "relative rounding). 'on + bf16' runs the encoder in bfloat16, the dtype of "
                                       "the Qwen3-4B checkpoint and of transformers' bf16 pipelines, instead of "
                                       "ComfyUI's float32 activations (fastest; bf16 rounding, measured in "
                                       "docs/performance.md). Needs the clip input; the graph is skipped with "
                                       "DynamicVRAM weight streaming."),
                io.Boolean.Input("vae_channels_last", default=False,
                                 tooltip="VAE: decode in channels-last memory layout (faster convolutions on "
                                         "NVIDIA tensor cores). Needs the vae input."),
                io.Boolean.Input("vae_compile", default=False,
                                 tooltip="VAE: torch.compile the decoder at fixed latent sizes (first decode of each "
                                         "size compiles). Needs the vae input."),
                io.Boolean.Input("vae_fast_output", default=False, optional=True,
                                 tooltip="VAE: finish the decoded image on the GPU (ComfyUI's scaling to [0, 1], the "
                                         "same float32 operations) and copy it to the CPU once, into page-locked "
                                         "memory, instead of two CPU copies and CPU scaling. Bit-identical pixels. "
                                         "Needs the vae input."),
                io.Clip.Input("clip", optional=True, tooltip="Optional CLIP (qwen_3_4b) to give cached encodes."),
                io.Vae.Input("vae", optional=True, tooltip="Optional VAE (ae.safetensors) to give a faster decode."),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="The accelerated clone of the model."),
                io.Clip.Output("CLIP", tooltip="The CLIP with cached encodes (the given CLIP if the option is off; "
                                               "empty if no clip was connected)."),
                io.Vae.Output("VAE", tooltip="The VAE with the faster decode (the given VAE if its options are off; "
                                             "empty if no vae was connected)."),
                io.String.Output("info", tooltip="JSON record of the options applied."),
            ],
        )

    @classmethod
    def execute(cls, model, attention, compile_blocks, cuda_graphs, fp8_matmul, sync_free_sampling,
                cache_text_encodes, graph_text_encoder, vae_channels_last, vae_compile, vae_fast_output=False,
                clip=None, vae=None) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Accelerate")
        options = core.AccelerateOptions(attention=attention, compile_blocks=compile_blocks, cuda_graphs=cuda_graphs,
                                         fp8_matmul=fp8_matmul, sync_free_sampling=sync_free_sampling)
        options.validate()
        if (cache_text_encodes or graph_text_encoder != "off") and clip is None:
            raise ValueError("a CLIP option (cache_text_encodes / graph_text_encoder) is on but no clip is connected: "
                             "connect the CLIP to the clip input.")
        if (vae_channels_last or vae_compile or vae_fast_output) and vae is None:
            raise ValueError("a VAE option is on but no vae is connected: connect the VAE to the vae input.")
        runtime = None
        if options.any:
            out_model, runtime = accelerate_model(model, options)
            options = runtime.options  # what runs: an option this server cannot run safely is off
        else:
            out_model = model
        clip_on = cache_text_encodes or graph_text_encoder != "off"
        out_clip = accelerate_clip(clip, cache_text_encodes, graph_text_encoder) if clip_on else clip
        vae_done = " + ".join(n for n, on in (("channels-last", vae_channels_last), ("compiled", vae_compile),
                                               ("GPU output", vae_fast_output)) if on)
        out_vae = accelerate_vae(vae, vae_channels_last, vae_compile, fast_output=vae_fast_output) if vae_done else vae
        record = {"node": "ZImageLabAccelerate", **options.to_dict(), "cache_text_encodes": cache_text_encodes,
                  "graph_text_encoder": graph_text_encoder, "vae_channels_last": vae_channels_last,
                  "vae_compile": vae_compile, "vae_fast_output": vae_fast_output,
                  "switched_off": list(runtime.notes) if runtime is not None else []}
        clip_done = " + ".join(n for n, on in (("cached", cache_text_encodes),
                                                (f"CUDA graph ({graph_text_encoder})", graph_text_encoder != "off")) if on)
        text = describe(options, clip_done, vae_done)
        if runtime is not None and runtime.notes:
            text += "; " + "; ".join(runtime.notes)
        if runtime is not None and runtime.resident_copy:
            text += "; DynamicVRAM model reloaded with resident weights (needed by CUDA graphs / FP8)"
        elif runtime is not None and runtime.stats.fallback_reasons:
            text += "; skipped: " + "; ".join(runtime.stats.fallback_reasons)
        logging.info("ZImageLabAccelerate: %s", text)
        return io.NodeOutput(out_model, out_clip, out_vae, json.dumps(record, indent=1), ui={"text": [text]})


NODES = [ZImageAccelerate]


def on_load():
    """GET /zimage_lab/accelerate/encode_cache (entries, hits, misses) and POST .../clear."""
    from aiohttp import web

    routes = server_routes()
    if routes is None:  # not inside a ComfyUI server
        return

    @routes.get("/zimage_lab/accelerate/encode_cache")
    async def encode_cache_stats(request):
        return web.json_response(core.ENCODE_CACHE.stats())

    @routes.post("/zimage_lab/accelerate/encode_cache/clear")
    async def encode_cache_clear(request):
        core.ENCODE_CACHE.clear()
        return web.json_response(core.ENCODE_CACHE.stats())