"""NextDiT (``comfy/ldm/lumina/model.py``) pieces the pack runs itself: caption refinement, image
RoPE, and the parts of ``JointAttention`` / ``JointTransformerBlock`` forwards that NAG splits open.
"""

from __future__ import annotations

import comfy.ldm.common_dit
import comfy.ldm.modules.attention
import comfy.model_management as mm
import comfy.ops
import comfy.quant_ops  # comfy-kitchen as ``ck`` where it imports (0.18.1 and 0.30.2 both try)
import torch
from comfy.ldm.flux.math import apply_rope
from comfy.ldm.lumina.model import apply_gate, clamp_fp16, modulate, optimized_attention_masked, pos_ids_x

from ...core.refined_steering import padded_length
from . import models


def refine_captions(model, hidden: torch.Tensor) -> torch.Tensor:
    """Caption tokens as the main layers see them: cap_embedder, pad to 32 with cap_pad_token, context refiner.

    Runs the model's own ``NextDiT.embed_cap`` and ``context_refiner`` blocks (the calls of
    ``NextDiT.patchify_and_embed``) on one encoded prompt; returns float32 [1, padded length, DiT
    width]. Checked: 0.18.1, 0.30.2.
    """
    models.load_models([model])
    dm = model.model.diffusion_model
    dtype = model.model.get_dtype_inference()
    device = model.load_device
    context = models.cast_to_device(hidden, device, dtype)
    with torch.no_grad():
        embeds, freqs, _ = dm.embed_cap(context, offset=0, bsz=1, device=device, dtype=dtype)
        caption = embeds[0]
        for block in dm.context_refiner:
            caption = block(caption, None, freqs[0], transformer_options={})
    return caption.float().cpu()


def embed_refined_caption(dm, caption: torch.Tensor, x: torch.Tensor, options: dict) -> tuple:
    """(refined caption [1, L_pad, dim], its RoPE) for one caption, as ``NextDiT.embed_cap`` +
    ``context_refiner`` make them inside ``patchify_and_embed``. Checked: 0.18.1, 0.30.2."""
    embeds, freqs, _ = dm.embed_cap(caption, offset=0, bsz=1, device=x.device, dtype=x.dtype)
    refined = embeds[0]
    for block in dm.context_refiner:
        refined = block(refined, None, freqs[0], transformer_options=options)
    return refined, freqs[0]


def image_rope(dm, x: torch.Tensor, caption_len: int, options: dict) -> tuple:
    """(padded image token count, RoPE of the image tokens) when the padded caption has caption_len tokens.

    Position ids exactly as ``NextDiT.embed_all`` makes them: ``pad_to_patch_size``, ``pos_ids_x``
    with axis 0 = caption_len + 1 (rope_options honoured), zero ids for the pad tokens. Checked:
    0.18.1, 0.30.2.
    """
    p = dm.patch_size
    padded = comfy.ldm.common_dit.pad_to_patch_size(x, (p, p))
    h_tokens, w_tokens = padded.shape[-2] // p, padded.shape[-1] // p
    img_len = padded_length(h_tokens * w_tokens, dm.pad_tokens_multiple)
    img_ids = pos_ids_x(caption_len + 1, h_tokens, w_tokens, 1, x.device, transformer_options=options)
    img_ids = torch.nn.functional.pad(img_ids, (0, 0, 0, img_len - h_tokens * w_tokens))
    return img_len, dm.rope_embedder(img_ids).movedim(1, 2)


def project_qkv(attention, h):
    """q, k, v of ``JointAttention.forward`` straight from ``qkv``: [B, L, heads, head_dim], before q/k norm and RoPE.

    Mirrors the split and views at the top of ``comfy/ldm/lumina/model.py`` ``JointAttention.forward``
    (0.18.1, 0.30.2, 0.36-0.38). Checked: 0.18.1, 0.30.2.
    """
    bsz, seqlen, _ = h.shape
    q, k, v = torch.split(attention.qkv(h), [attention.n_local_heads * attention.head_dim,
                                             attention.n_local_kv_heads * attention.head_dim,
                                             attention.n_local_kv_heads * attention.head_dim], dim=-1)
    return (q.view(bsz, seqlen, attention.n_local_heads, attention.head_dim),
            k.view(bsz, seqlen, attention.n_local_kv_heads, attention.head_dim),
            v.view(bsz, seqlen, attention.n_local_kv_heads, attention.head_dim))


def fused_qk_norm_rope(attention) -> bool:
    """Whether the running ``JointAttention.forward`` norms q/k and applies RoPE in comfy-kitchen's fused kernel.

    0.30.2 (and 0.36-0.38) store ``self.qk_norm`` on the module and, when it is set and
    ``comfy.model_management.in_training`` is not, call ``comfy.quant_ops.ck.rms_rope`` (``rms_rope1`` for
    GQA); 0.18.1 has no such attribute and always runs ``q_norm`` / ``k_norm`` then ``apply_rope``.
    Feature-detected: the module attribute and the kernel. Checked: 0.18.1, 0.30.2.
    """
    ck = getattr(comfy.quant_ops, "ck", None)
    return (bool(getattr(attention, "qk_norm", False)) and not mm.in_training
            and ck is not None and hasattr(ck, "rms_rope") and hasattr(ck, "rms_rope1"))


def stock_qk_eps(attention) -> tuple:
    """(q epsilon, k epsilon) of the running ComfyUI's q/k RMSNorm: on the fused path (0.30.2+) both are
    ``q_norm.eps`` or float32's epsilon when that is None; on the module path (0.18.1) each norm's own ``eps``
    (None: ``torch.nn.RMSNorm``'s default). Checked: 0.18.1, 0.30.2."""
    if fused_qk_norm_rope(attention):
        eps = attention.q_norm.eps if attention.q_norm.eps is not None else torch.finfo(torch.float32).eps
        return eps, eps
    return getattr(attention.q_norm, "eps", None), getattr(attention.k_norm, "eps", None)


def stock_qk_norm_rope(attention, xq, xk, freqs_cis):
    """q/k RMS norm + RoPE exactly as the running ``JointAttention.forward`` does them ([B, L, heads, head_dim]).

    Mirrors ``comfy/ldm/lumina/model.py`` ``JointAttention.forward``: on 0.30.2 (and 0.36-0.38) with
    ``qk_norm`` and not in training, ``comfy.ops.cast_bias_weight`` of the norm weights and
    ``comfy.quant_ops.ck.rms_rope`` (``rms_rope1`` each for GQA) with epsilon ``q_norm.eps`` or float32's;
    otherwise (0.18.1, training) ``q_norm`` / ``k_norm`` and ``comfy/ldm/flux/math.py`` ``apply_rope``.
    Checked: 0.18.1, 0.30.2 (0.36-0.38 read: the same branch).
    """
    if not fused_qk_norm_rope(attention):
        return apply_rope(attention.q_norm(xq), attention.k_norm(xk), freqs_cis)
    ck = comfy.quant_ops.ck
    q_scale, _, q_stream = comfy.ops.cast_bias_weight(attention.q_norm, xq, offloadable=True)
    k_scale, _, k_stream = comfy.ops.cast_bias_weight(attention.k_norm, xk, offloadable=True)
    epsilon = stock_qk_eps(attention)[0]
    if attention.n_local_heads == attention.n_local_kv_heads:
        xq, xk = ck.rms_rope(xq, xk, freqs_cis, q_scale, k_scale, epsilon)
    else:
        xq = ck.rms_rope1(xq, freqs_cis, q_scale, epsilon)
        xk = ck.rms_rope1(xk, freqs_cis, k_scale, epsilon)
    comfy.ops.uncast_bias_weight(attention.q_norm, q_scale, None, q_stream)
    comfy.ops.uncast_bias_weight(attention.k_norm, k_scale, None, k_stream)
    return xq, xk


def stock_attention(attention, q, k, v, mask, options):
    """``JointAttention.forward`` after q/k norm + RoPE, before ``out``: GQA repeat and the attention call.

    0.18.1 / 0.30.2 repeat k/v when ``n_rep >= 1`` and call ``optimized_attention_masked(..., skip_reshape=True,
    transformer_options=...)``; 0.36-0.38 (feature: ``attention.comfy_attention``) repeat when ``n_rep > 1``,
    wrap q/k/v in ``AttentionTensorContainer`` and pass ``preferred_attention=attention.comfy_attention``.
    Checked: 0.18.1, 0.30.2 (0.36-0.38 read).
    """
    preferred = getattr(attention, "comfy_attention", None)
    n_rep = attention.n_local_heads // attention.n_local_kv_heads
    if n_rep > 1 or (n_rep == 1 and preferred is None):
        k = k.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        v = v.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
    q, k, v = q.movedim(1, 2), k.movedim(1, 2), v.movedim(1, 2)
    if preferred is None:
        return optimized_attention_masked(q, k, v, attention.n_local_heads, mask, skip_reshape=True,
                                          transformer_options=options)
    container = comfy.ldm.modules.attention.AttentionTensorContainer
    return optimized_attention_masked(container(q), container(k), container(v), attention.n_local_heads, mask,
                                      skip_reshape=True, transformer_options=options, preferred_attention=preferred)


def attend(attention, q, k, v, freqs, mask, options):
    """``JointAttention.forward`` from the raw q, k, v of :func:`project_qkv` to the input of ``out``:
    the running version's q/k norm + RoPE (:func:`stock_qk_norm_rope`), then :func:`stock_attention`."""
    q, k = stock_qk_norm_rope(attention, q, k, freqs)
    return stock_attention(attention, q, k, v, mask, options)


def modulated_input(block, x, scale_msa):
    """``JointTransformerBlock.forward``'s attention input: ``modulate(attention_norm1(x), scale_msa)``."""
    return modulate(block.attention_norm1(x), scale_msa)


def residual_update(block, x, z, gate_msa, scale_mlp, gate_mlp):
    """The rest of ``JointTransformerBlock.forward`` after attention: output projection, gates, feed-forward.
    Checked: 0.18.1, 0.30.2."""
    x = x + apply_gate(gate_msa.unsqueeze(1).tanh(), block.attention_norm2(clamp_fp16(block.attention.out(z))))
    return x + apply_gate(gate_mlp.unsqueeze(1).tanh(), block.ffn_norm2(
        clamp_fp16(block.feed_forward(modulate(block.ffn_norm1(x), scale_mlp)))))


def sdpa_attention(*args, **kwargs):
    """ComfyUI's PyTorch-SDPA attention (``comfy/ldm/modules/attention.py`` ``attention_pytorch``), which has a
    backward pass where sage / flash attention may not. Checked: 0.18.1, 0.30.2."""
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)
