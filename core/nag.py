"""Normalized Attention Guidance (NAG, arXiv 2505.21179) for Z-Image's [caption, image] sequence.

NAG makes a negative prompt work without CFG: in every attention layer the image tokens attend
once with the positive caption (Z+) and once with the negative caption (Z-), and their attention
output is extrapolated away from the negative, capped and blended (per token, over channels):

    Z~ = phi * Z+ - (phi - 1) * Z-              (= Z+ + (phi - 1)(Z+ - Z-); phi = 1 gives Z+)
    r  = |Z~|_1 / |Z+|_1                        (L1 norms, as in the paper and its reference code)
    Z^ = Z~ * min(r, tau) / r                   (the extrapolation may grow the norm by at most tau)
    Z  = alpha * Z^ + (1 - alpha) * Z+

ComfyUI's NextDiT runs one joint sequence per image, caption first: ``[caption (padded to 32),
image (padded to 32)]``. The image tokens are therefore the LAST ``img_len`` positions; slicing
the first ``img_len`` (as ports written for image-first models do) guides the caption instead.
Of those, only the first ``h * w`` are patches of the image: the rest are the learned
``x_pad_token`` rows that fill the sequence to a multiple of 32. They are dropped at the end but
attended in every layer, so NAG leaves them as the positive pass computes them (guide_image).
"""

from __future__ import annotations

import torch

EPS = 1e-6


def nag_guidance(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """NAG-guided attention output from positive and negative outputs of the same queries (float32 maths)."""
    pos, neg = z_pos.float(), z_neg.float()
    guided = pos * scale - neg * (scale - 1.0)
    norm_pos = pos.norm(p=1, dim=-1, keepdim=True).clamp_min(EPS)
    norm_guided = guided.norm(p=1, dim=-1, keepdim=True).clamp_min(EPS)
    ratio = norm_guided / norm_pos
    guided = guided * (ratio.clamp(max=tau) / ratio)
    return (guided * alpha + pos * (1.0 - alpha)).to(z_pos.dtype)


def image_patches(height: int, width: int, patch: int) -> int:
    """Patches of a latent of this size (NextDiT pads it up to a multiple of the patch size first)."""
    return -(-height // patch) * -(-width // patch)


def guide_image(z_img: torch.Tensor, z_neg_img: torch.Tensor, rows: torch.Tensor, patches: int, scale: float,
                tau: float, alpha: float) -> torch.Tensor:
    """NAG on the first ``patches`` image tokens of the guided rows; padding tokens and other rows keep Z+."""
    if not 0 < patches <= z_img.shape[1]:
        raise ValueError(f"{patches} image patches do not fit {z_img.shape[1]} image tokens")
    guided = nag_guidance(z_img[:, :patches], z_neg_img[:, :patches], scale, tau, alpha)
    guided = torch.cat((guided, z_img[:, patches:]), dim=1)
    return torch.where(rows.to(z_img.device)[:, None, None], guided, z_img)


def image_tokens(sequence: torch.Tensor, img_len: int) -> torch.Tensor:
    """The image part of a [batch, caption + image, ...] sequence: its last img_len positions."""
    if not 0 < img_len <= sequence.shape[1]:
        raise ValueError(f"image length {img_len} does not fit a sequence of {sequence.shape[1]} tokens")
    return sequence[:, sequence.shape[1] - img_len:]


def caption_tokens(sequence: torch.Tensor, img_len: int) -> torch.Tensor:
    """The caption part of a [batch, caption + image, ...] sequence: everything before the image."""
    return sequence[:, :sequence.shape[1] - img_len]


def validate(scale: float, tau: float, alpha: float, end_sigma: float) -> None:
    """ValueError naming the setting when NAG's parameters make no sense."""
    if not scale >= 1.0:
        raise ValueError(f"scale is {scale}: NAG needs scale >= 1 (1 disables it; 3-7 is typical)")
    if not tau >= 1.0:
        raise ValueError(f"tau is {tau}: the norm-ratio cap must be >= 1 (2.5 is typical)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is {alpha}: the blend must be in [0, 1] (0.25 is typical)")
    if not end_sigma >= 0.0:
        raise ValueError(f"end_sigma is {end_sigma}: it must be >= 0 (0 guides every step)")
