"""Refined Steering: a MODEL patch adding alpha * v to the caption tokens leaving the context refiner."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..core import refined_steering as core
from ..core import steering as core_steering
from ._internals import quant
from ..core import validation
from ._internals import patching
from ._internals.models import check_zimage_model
from .steering import SUBCATEGORY, SteeringVectorType

STATE_KEY = "zimage_lab_refined_caption"
"""transformer_options key the wrapper sets for one model call: the caption's real token count."""


class RefinedCaptionSteering(torch.nn.Module):
    """Appended after the context refiner blocks: adds alpha * v to the refined caption of positive rows."""

    def __init__(self, vector: torch.Tensor, alpha: float, scope: str):
        super().__init__()
        self.delta = float(alpha) * vector.float()  # a plain attribute, not a buffer: no new state-dict key
        self.alpha = float(alpha)
        self.scope = scope

    def forward(self, x, x_mask=None, freqs_cis=None, transformer_options={}):
        state = transformer_options.get(STATE_KEY)
        if state is None or self.alpha == 0.0:
            return x
        tokens = state["caption_tokens"] if self.scope == "caption tokens" else None
        rows = core.cond_rows(transformer_options.get("cond_or_uncond"), x.shape[0], x.device)
        return core.steer_caption(x, self.delta, rows, tokens)


def caption_length_wrapper(executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
    """DIFFUSION_MODEL wrapper: tells the steering modules how many caption tokens are real (not padding)."""
    if kwargs.get("ref_latents"):
        raise ValueError("Refined Steering supports Z-Image text-to-image only (this call has reference latents)")
    options = dict(kwargs.get("transformer_options", {}))
    options[STATE_KEY] = {"caption_tokens": int(context.shape[1])}
    kwargs["transformer_options"] = options
    return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)


def patch_refined_steering(model, vector, alpha: float, scope: str):
    """A clone of MODEL whose context refiner output gets alpha * v; the given MODEL is not changed."""
    dm = check_zimage_model(model)
    if vector.space != "refined":
        raise ValueError(f"vector {vector.name or ''} is an {vector.space}-space vector: build it with space 'refined' "
                         "(or add it to the conditioning with Apply Steering)")
    core_steering.check_width(vector, dm.dim, "the model's refined caption")
    if scope not in core.SCOPES:
        raise ValueError(f"scope is {scope!r}: choose one of {', '.join(core.SCOPES)}")
    patched = model.clone()
    refiner = patched.get_model_object("diffusion_model.context_refiner")
    steered = torch.nn.ModuleList([*refiner, RefinedCaptionSteering(vector.vector, alpha, scope)])
    patched.add_object_patch("diffusion_model.context_refiner", steered)
    patching.add_wrapper_once(patched, patching.DIFFUSION_MODEL, STATE_KEY, caption_length_wrapper)
    return patched


class RefinedSteering(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabRefinedSteering",
            display_name="Refined Steering",
            category=SUBCATEGORY,
            description=("Patches a clone of the model so that alpha times a refined-space steering vector is added to "
                         "the caption tokens leaving the context refiner (width 3840), for the positive prompt. Image "
                         "tokens are not touched. alpha 0 gives exactly the unpatched model's output. Chain nodes to add "
                         "several vectors."),
            search_aliases=["steering", "context refiner", "caption steering"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image model to patch (a clone is patched; this one is unchanged)."),
                SteeringVectorType.Input("vector", tooltip="A refined-space vector (Build Steering Vector, space 'refined')."),
                io.Float.Input("alpha", default=1.0, min=-100.0, max=100.0, step=0.05, round=0.0001,
                               tooltip="Multiple of the vector to add; negative steers towards B. 0 changes nothing."),
                io.Combo.Input("scope", options=list(core.SCOPES), default="caption tokens",
                               tooltip="caption tokens: the caption's real tokens. caption and padding tokens: also the "
                                       "learned pad tokens that fill the caption to a multiple of 32."),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, vector, alpha, scope) -> io.NodeOutput:
        quant.check_patchable(model, "Refined Steering")
        alpha = validation.finite(alpha, "alpha", "0 changes nothing")
        patched = patch_refined_steering(model, vector, alpha, scope)
        return io.NodeOutput(patched, ui={"text": [f"refined steering {alpha:+g} x {vector.describe()} on {scope}"]})


NODES = [RefinedSteering]
