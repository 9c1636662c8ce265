"""Layer surgery for Z-Image: skip-layer guidance that works on NextDiT, refiner and main-layer ablations.

NextDiT consults neither ``patches_replace`` nor attention output patches, so ComfyUI's
SkipLayerGuidanceDiT leaves Z-Image unchanged. These nodes work one level up instead: an
``apply_model`` wrapper (WrappersMP.APPLY_MODEL, where both the DiT and the sampling schedule are
at hand) reads the Edits listed in ``transformer_options`` and, for that one model call, swaps
the DiT's block lists for ones that skip, reorder, repeat or scale blocks, then puts the stock
lists back. Skip-layer guidance is a post-CFG function (like ComfyUI's SkipLayerGuidanceDiT) that,
inside its window, runs one extra conditional pass through ``calc_cond_batch`` with a "skip these
layers" Edit added to that pass's options.
"""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..core import layer_surgery as core
from . import CATEGORY
from ._internals import quant
from ._internals import patching
from ._internals.sampling import calc_cond_batch, percent_to_sigma

SUBCATEGORY = f"{CATEGORY}/layer surgery"
WRAPPER_KEY = "zimage_lab_surgery"


def surgery_wrapper(executor, x, t, *args, **kwargs):
    """apply_model wrapper: run this call with the DiT's blocks edited as the active Edits say."""
    edits = patching.apply_model_options(args, kwargs).get(core.OPTIONS_KEY, ())
    if not edits:
        return executor(x, t, *args, **kwargs)
    base = executor.class_obj
    dit = base.diffusion_model
    counts = {g: len(getattr(dit, g)) for g in core.GROUPS}
    plans = core.plan_all(edits, counts, float(t.flatten()[0]), percent_to_sigma(base))
    if not plans:
        return executor(x, t, *args, **kwargs)
    with core.swapped(dit, plans):
        return executor(x, t, *args, **kwargs)


def block_count(model, group: str) -> int:
    """How many blocks this MODEL's DiT has in a group (read from the model, not assumed)."""
    try:
        return len(model.get_model_object(f"diffusion_model.{group}"))
    except AttributeError:
        raise ValueError(f"model has no diffusion_model.{group}: these nodes need a Z-Image (NextDiT) model "
                         "from UNETLoader z_image_turbo_bf16.safetensors.") from None


def patched_clone(model, edits=()):
    """A clone of MODEL with the surgery wrapper installed (once) and these Edits appended."""
    m = model.clone()
    patching.add_wrapper_once(m, patching.APPLY_MODEL, WRAPPER_KEY, surgery_wrapper)
    if edits:
        m.model_options["transformer_options"] = core.with_edits(m.model_options.get("transformer_options", {}), edits)
    return m


def percent_inputs(start: float, end: float, what: str):
    return [
        io.Float.Input("start_percent", default=start, min=0.0, max=1.0, step=0.01,
                       tooltip=f"Where in the schedule {what} starts: 0.0 = the first step (sigma 1), 1.0 = the end. "
                               "Converted to sigma with the model's percent_to_sigma when sampling."),
        io.Float.Input("end_percent", default=end, min=0.0, max=1.0, step=0.01,
                       tooltip=f"Where in the schedule {what} ends (inclusive); must not be before start_percent."),
    ]


def report(node: str, settings: dict, edits, lines: str):
    """(info JSON, ui text) of what a surgery node did."""
    info = {"node": node, **settings, "edits": [e.to_json() for e in edits]}
    return json.dumps(info), {"text": [lines]}


class SkipLayerGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSkipLayerGuidance",
            display_name="Z-Image Skip-Layer Guidance",
            category=SUBCATEGORY,
            description=(
                "Skip-layer guidance that works on Z-Image (ComfyUI's SkipLayerGuidanceDiT has no effect on NextDiT). "
                "Inside the window every step also runs the model with the chosen main layers skipped and returns "
                "guided + scale * (cond - cond_skipped); outside it no extra pass runs. Works at cfg 1 (guided = cond) "
                "and with real CFG. Scale 0 = the stock model. Research preset: layers 7-12, scale 2.5, 5%-50%."
            ),
            search_aliases=["slg", "skip layer guidance", "z-image slg", "perturbed guidance"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image model to guide (it is cloned, never changed)."),
                io.String.Input("layers", default=core.SLG_PRESET["layers"],
                                tooltip="Main layers skipped in the guidance pass: indices and inclusive ranges over "
                                        "the model's layers (30 for Z-Image, 0-29), e.g. '7-12' or '7, 9, 11'."),
                io.Float.Input("scale", default=core.SLG_PRESET["scale"], min=0.0, max=20.0, step=0.1, round=0.001,
                               tooltip="Guidance strength: adds scale * (cond - cond_skipped). 0 = off (stock model); "
                                       "2.5 is the research preset; large values oversharpen."),
                *percent_inputs(core.SLG_PRESET["start_percent"], core.SLG_PRESET["end_percent"], "guidance"),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="A clone of the model with skip-layer guidance."),
                io.String.Output("info", tooltip="JSON record of the settings, for reproducing the image."),
            ],
        )

    @classmethod
    def execute(cls, model, layers, scale, start_percent, end_percent) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Skip-Layer Guidance")
        skip = core.parse_layer_set(layers, block_count(model, "layers"), "layers")
        core.validate_window(start_percent, end_percent)
        if scale < 0 or scale != scale:
            raise ValueError(f"scale is {scale}: it must be >= 0 (0 = off).")
        if not skip and scale != 0:
            raise ValueError(f"layers is empty but scale is {scale}: name the main layers to skip in the guidance pass "
                             "(e.g. '7-12'), or set scale to 0 to turn guidance off.")
        skip_edit = core.Edit("layers", scales=tuple((i, 0.0) for i in skip), source="ZImageLabSkipLayerGuidance")

        def post_cfg(args):
            guided = args["denoised"]
            sigma = args["sigma"]
            model_ = args["model"]
            if scale == 0 or not core.in_window(float(sigma.flatten()[0]), start_percent, end_percent,
                                                model_.model_sampling.percent_to_sigma):
                return guided
            options = dict(args["model_options"])
            options["transformer_options"] = core.with_edits(options.get("transformer_options", {}), [skip_edit])
            (cond_skipped,) = calc_cond_batch(model_, [args["cond"]], args["input"], sigma, options)
            return core.guide(guided, args["cond_denoised"], cond_skipped, scale)

        m = patched_clone(model)
        m.set_model_sampler_post_cfg_function(post_cfg)
        settings = {"layers": skip, "scale": scale, "start_percent": start_percent, "end_percent": end_percent}
        text = (f"SLG: layers {', '.join(map(str, skip)) or 'none'} skipped in the guidance pass, scale {scale:g}, "
                f"{start_percent:.0%}-{end_percent:.0%} of the schedule" if scale else "SLG off (scale 0): stock model")
        info, ui = report("ZImageLabSkipLayerGuidance", settings, [], text)
        return io.NodeOutput(m, info, ui=ui)


class RefinerAblation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        blocks_tip = ("Which {r} blocks run, in order: 'all' (stock), 'none' (skip the {r} entirely), or indices "
                      "like '1' (only block 1), '1, 0' (reversed) or '0, 0, 1, 1' (each twice).")
        scales_tip = ("Factor on each {r} block's residual update, x + f * (block(x) - x): one number for every "
                      "block or one per block ('1.0, 0.5'). 1 = stock, 0 = skip that block.")
        return io.Schema(
            node_id="ZImageLabRefinerAblation",
            display_name="Z-Image Refiner Ablation",
            category=SUBCATEGORY,
            description=(
                "Ablates Z-Image's refiners: the context refiner (2 blocks on the caption) and, separately, the noise "
                "refiner (2 blocks on the image tokens). Skip one entirely, run only chosen blocks, repeat or reorder "
                "blocks, or scale each block's residual update. Defaults (all blocks once, factor 1) = the stock model."
            ),
            search_aliases=["context refiner", "noise refiner", "refiner skip", "ablation"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image model to ablate (it is cloned, never changed)."),
                io.String.Input("context_blocks", default="all", tooltip=blocks_tip.format(r="context-refiner")),
                io.String.Input("context_scales", default="1.0", tooltip=scales_tip.format(r="context-refiner")),
                io.String.Input("noise_blocks", default="all", tooltip=blocks_tip.format(r="noise-refiner")),
                io.String.Input("noise_scales", default="1.0", tooltip=scales_tip.format(r="noise-refiner")),
                *percent_inputs(0.0, 1.0, "the ablation"),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="A clone of the model with the refiners ablated."),
                io.String.Output("info", tooltip="JSON record of the ablation, for reproducing the image."),
            ],
        )

    @classmethod
    def execute(cls, model, context_blocks, context_scales, noise_blocks, noise_scales, start_percent,
                end_percent) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Refiner Ablation")
        core.validate_window(start_percent, end_percent)
        edits = []
        for group, blocks, scales, prefix in (("context_refiner", context_blocks, context_scales, "context"),
                                               ("noise_refiner", noise_blocks, noise_scales, "noise")):
            count = block_count(model, group)
            order = core.parse_block_order(blocks, count, f"{prefix}_blocks", core.GROUP_NAMES[group])
            factors = core.parse_scales(scales, count, f"{prefix}_scales")
            edit = core.Edit(group, order=None if order == tuple(range(count)) else order,
                             scales=tuple((i, f) for i, f in enumerate(factors) if f != 1.0),
                             start_percent=start_percent, end_percent=end_percent, source="ZImageLabRefinerAblation")
            if not edit.is_identity():
                edits.append(edit)
        m = patched_clone(model, edits) if edits else model.clone()
        settings = {"context_blocks": context_blocks, "context_scales": context_scales, "noise_blocks": noise_blocks,
                    "noise_scales": noise_scales, "start_percent": start_percent, "end_percent": end_percent}
        info, ui = report("ZImageLabRefinerAblation", settings, edits, core.describe(edits))
        return io.NodeOutput(m, info, ui=ui)


class LayerAblation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabLayerAblation",
            display_name="Z-Image Layer Ablation",
            category=SUBCATEGORY,
            description=(
                "Skips a set of Z-Image's main layers (scale 0) or scales their residual updates, "
                "x + scale * (layer(x) - x), for the whole schedule or a window: the probe for what each layer does. "
                "No layers (or scale 1) = the stock model. Sweep 'layers' over 0-29 to map them."
            ),
            search_aliases=["skip layers", "layer skip", "ablation", "layer sweep"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image model to ablate (it is cloned, never changed)."),
                io.String.Input("layers", default="",
                                tooltip="Main layers to ablate: indices and inclusive ranges over the model's layers "
                                        "(30 for Z-Image, 0-29), e.g. '12' or '7-12, 20'. Empty = no ablation."),
                io.Float.Input("scale", default=0.0, min=-10.0, max=10.0, step=0.05, round=0.001,
                               tooltip="Factor on the chosen layers' residual updates: 0 = skip them (not run at all), "
                                       "1 = unchanged, 0.5 = half their update, 2 = double it."),
                *percent_inputs(0.0, 1.0, "the ablation"),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="A clone of the model with the layers ablated."),
                io.String.Output("info", tooltip="JSON record of the ablation, for reproducing the image."),
            ],
        )

    @classmethod
    def execute(cls, model, layers, scale, start_percent, end_percent) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Layer Ablation")
        chosen = core.parse_layer_set(layers, block_count(model, "layers"), "layers")
        core.validate_window(start_percent, end_percent)
        if scale != scale or abs(scale) == float("inf"):
            raise ValueError(f"scale is {scale}: it must be a finite number (0 = skip, 1 = unchanged).")
        edit = core.Edit("layers", scales=tuple((i, float(scale)) for i in chosen), start_percent=start_percent,
                         end_percent=end_percent, source="ZImageLabLayerAblation")
        edits = [] if edit.is_identity() else [edit]
        m = patched_clone(model, edits) if edits else model.clone()
        settings = {"layers": chosen, "scale": scale, "start_percent": start_percent, "end_percent": end_percent}
        info, ui = report("ZImageLabLayerAblation", settings, edits, core.describe(edits))
        return io.NodeOutput(m, info, ui=ui)


NODES = [SkipLayerGuidance, RefinerAblation, LayerAblation]
