"""Seed variance for Z-Image-Turbo: make different seeds give different images (no ComfyUI import).

Z-Image-Turbo was distilled to 8 steps and settles on nearly one composition per prompt: a new
seed changes details, not the layout. The composition is decided in the first, high-noise steps,
so every technique here acts on those steps only and leaves the rest of the schedule stock:

- caption noise: seeded Gaussian noise on the caption's content tokens (the chat-template tokens
  are protected), on a chosen fraction of the values, in Qwen3 space (the hidden states the DiT
  reads) or in refined-caption space (after the context refiner). Its size is relative: ``strength``
  times the per-channel RMS of that row's content tokens, so it means the same in both spaces
  (Qwen3's few huge-magnitude channels get proportionally large noise, quiet channels small).
- initial-noise structure: the starting noise n gets a smooth (low-frequency) Gaussian field L,
  drawn on a coarse grid and upsampled, mixed at constant variance: n' = (n + s L) / sqrt(1 + s^2).
  The composition lives at low frequencies; Turbo's sampler sees n' as ordinary unit noise.
- early-step variation: for the first k steps each seed gets its own flow shift (the model is
  told the noise level of shift * f, f = exp(s u)) or its own guidance scale (cfg + s u), with u
  uniform in [-1, 1].

Randomness is per batch row: a row's seed is a hash of (technique, sampler seed, the node's own
seed, row), drawn with a CPU torch.Generator, so the same seed and settings give the same bytes
on any device, and rows of one batch differ as separate seeds do. Strength 0 returns the input
tensor itself: the stock result, bit for bit.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

SPACES = ("qwen3", "refined")
EARLY_MODES = ("shift", "guidance")
SALTS = {"caption": "caption-noise", "initial": "initial-noise", "early": "early-steps"}


def row_seed(salt: str, sampler_seed: int | None, seed: int, row: int) -> int:
    """A 63-bit seed for one batch row, fixed by (technique, sampler seed, own seed, row)."""
    text = f"zimage-lab/{salt}/{int(sampler_seed or 0)}/{int(seed)}/{int(row)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: the same numbers on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def uniform_signed(seed: int) -> float:
    """One number uniform in [-1, 1) for a row seed."""
    return float(torch.rand((), generator=generator(seed), dtype=torch.float64)) * 2.0 - 1.0


def validate(strength: float, fraction: float = 1.0, steps: int = 1) -> None:
    """Raise ValueError naming the setting when it is out of range."""
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength is {strength}: use 0 (off, the stock result) or more")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction is {fraction}: the share of values that get noise lies in [0, 1]")
    if steps < 0:
        raise ValueError(f"steps is {steps}: the number of early steps is 0 or more")


# ----------------------------------------------------------------------------------- caption noise


def content_rms(tokens: torch.Tensor) -> torch.Tensor:
    """Per-channel root mean square over the tokens of a [tokens, width] matrix -> [width]."""
    return tokens.float().pow(2).mean(dim=0).sqrt()


def row_caption_noise(content: torch.Tensor, strength: float, fraction: float, seed: int) -> torch.Tensor:
    """The noise added to one row's content tokens [n, width]: N(0,1) * strength * RMS, on a fraction of values."""
    g = generator(seed)
    noise = torch.randn(content.shape, generator=g, dtype=torch.float32)
    keep = torch.rand(content.shape, generator=g, dtype=torch.float32) < fraction
    return noise * keep * (strength * content_rms(content.detach().cpu()))


def add_caption_noise(tokens: torch.Tensor, span: tuple[int, int], rows: list[int | None], strength: float,
                      fraction: float) -> torch.Tensor:
    """tokens [B, L, W] with seeded noise on positions [start, end) of every row whose seed is not None.

    ``rows[b]`` is row b's seed (None: leave the row, e.g. an unconditional row). Strength or
    fraction 0, or an empty span, return ``tokens`` itself.
    """
    start, end = max(0, span[0]), min(tokens.shape[1], span[1])
    if strength == 0 or fraction == 0 or end <= start or all(r is None for r in rows):
        return tokens
    out = tokens.clone()
    for b, seed in enumerate(rows):
        if seed is None:
            continue
        content = tokens[b, start:end]
        noise = row_caption_noise(content, strength, fraction, seed)
        out[b, start:end] = (content.float() + noise.to(content.device)).to(tokens.dtype)
    return out


# --------------------------------------------------------------------------- initial-noise structure


def low_frequency_field(shape: tuple[int, ...], scale: int, seed: int) -> torch.Tensor:
    """A smooth unit-variance Gaussian field [C, H, W]: noise on a grid of cells of `scale` latent pixels, upsampled bicubically."""
    channels, height, width = shape
    coarse = torch.randn(1, channels, max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale)),
                         generator=generator(seed), dtype=torch.float32)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    field = field - field.mean(dim=(1, 2), keepdim=True)
    return field / field.std().clamp_min(1e-12)


def structure_noise(noise: torch.Tensor, seeds: list[int], strength: float, scale: int) -> torch.Tensor:
    """(n + s L_row) / sqrt(1 + s^2) for each batch row of the starting noise [B, C, H, W]; s = 0 returns n itself."""
    if strength == 0:
        return noise
    if noise.ndim != 4:
        raise ValueError(f"the starting noise has shape {tuple(noise.shape)}: initial-noise structure works on image "
                         "latents [batch, channels, height, width]")
    if scale < 1:
        raise ValueError(f"scale is {scale}: the low-frequency cell size is at least 1 latent pixel")
    fields = torch.stack([low_frequency_field(tuple(noise.shape[1:]), scale, s) for s in seeds])
    mixed = (noise.float().cpu() + strength * fields) / math.sqrt(1.0 + strength * strength)
    return mixed.to(device=noise.device, dtype=noise.dtype)


# ------------------------------------------------------------------------------- early-step variation


def shift_sigma(sigma: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """The flow shift applied on top of a shifted sigma: f s / (1 + (f - 1) s) (shifts compose by multiplying)."""
    return factor * sigma / (1.0 + (factor - 1.0) * sigma)


def shift_factors(seeds: list[int], strength: float) -> torch.Tensor:
    """Per row a shift multiplier exp(strength * u), u uniform in [-1, 1): float64 [B]."""
    return torch.tensor([math.exp(strength * uniform_signed(s)) for s in seeds], dtype=torch.float64)


def guidance_scales(seeds: list[int], cfg: float, strength: float) -> torch.Tensor:
    """Per row a guidance scale cfg + strength * u, u uniform in [-1, 1): float64 [B]."""
    return torch.tensor([cfg + strength * uniform_signed(s) for s in seeds], dtype=torch.float64)


def window_floor(sample_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Evaluations at sigma > this value lie in the first `steps` steps of the schedule being sampled."""
    last = sample_sigmas.shape[-1] - 1
    return sample_sigmas[min(int(steps), last)] if steps > 0 else sample_sigmas[0] + 1.0


def in_window(sigma: torch.Tensor, sample_sigmas: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Bool tensor (per row of sigma): does this evaluation lie in the first `steps` steps? (no host sync)"""
    if sample_sigmas is None:
        return torch.zeros_like(sigma, dtype=torch.bool)
    floor = window_floor(sample_sigmas.to(sigma.device), steps)
    return sigma > floor.to(sigma.dtype)


def describe(technique: str, **settings) -> str:
    """One line for the node's UI text and the sweep's records."""
    return technique + ": " + ", ".join(f"{k} {v}" for k, v in settings.items())
