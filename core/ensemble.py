"""Multi-seed ensembles: seed lists, the prediction average, step windows, image blends.

Prediction average runs every seed as one batch row and, at each model evaluation, replaces
every row's denoised prediction (x0, after CFG) by the mean over the rows. In a flow model
x_sigma = (1 - sigma) * x0 + sigma * noise, so with a shared x0 each row keeps only its own
noise: Euler gives x_i' = (sigma'/sigma) x_i + (1 - sigma'/sigma) * mean_j x0_j, and the rows
meet in one image as sigma reaches 0. (Averaging the velocity instead would keep the rows'
noise differences to the end.) Outside the step window the rows evolve independently.
"""

from __future__ import annotations

import re

import torch

MODES = ("prediction average", "latent average", "none")
BLEND_METHODS = ("mean", "median")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
ALL_STEPS = 10000
"""end_step default, as KSamplerAdvanced's end_at_step: past the last step means 'to the end'."""


def parse_seeds(text: str) -> list[int]:
    """Seeds from '1, 2, 5' or ranges '10-13' (inclusive); ValueError on an empty or bad list."""
    seeds: list[int] = []
    for item in re.split(r"[,\s;]+", str(text).strip()):
        if not item:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if match is None:
            raise ValueError(f"seeds: cannot read {item!r}; write whole numbers separated by commas, "
                             "or ranges like '10-13' (e.g. '1, 2, 3' or '0-7')")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"seeds: the range {item!r} runs backwards; write it as {last}-{first}")
        if last - first >= 4096:
            raise ValueError(f"seeds: the range {item!r} has {last - first + 1} seeds; at most 4096 at once")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise ValueError("seeds is empty: list at least one seed, e.g. '1, 2, 3, 4' or '0-3'")
    for seed in seeds:
        if seed > MAX_SEED:
            raise ValueError(f"seeds: {seed} is larger than the largest seed {MAX_SEED}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds: {repeated} listed more than once; each seed counts once in an ensemble")
    return seeds


def validate_mode(mode: str) -> None:
    """Raise ValueError naming the choices when mode is not an ensemble mode."""
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}: choose one of {', '.join(MODES)}")


def step_window(sigmas: torch.Tensor, start_step: int, end_step: int) -> tuple[float, float]:
    """(high, low) = (sigmas[start_step], sigmas[end_step]): the noise levels of steps [start_step, end_step).

    Steps count over the schedule actually run (``sigmas`` has steps + 1 values ending at 0); an
    end_step past the last step means 'to the end'. The window is a noise-level interval: an
    evaluation is in it when low < sigma <= high (in_window), whatever step made it. Evaluations
    strictly between two sigmas (2S / SDE midpoints) thus belong to the step they start from; an
    evaluation exactly at a schedule sigma belongs to the step that starts there, so Heun's second
    evaluation of step i (made at sigmas[i + 1]) counts with step i + 1: the one of step
    start_step - 1 (at high) is averaged, the one of step end_step - 1 (at low) is not. A sampler
    hook sees only sigma, and at sigmas[i + 1] Heun's correction and the next step's first
    evaluation are indistinguishable, so no step-based rule could be kept for every sampler.
    """
    steps = len(sigmas) - 1
    if start_step < 0 or end_step < 0:
        raise ValueError(f"start_step {start_step} / end_step {end_step}: steps are counted from 0")
    end = min(end_step, steps)
    if start_step >= end:
        raise ValueError(f"start_step {start_step} >= end_step {min(end_step, steps)} (the schedule has {steps} steps): "
                         f"the window would average no step; use start_step 0 and end_step {ALL_STEPS} for every step")
    return float(sigmas[start_step]), float(sigmas[end])


def in_window(sigma, window: tuple[float, float]):
    """Whether an evaluation at sigma lies in the (high, low) window (a bool, or a bool tensor for a tensor sigma)."""
    high, low = window
    return (sigma > low) & (sigma <= high)


def average_prediction(denoised: torch.Tensor) -> torch.Tensor:
    """Every batch row replaced by the mean over rows (one row: returned unchanged, bit for bit)."""
    if denoised.shape[0] == 1:
        return denoised
    return denoised.mean(dim=0, keepdim=True).expand_as(denoised).contiguous()


def seed_spread(denoised: torch.Tensor) -> torch.Tensor:
    """How much the rows' predictions disagree: per-element std across rows, averaged (0-d tensor)."""
    if denoised.shape[0] == 1:
        return denoised.new_zeros(())
    return denoised.float().std(dim=0, correction=0).mean()


def average_latents(samples: torch.Tensor) -> torch.Tensor:
    """Mean over the batch as a batch of one (one row: returned unchanged)."""
    if samples.shape[0] == 1:
        return samples
    return samples.mean(dim=0, keepdim=True)


def blend_images(images: torch.Tensor, method: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel blend of an IMAGE batch [B, H, W, C] -> (blend [1, H, W, C], per-pixel std [1, H, W]).

    median takes torch's lower median for an even batch (an actual pixel of one image).
    """
    if method not in BLEND_METHODS:
        raise ValueError(f"method is {method!r}: choose one of {', '.join(BLEND_METHODS)}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images has shape {tuple(images.shape)}: expected an IMAGE batch [batch, height, width, channels]")
    if images.shape[0] == 1:
        return images, images.new_zeros(images.shape[:3])
    x = images.float()
    blend = x.mean(dim=0, keepdim=True) if method == "mean" else x.median(dim=0, keepdim=True).values
    spread = x.std(dim=0, correction=0).mean(dim=-1, keepdim=False).unsqueeze(0)
    return blend.to(images.dtype), spread
