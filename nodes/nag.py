"""Z-Image NAG: Normalized Attention Guidance on NextDiT's single-stream blocks, as a MODEL patch.

How it runs (one model call):
1. A DIFFUSION_MODEL wrapper embeds the negative caption with the model's own embed_cap and
   context_refiner (exactly as the positive caption is made) and computes the RoPE frequencies of
   the sequence [negative caption, image] with the image at the position it would have if the
   negative were the prompt (axis 0 = padded negative length + 1, as NextDiT places it).
2. Each main layer is replaced (object patch) by a copy of itself whose class overrides forward;
   it shares every weight with the original. With the NAG state present it runs the positive
   sequence [caption, image] exactly as the stock block does, and a second attention over
   [negative caption, image] with the same image tokens; the image tokens' attention output (the
   LAST img_len positions, of which only the image patches, not the padding tokens) is guided with
   core.nag.guide_image before the output projection.
   The negative caption tokens go on through the block (attention, feed-forward) as they would in
   a run with the negative prompt, so the next layer's negative attention is what the model expects.
3. The image stream is shared: one extra attention path per layer, not a second sampling pass.
Without the state (NAG off at this sigma, or another call) the copies run the stock forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..core import nag as core
from ..core.refined_steering import cond_rows
from . import CATEGORY
from ._internals import quant
from ._internals import dit, patching
from ._internals.models import cast_to_device, check_zimage_model, unsupported_call
from .refined_steering import STATE_KEY as REFINED_STATE_KEY

NAG_KEY = "zimage_lab_nag"


@dataclass
class NAGState:
    """What the patched blocks need during one model call; `negative` advances layer by layer."""

    negative: torch.Tensor  # [B, L_neg_padded, dim]: the negative caption stream
    freqs: torch.Tensor  # RoPE of [negative caption, image]
    img_len: int
    patches: int  # the first `patches` image tokens are the image; the rest of img_len is padding
    rows: torch.Tensor  # bool [B]: rows that are guided (positive prompt)
    scale: float
    tau: float
    alpha: float


def nag_block_forward(block, state: NAGState, x, x_mask, freqs_cis, adaln_input, options):
    """One main layer with NAG: the stock computation for [caption, image], guided image attention."""
    cap_len = x.shape[1] - state.img_len
    scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(adaln_input).chunk(4, dim=1)
    h = dit.modulated_input(block, x, scale_msa)
    h_neg = dit.modulated_input(block, state.negative, scale_msa)
    q, k, v = dit.project_qkv(block.attention, h)  # raw: q/k norm + RoPE run in attend, as the running ComfyUI does
    q_n, k_n, v_n = dit.project_qkv(block.attention, h_neg)
    z = dit.attend(block.attention, q, k, v, freqs_cis, x_mask, options)
    # The negative path: queries and keys are [negative caption, the same image tokens] (norms are per token).
    z_neg = dit.attend(block.attention, torch.cat((q_n, q[:, cap_len:]), 1), torch.cat((k_n, k[:, cap_len:]), 1),
                    torch.cat((v_n, v[:, cap_len:]), 1), state.freqs, None, options)
    z_img = core.image_tokens(z, state.img_len)
    guided = core.guide_image(z_img, core.image_tokens(z_neg, state.img_len), state.rows, state.patches,
                              state.scale, state.tau, state.alpha)
    z = torch.cat((core.caption_tokens(z, state.img_len), guided), dim=1)
    state.negative = dit.residual_update(block, state.negative, core.caption_tokens(z_neg, state.img_len),
                                      gate_msa, scale_mlp, gate_mlp)
    return dit.residual_update(block, x, z, gate_msa, scale_mlp, gate_mlp)


class NAGBlockMixin:
    """Mixed into a copy of a NextDiT main layer: NAG when the call carries a NAGState, stock otherwise."""

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, timestep_zero_index=None, transformer_options={}):
        state = transformer_options.get(NAG_KEY)
        if state is None or timestep_zero_index is not None or not self.modulation:
            return super().forward(x, x_mask, freqs_cis, adaln_input, timestep_zero_index=timestep_zero_index,
                                   transformer_options=transformer_options)
        return nag_block_forward(self, state, x, x_mask, freqs_cis, adaln_input, transformer_options)


_NAG_CLASSES: dict[type, type] = {}


def nag_copy(block: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of a block with NAGBlockMixin: same submodules and weights, same module names."""
    cls = type(block)
    if cls not in _NAG_CLASSES:
        _NAG_CLASSES[cls] = type(f"ZImageLabNAG{cls.__name__}", (NAGBlockMixin, cls), {})
    patched = copy.copy(block)
    patched.__class__ = _NAG_CLASSES[cls]
    return patched


def negative_state(dm, x, context, negative, options, settings) -> NAGState:
    """Embed and refine the negative caption and build the RoPE of [negative caption, image] for this call."""
    batch = x.shape[0]
    neg = cast_to_device(negative, context.device, context.dtype)
    refiner_options = {k: v for k, v in options.items() if k not in (REFINED_STATE_KEY, NAG_KEY)}
    caption, caption_freqs = dit.embed_refined_caption(dm, neg, x, refiner_options)
    # Image positions as NextDiT.embed_all makes them when the caption is the negative.
    img_len, img_freqs = dit.image_rope(dm, x, caption.shape[1], options)
    rows = cond_rows(options.get("cond_or_uncond"), batch, x.device)
    patches = core.image_patches(x.shape[-2], x.shape[-1], dm.patch_size)
    return NAGState(caption.repeat(batch, 1, 1), torch.cat((caption_freqs, img_freqs), dim=1), img_len, patches, rows,
                    settings["scale"], settings["tau"], settings["alpha"])


def make_wrapper(negative: torch.Tensor, settings: dict):
    """DIFFUSION_MODEL wrapper that switches NAG on for calls at sigma >= end_sigma."""

    def nag_wrapper(executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        options = kwargs.get("transformer_options", {})
        sigmas = options.get("sigmas")
        if sigmas is not None and float(sigmas.max()) < settings["end_sigma"]:
            return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)
        extra = unsupported_call(kwargs)
        if extra is not None or x.ndim != 4:
            raise ValueError(f"Z-Image NAG supports text-to-image only (this call has {extra or 'a 5-D latent'}): "
                             "remove the reference / edit inputs or the NAG node")
        state = negative_state(executor.class_obj, x, context, negative, options, settings)
        kwargs["transformer_options"] = {**options, NAG_KEY: state}
        return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)

    return nag_wrapper


def install_blocks(model, layers: int, block_at) -> None:
    """Object patches: every main layer (block_at(name)) replaced by its NAG copy."""
    for i in range(layers):
        name = f"diffusion_model.layers.{i}"
        model.add_object_patch(name, nag_copy(block_at(name)))


def patch_nag(model, negative_conditioning, scale: float, tau: float, alpha: float, end_sigma: float):
    """A clone of MODEL with Z-Image NAG against this negative; scale 1 returns an unpatched clone."""
    core.validate(scale, tau, alpha, end_sigma)
    dm = check_zimage_model(model)
    if not negative_conditioning:
        raise ValueError("negative is an empty conditioning: encode a negative prompt")
    tokens = negative_conditioning[0][0]
    if tokens.ndim != 3 or tokens.shape[1] == 0:
        raise ValueError(f"negative has no tokens (shape {tuple(tokens.shape)}): encode a negative prompt")
    if tokens.shape[0] != 1:
        raise ValueError(f"negative holds {tokens.shape[0]} prompts: NAG takes one negative prompt")
    if tokens.shape[-1] != dm.cap_embedder[1].in_features:
        raise ValueError(f"negative has width {tokens.shape[-1]} but the model's caption embedder expects "
                         f"{dm.cap_embedder[1].in_features}: encode it with this model's text encoder")
    if patching.has_wrapper(model, patching.DIFFUSION_MODEL, NAG_KEY):
        raise ValueError("model already has Z-Image NAG: use one NAG node per model (its negative is the one that counts)")
    patched = model.clone()
    if scale == 1.0:
        return patched
    install_blocks(patched, len(dm.layers), lambda name: patched.get_model_object(name))
    patching.rebuild_on_multigpu_clone(patched, NAG_KEY, lambda clone: install_blocks(
        clone, len(dm.layers), lambda name: patching.own_module(clone, name)))
    settings = {"scale": float(scale), "tau": float(tau), "alpha": float(alpha), "end_sigma": float(end_sigma)}
    patched.add_wrapper_with_key(patching.DIFFUSION_MODEL, NAG_KEY, make_wrapper(tokens.detach().clone(), settings))
    return patched


class ZImageNAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabNAG",
            display_name="Z-Image NAG (Normalized Attention Guidance)",
            category=f"{CATEGORY}/negative",
            description=(
                "A negative prompt at cfg 1 for Z-Image: in every main layer the image tokens also attend to the "
                "negative caption, and their attention output is pushed away from it: phi*Z+ - (phi-1)*Z-, L1 norm "
                "ratio capped at tau, blended with alpha (Normalized Attention Guidance, arXiv 2505.21179). Done for "
                "ComfyUI's [caption, image] order: the image is the last part of the sequence. Costs one extra "
                "attention path per layer. scale 1 gives the unpatched model's output; the given model is unchanged."),
            search_aliases=["nag", "negative prompt", "normalized attention guidance", "cfg 1 negative"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image model (a clone is patched)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt, encoded like the positive."),
                io.Float.Input("scale", default=5.0, min=1.0, max=50.0, step=0.1, round=0.001,
                               tooltip="phi: extrapolation away from the negative. 1 disables NAG; 3-7 is typical."),
                io.Float.Input("tau", default=2.5, min=1.0, max=20.0, step=0.05, round=0.001,
                               tooltip="Cap on |guided|_1 / |positive|_1 per token (normalisation threshold)."),
                io.Float.Input("alpha", default=0.25, min=0.0, max=1.0, step=0.01, round=0.001,
                               tooltip="Blend of the normalised guided output with the positive one (1 = all guided)."),
                io.Float.Input("end_sigma", default=0.0, min=0.0, max=1000.0, step=0.01, round=0.0001,
                               tooltip="NAG runs at steps whose sigma >= end_sigma; 0 guides every step."),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, negative, scale, tau, alpha, end_sigma) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image NAG (Normalized Attention Guidance)")
        patched = patch_nag(model, negative, scale, tau, alpha, end_sigma)
        state = "off (scale 1)" if scale == 1.0 else f"scale {scale:g}, tau {tau:g}, alpha {alpha:g}, end sigma {end_sigma:g}"
        return io.NodeOutput(patched, ui={"text": [f"Z-Image NAG {state}, negative of {negative[0][0].shape[1]} tokens"]})


NODES = [ZImageNAG]
