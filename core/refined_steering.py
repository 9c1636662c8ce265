"""Steering in Z-Image's refined caption space, after the context refiner (no ComfyUI import).

Inside the DiT, ComfyUI's NextDiT (comfy/ldm/lumina/model.py, ``patchify_and_embed``) turns the
caption into the tokens the 30 main layers read:

    c = cap_embedder(context)                    # RMSNorm + Linear, text width -> DiT width
    c = cat(c, cap_pad_token * ((-L) mod 32))    # padded to a multiple of 32 with a learned token
    for block in context_refiner: c = block(c)   # 2 blocks, no timestep, no mask: pads are attended
    sequence = cat(c, image_tokens)              # [caption, image]

Refined steering adds ``alpha * v`` to ``c`` as it leaves the last refiner block, where ``v`` is
a difference of pooled refined captions (same maths as embedding-space vectors, core.steering).
The image tokens never pass the context refiner, so they enter the main layers unchanged.
"""

from __future__ import annotations

import torch

SCOPES = ("caption tokens", "caption and padding tokens")


def padded_length(n: int, multiple: int | None) -> int:
    """Length after NextDiT pads n tokens to a multiple (pad_tokens_multiple, 32 for Z-Image)."""
    return n if not multiple else n + (-n) % multiple


def cond_rows(cond_or_uncond, batch: int, device=None) -> torch.Tensor:
    """Bool [batch]: which rows of a ComfyUI model call belong to the positive (cond) prompt.

    ComfyUI batches chunks of equal size and lists each chunk's kind in
    transformer_options["cond_or_uncond"] (0 = cond, 1 = uncond); without it every row counts as cond.
    """
    if not cond_or_uncond:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if batch % len(cond_or_uncond):
        raise ValueError(f"a batch of {batch} rows cannot hold {len(cond_or_uncond)} equal chunks")
    kinds = torch.tensor([c == 0 for c in cond_or_uncond], dtype=torch.bool, device=device)
    return kinds.repeat_interleave(batch // len(cond_or_uncond))


def steer_caption(caption: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor, tokens: int | None) -> torch.Tensor:
    """caption + delta on the chosen rows and on the first `tokens` positions (None: every position).

    Untouched entries are copied exactly (torch.where), not computed as x + 0.
    """
    batch, length, _ = caption.shape
    positions = torch.arange(length, device=caption.device) < (length if tokens is None else tokens)
    mask = rows.to(caption.device)[:, None, None] & positions[None, :, None]
    return torch.where(mask, caption + delta.to(device=caption.device, dtype=caption.dtype), caption)
