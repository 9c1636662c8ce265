"""Z-Image RoPE Extend: rescale the text axis of the DiT's RoPE for captions past the trained length."""

from __future__ import annotations

from comfy_api.latest import io

from ..core import rope as core
from ._internals import quant
from . import CATEGORY

SCALE_MODES = ("fit to prompt", "factor")


def rope_parts(model):
    """The DiT's rope embedder (object patches considered) and its axes / theta; ValueError if not Z-Image."""
    try:
        embedder = model.get_model_object("diffusion_model.rope_embedder")
    except AttributeError:
        embedder = None
    axes_dim = getattr(embedder, "axes_dim", None)
    theta = getattr(embedder, "theta", None)
    if embedder is None or axes_dim is None or theta is None or len(axes_dim) != 3:
        raise ValueError("model is not a Z-Image (NextDiT) diffusion model: it has no 3-axis rope_embedder. "
                         "Connect the MODEL from UNETLoader z_image_turbo_bf16.safetensors.")
    return embedder, list(axes_dim), float(theta)


def extend_rope(model, method, scale_mode, factor, trained_length, beta_fast=32.0, beta_slow=1.0,
                yarn_attention="all dims"):
    """A clone of MODEL whose rope embedder rescales axis 0 (validated before anything is cloned)."""
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode is {scale_mode!r}: choose one of {', '.join(SCALE_MODES)}")
    fixed = float(factor) if scale_mode == "factor" else None
    core.validate(method, fixed, trained_length, beta_fast, beta_slow, yarn_attention)
    inner, axes_dim, theta = rope_parts(model)
    while isinstance(inner, core.ExtendedRoPE):  # a second extender replaces the first instead of stacking on it
        inner = inner.inner
    module = core.ExtendedRoPE(inner, axes_dim, theta, method, fixed, trained_length, beta_fast, beta_slow,
                               yarn_attention)
    patched = model.clone()
    patched.add_object_patch("diffusion_model.rope_embedder", module)
    if method == "yarn" and yarn_attention != "off":
        # The image-only noise refiner's context does not grow with the caption: no temperature there.
        for i in range(len(model.get_model_object("diffusion_model.noise_refiner"))):
            name = f"diffusion_model.noise_refiner.{i}"
            patched.add_object_patch(name, core.temperature_free(patched.get_model_object(name), module))
    return patched, module


class ZImageRoPEExtend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabRoPEExtend",
            display_name="Z-Image RoPE Extend (long prompts)",
            category=f"{CATEGORY}/model",
            description=(
                "Rescales the text axis (axis 0) of the DiT's rotary position embedding so captions longer than "
                "the trained 512 tokens keep positions the model knows: linear position interpolation, NTK-aware "
                "base scaling, or YaRN (per-frequency ramp + attention temperature). The image tokens move with "
                "the caption; the image row/column axes are untouched. Factor 1, or 'fit to prompt' with a "
                "caption within the trained length, leaves the model's output bit-identical."
            ),
            search_aliases=["rope", "long prompt", "yarn", "ntk", "position interpolation", "context length"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model. It is not modified: a patched clone is returned."),
                io.Combo.Input("method", options=list(core.METHODS), default="yarn",
                               tooltip="linear: positions p -> p/s. ntk: theta -> theta * s^(d/(d-2)) on the text axis. "
                                       "yarn: keeps fast frequencies, interpolates slow ones, ramps between, plus attention temperature."),
                io.Combo.Input("scale_mode", options=list(SCALE_MODES), default="fit to prompt",
                               tooltip="fit to prompt: s = max(1, padded caption length / trained_length), so short prompts are "
                                       "untouched. factor: use the factor below for every caption."),
                io.Float.Input("factor", default=2.0, min=0.0, max=64.0, step=0.05,
                               tooltip="Scale factor s for scale_mode 'factor' (must be > 0). 1.0 = unchanged; 2.0 fits a "
                                       "1024-token caption into the trained 512 positions."),
                io.Int.Input("trained_length", default=core.TRAINED_LENGTH, min=1, max=65536,
                             tooltip="Caption length the model was trained with (512 for Z-Image-Turbo)."),
                io.Float.Input("beta_fast", default=32.0, min=0.01, max=1024.0, step=0.5, optional=True,
                               tooltip="YaRN only: frequencies turning more than this many times over the trained length are kept."),
                io.Float.Input("beta_slow", default=1.0, min=0.001, max=1024.0, step=0.05, optional=True,
                               tooltip="YaRN only: frequencies turning fewer than this many times are fully interpolated."),
                io.Combo.Input("yarn_attention", options=list(core.YARN_ATTENTION), default="all dims", optional=True,
                               tooltip="YaRN only: where the temperature m = 0.1 ln(s) + 1 goes. 'all dims' scales q and k by m "
                                       "(logits by m^2, YaRN's recipe); 'text axis dims' only the 32 text-axis dims; 'off' none. The "
                                       "image-only noise refiner never gets it (its context does not grow)."),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="The patched clone."),
                io.String.Output("info", tooltip="What the extender does, in one line."),
            ],
        )

    @classmethod
    def execute(cls, model, method, scale_mode, factor, trained_length, beta_fast=32.0, beta_slow=1.0,
                yarn_attention="all dims") -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image RoPE Extend (long prompts)")
        patched, module = extend_rope(model, method, scale_mode, factor, trained_length, beta_fast, beta_slow,
                                      yarn_attention)
        info = module.describe()
        return io.NodeOutput(patched, info, ui={"text": [info]})


NODES = [ZImageRoPEExtend]
