"""Sampling trajectories: per-step statistics of the latent and the model's prediction, and plots.

At step i a flow sampler holds x_i at noise level sigma_i and the model predicts the clean
latent x0_i; the velocity it implies is v_i = (x_i - x0_i) / sigma_i (the raw flow prediction,
noise - x0). Everything here is measured in the model's latent space (what the sampler steps in).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

STATS = ("latent_norm", "latent_mean", "latent_std", "x0_norm", "velocity_norm")


def step_stats(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """[latent norm, mean, std, x0 norm, velocity norm] of one step, as one tensor on x's device (no host sync)."""
    x, x0 = x.float(), x0.float()
    velocity = (x - x0).norm() / sigma if sigma > 0 else torch.full((), float("nan"), device=x.device)
    return torch.stack([x.norm(), x.mean(), x.std(correction=0), x0.norm(), velocity])


def snapshot_steps(steps: int, every: int) -> list[int]:
    """Steps whose x0 is kept: 0, every, 2*every, ... and always the last step."""
    if every < 1:
        raise ValueError(f"every is {every}: keep x0 every 1 or more steps (1 = every step)")
    kept = list(range(0, steps, every))
    if steps - 1 not in kept:
        kept.append(steps - 1)
    return kept


def records(sigmas: list[float], stats: torch.Tensor) -> list[dict]:
    """Per-step dicts (step, sigma, sigma_next and the STATS) from a [steps, len(STATS)] table."""
    rows = []
    for i, values in enumerate(stats.tolist()):
        row = {"step": i, "sigma": float(sigmas[i]), "sigma_next": float(sigmas[i + 1]) if i + 1 < len(sigmas) else None}
        row.update({name: (None if math.isnan(v) else float(v)) for name, v in zip(STATS, values)})
        rows.append(row)
    return rows


def to_json(settings: dict, rows: list[dict], x0_steps: list[int]) -> str:
    """The trajectory as JSON text: settings, per-step numbers, which steps have x0 snapshots."""
    return json.dumps({**settings, "trajectory": rows, "x0_steps": x0_steps}, indent=1)


def latent_rgb(latent: torch.Tensor, factors, bias=None) -> torch.Tensor:
    """Approximate RGB of latents [B, C, h, w] -> IMAGE [B, h, w, 3] in [0, 1] by ComfyUI's linear preview factors."""
    weight = torch.tensor(factors, dtype=torch.float32, device=latent.device).T  # [3, C]
    b = torch.tensor(bias, dtype=torch.float32, device=latent.device) if bias is not None else None
    rgb = torch.nn.functional.linear(latent.float().movedim(1, -1), weight, b)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


def plot(rows: list[dict], title: str = "", width_px: int = 1200) -> np.ndarray:
    """Three panels (sigma; norms of latent, x0 and velocity; latent mean and std) as an RGB uint8 array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]

    def series(name):
        return [np.nan if r[name] is None else r[name] for r in rows]

    dpi = 100
    fig, axes = plt.subplots(1, 3, figsize=(width_px / dpi, width_px / dpi / 3.2), dpi=dpi)
    try:
        axes[0].plot(steps, [r["sigma"] for r in rows], marker="o")
        axes[0].set_title("sigma at each step")
        for name, label in (("latent_norm", "latent x"), ("x0_norm", "prediction x0"), ("velocity_norm", "velocity (x - x0)/sigma")):
            axes[1].plot(steps, series(name), marker="o", label=label)
        axes[1].set_title("L2 norms")
        axes[1].legend(fontsize=8)
        axes[2].plot(steps, series("latent_mean"), marker="o", label="mean")
        axes[2].plot(steps, series("latent_std"), marker="o", label="std")
        axes[2].set_title("latent mean / std")
        axes[2].legend(fontsize=8)
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return figure_rgb(fig)
    finally:
        plt.close(fig)


def figure_rgb(fig) -> np.ndarray:
    """A drawn matplotlib figure as an RGB uint8 array [H, W, 3]."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
