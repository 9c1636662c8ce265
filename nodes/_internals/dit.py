"""NextDiT (``comfy/ldm/lumina/model.py``) pieces the pack runs itself: caption refinement, image
RoPE, and the parts of ``JointAttention`` / ``JointTransformerBlock`` forwards that NAG splits open.
"""

from __future__ import annotations

import comfy.ldm.common_dit
import comfy.ldm.modules.attention
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
    """q, k, v of ``JointAttention.forward`` before RoPE: [B, L, heads, head_dim] (q/k RMS-normed)."""
    bsz, seqlen, _ = h.shape
    q, k, v = torch.split(attention.qkv(h), [attention.n_local_heads * attention.head_dim,
                                             attention.n_local_kv_heads * attention.head_dim,
                                             attention.n_local_kv_heads * attention.head_dim], dim=-1)
    q = attention.q_norm(q.view(bsz, seqlen, attention.n_local_heads, attention.head_dim))
    k = attention.k_norm(k.view(bsz, seqlen, attention.n_local_kv_heads, attention.head_dim))
    return q, k, v.view(bsz, seqlen, attention.n_local_kv_heads, attention.head_dim)


def attend(attention, q, k, v, freqs, mask, options):
    """``JointAttention.forward`` after the projections: RoPE, GQA repeat, attention (before ``out``)."""
    q, k = apply_rope(q, k, freqs)
    n_rep = attention.n_local_heads // attention.n_local_kv_heads
    if n_rep >= 1:
        k = k.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        v = v.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
    return optimized_attention_masked(q.movedim(1, 2), k.movedim(1, 2), v.movedim(1, 2), attention.n_local_heads,
                                      mask, skip_reshape=True, transformer_options=options)


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
