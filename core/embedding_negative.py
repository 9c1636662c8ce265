"""Negative prompts in embedding space, for cfg 1 (no ComfyUI import).

Z-Image-Turbo samples at cfg 1, where ComfyUI never evaluates the negative. These modes move the
positive prompt's tokens away from the negative prompt instead. The negative is pooled to one
direction n (mean of its content tokens), so positive and negative may have any token counts:

- subtract:     x' = x - s * n
- orthogonal:   x' = x - s * (x . n_hat) n_hat           (s = 1: every token orthogonal to n)
- contrastive:  x' = |x| * u / |u|,  u = x/|x| - s * n_hat   (direction moves away, norm kept)

with n_hat = n / |n| and s the strength; s = 0 leaves the positive unchanged.
"""

from __future__ import annotations

import torch

MODES = ("subtract", "orthogonal", "contrastive")
SCOPES = ("all tokens", "content tokens")
EPS = 1e-12


def pooled_direction(entries: list[tuple[torch.Tensor, tuple[int, int]]]) -> torch.Tensor:
    """Mean over entries (and batch rows) of the mean of their content tokens: float32 [width]."""
    if not entries:
        raise ValueError("negative is empty: connect an encoded negative prompt")
    means = [tokens[:, start:end].float().mean(dim=1).mean(dim=0) for tokens, (start, end) in entries]
    return torch.stack(means).mean(dim=0)


def steer_away(tokens: torch.Tensor, direction: torch.Tensor, mode: str, strength: float) -> torch.Tensor:
    """Apply one mode to every token of [batch, L, width] (computed in float64, returned in tokens' dtype)."""
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}: choose one of {', '.join(MODES)}")
    x = tokens.double()
    n = direction.to(device=tokens.device, dtype=torch.float64)
    s = float(strength)
    if mode == "subtract":
        return (x - s * n).to(tokens.dtype)
    norm_n = n.norm()
    if norm_n <= EPS:
        raise ValueError("negative pools to a zero vector (a zeroed conditioning?): orthogonal and contrastive modes "
                         "need a direction; encode a negative prompt")
    n_hat = n / norm_n
    if mode == "orthogonal":
        return (x - s * (x @ n_hat)[..., None] * n_hat).to(tokens.dtype)
    norm_x = x.norm(dim=-1, keepdim=True)
    u = x / norm_x.clamp_min(EPS) - s * n_hat
    return (u / u.norm(dim=-1, keepdim=True).clamp_min(EPS) * norm_x).to(tokens.dtype)


def apply_negative(tokens: torch.Tensor, direction: torch.Tensor, mode: str, strength: float,
                   span: tuple[int, int] | None) -> torch.Tensor:
    """steer_away on all tokens (span None) or only tokens [start, end); strength 0 returns tokens itself."""
    if strength == 0.0:
        return tokens
    if direction.shape[-1] != tokens.shape[-1]:
        raise ValueError(f"negative has width {direction.shape[-1]} but positive has width {tokens.shape[-1]}: "
                         "encode both with the same text encoder")
    if span is None:
        return steer_away(tokens, direction, mode, strength)
    start, end = span
    out = tokens.clone()
    out[:, start:end] = steer_away(tokens[:, start:end], direction, mode, strength)
    return out


def cosine_to(tokens: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """cos(token, direction) for every token: [batch, L]."""
    x = tokens.double()
    n = direction.to(device=tokens.device, dtype=torch.float64)
    return (x @ n) / (x.norm(dim=-1) * n.norm()).clamp_min(EPS)
