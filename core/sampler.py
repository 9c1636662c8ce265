"""Flow-matching schedule maths for Z-Image (shift, sigma schedules, settings checks).

Z-Image-Turbo samples a rectified flow x_sigma = (1 - sigma) * x0 + sigma * noise with the
time shift of SD3 / AuraFlow applied to the uniform timestep grid:

    sigma(t) = shift * t / (1 + (shift - 1) * t),   t in (0, 1]

shift > 1 spends more of the steps at high noise (composition), shift < 1 at low noise
(detail). ComfyUI's ``ModelSamplingAuraFlow`` uses this with multiplier 1.0 (the DiT is fed
t = 1 - sigma directly); the official Turbo setting is shift 3.0 with 8 steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch

LATENT_CHANNELS = 16
"""Z-Image denoises 16-channel Flux-VAE latents."""

TURBO_DEFAULTS = {"steps": 8, "shift": 3.0, "cfg": 1.0, "sampler": "res_multistep", "scheduler": "simple"}


def shifted_sigma(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Map uniform flow time t in [0, 1] to the shifted noise level sigma (SD3/AuraFlow shift)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return shift * t / (1.0 + (shift - 1.0) * t)


def simple_schedule(steps: int, shift: float, timesteps: int = 1000) -> torch.Tensor:
    """Sigmas of ComfyUI's ``simple`` scheduler on a shifted 1000-step flow table, ending at 0.

    ComfyUI tabulates sigma(i / 1000) for i = 1..1000 and the simple scheduler takes every
    (1000 / steps)-th entry counting down from sigma(1) = 1.
    """
    validate_schedule(steps, shift)
    table = shifted_sigma(torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps, shift)
    stride = timesteps / steps
    picked = [table[-(1 + int(i * stride))] for i in range(steps)]
    return torch.stack(picked + [torch.zeros((), dtype=torch.float64)])


def validate_schedule(steps: int, shift: float, denoise: float = 1.0) -> None:
    """Raise ValueError naming the setting when steps, shift or denoise cannot make a schedule."""
    if int(steps) < 1:
        raise ValueError(f"steps is {steps}: sampling needs at least 1 step (Z-Image-Turbo uses 8).")
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift is {shift}: the flow shift must be > 0 (1.0 = no shift, Z-Image-Turbo uses 3.0).")
    if not math.isfinite(denoise) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise is {denoise}: it must be in (0, 1] (1.0 = generate from pure noise).")


def validate_cfg(cfg: float) -> None:
    """Raise ValueError naming cfg when it is not a finite number (NaN would turn every latent into NaN)."""
    if not math.isfinite(cfg):
        raise ValueError(f"cfg is {cfg}: classifier-free guidance must be a finite number (1.0 for Z-Image-Turbo).")


def validate_latent(samples: torch.Tensor, name: str = "latent_image") -> None:
    """Raise ValueError unless samples is a [B, 16, H, W] Z-Image latent."""
    if samples.ndim != 4:
        raise ValueError(f"{name} has shape {tuple(samples.shape)}: Z-Image needs an image latent [batch, 16, height/8, width/8].")
    if samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"{name} has {samples.shape[1]} channels: Z-Image works on 16-channel Flux latents. "
            "Use EmptySD3LatentImage (not EmptyLatentImage), or VAEEncode with the Flux VAE ae.safetensors."
        )


@dataclass
class SamplingRecord:
    """What a sampler did, as JSON-able metadata that travels with its result."""

    node: str
    seed: int
    steps: int
    shift: float
    sampler: str
    scheduler: str
    cfg: float
    denoise: float
    sigmas: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for a STRING output or a sweep row."""
        return json.dumps(asdict(self), indent=1)


def describe_schedule(sigmas: torch.Tensor) -> str:
    """One-line human summary of a sigma schedule, for the node's UI text."""
    values = ", ".join(f"{float(s):.4f}" for s in sigmas)
    return f"{len(sigmas) - 1} steps, sigmas [{values}]"
