"""A diversity yardstick for images of one prompt over seeds (no ComfyUI import).

Diversity is the mean over all pairs i < j of a distance d(image_i, image_j). Measures:

- ``ssim``: 1 - SSIM (Wang et al. 2004; torchmetrics, Gaussian window 11, sigma 1.5, data range 1)
  on the images downscaled (antialiased) so the longer side is at most ``size`` pixels: the
  structure / composition, not the fine detail.
- ``ms_ssim``: 1 - MS-SSIM (5 scales, torchmetrics) on the same images; only where the shorter
  side is at least 161 pixels (the coarsest scale needs an 11-pixel window), else not reported.
- ``histogram``: colour-histogram distance: per channel, a ``bins``-bin histogram of the values
  in [0, 1] normalised to sum 1; the distance is the total variation 0.5 * sum |h_a - h_b|
  averaged over R, G, B (0 = same colours, 1 = no colour in common).
- ``pixel_rmse``: RMSE of the downscaled images (0..1).
- ``latent_rmse``: RMSE between latents, e.g. the x0 predictions at a chosen step.
- perceptual measures (LPIPS, DreamSim, embedding distances) plug in as any callable
  ``distance(a, b) -> float`` or as embeddings (``embedding_diversity``: mean 1 - cosine).
- ``fidelity``: mean cosine similarity between each image's embedding and the prompt's
  (CLIP / SigLIP score without the x100 / clipping), so more diversity is not bought with
  another prompt.

The table of a finished sweep (diversity and mean prompt scores per setting) is core/diversity_sweep.py;
``python -m core.diversity OUT`` runs it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_MIN_SIDE = 161
WEIGHT_FREE = ("ssim", "ms_ssim", "histogram", "pixel_rmse")


def as_batch(images) -> torch.Tensor:
    """[N, 3, H, W] float32 in [0, 1] from a ComfyUI IMAGE [N, H, W, C] (or one image [H, W, C])."""
    x = torch.as_tensor(images).float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images has shape {tuple(x.shape)}: expected an IMAGE batch [batch, height, width, 3]")
    x = x[..., :3] if x.shape[-1] >= 3 else x.expand(*x.shape[:3], 3)
    return x.permute(0, 3, 1, 2).clamp(0, 1).contiguous()


def downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize so the longer side is at most `size` (smaller images are kept)."""
    height, width = x.shape[-2:]
    factor = size / max(height, width)
    if factor >= 1:
        return x
    new = (max(1, round(height * factor)), max(1, round(width * factor)))
    return F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def pairs(n: int) -> list[tuple[int, int]]:
    """Every unordered pair i < j of n items."""
    return list(itertools.combinations(range(n), 2))


def pairwise(items, distance) -> tuple[float, np.ndarray]:
    """(mean over pairs i < j, symmetric [n, n] matrix) of distance(items[i], items[j])."""
    n = len(items)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images of the same prompt (got {n}): sample a batch or several seeds")
    matrix = np.zeros((n, n))
    for i, j in pairs(n):
        matrix[i, j] = matrix[j, i] = float(distance(items[i], items[j]))
    return float(matrix[np.triu_indices(n, 1)].mean()), matrix


def ssim_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - SSIM of two [3, H, W] images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return 1.0 - float(structural_similarity_index_measure(a[None].double(), b[None].double(), data_range=1.0))


def ms_ssim_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - MS-SSIM (5 scales) of two [3, H, W] images in [0, 1]."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    value = multiscale_structural_similarity_index_measure(a[None].double(), b[None].double(), data_range=1.0,
                                                           normalize="relu")
    return 1.0 - float(value)


def colour_histogram(image: torch.Tensor, bins: int) -> torch.Tensor:
    """[3, bins] per-channel histograms of a [3, H, W] image in [0, 1], each summing to 1 (1.0 falls in the last bin)."""
    if bins < 2:
        raise ValueError(f"bins is {bins}: a histogram needs at least 2 bins")
    index = (image.reshape(3, -1).double() * bins).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(3, bins, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    return counts / counts.sum(dim=1, keepdim=True)


def histogram_distance(ha: torch.Tensor, hb: torch.Tensor) -> float:
    """Total variation between two [3, bins] histograms, averaged over channels."""
    return float(0.5 * (ha - hb).abs().sum(dim=1).mean())


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square difference of two equal-shape tensors."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}: give equal-size images / latents")
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def image_diversity(images, size: int = 256, bins: int = 16) -> dict:
    """Weight-free diversity of an IMAGE batch: mean pairwise 1-SSIM, 1-MS-SSIM, histogram distance, pixel RMSE."""
    if size < 8:
        raise ValueError(f"size is {size}: downscale to at least 8 pixels (256 is the default)")
    x = downscale(as_batch(images), size)
    small = list(x)
    out = {"images": len(small), "size": [int(x.shape[-1]), int(x.shape[-2])], "bins": bins}
    out["ssim"], _ = pairwise(small, ssim_distance)
    out["ms_ssim"] = pairwise(small, ms_ssim_distance)[0] if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE else None
    histograms = [colour_histogram(im, bins) for im in small]
    out["histogram"], _ = pairwise(histograms, histogram_distance)
    out["pixel_rmse"], _ = pairwise(small, rmse)
    return out


def latent_diversity(latents: torch.Tensor) -> float:
    """Mean pairwise RMSE of a latent batch [N, C, H, W] (e.g. x0 predictions at one step)."""
    return pairwise(list(latents.float()), rmse)[0]


def embedding_diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise 1 - cosine similarity of image embeddings [N, D] (CLIP, SigLIP, DINO, DreamSim)."""
    e = F.normalize(torch.as_tensor(embeddings).double(), dim=-1)
    return pairwise(list(e), lambda a, b: 1.0 - float(a @ b))[0]


def fidelity(image_embeddings: torch.Tensor, text_embedding: torch.Tensor) -> float:
    """Mean cosine similarity between each image embedding [N, D] and the prompt's embedding [D]."""
    images = F.normalize(torch.as_tensor(image_embeddings).double(), dim=-1)
    text = F.normalize(torch.as_tensor(text_embedding).double().reshape(-1), dim=0)
    if images.shape[-1] != text.shape[0]:
        raise ValueError(f"image embeddings have width {images.shape[-1]} but the text embedding {text.shape[0]}: "
                         "use the image and text towers of one model")
    return float((images @ text).mean())


# ------------------------------------------------------------------------------------------ LPIPS


def load_lpips(net: str = "alex"):
    """LPIPS (Zhang et al. 2018) through the lpips package: torchvision backbone + the package's linear heads.

    The backbone comes from torchvision's weights (the torch hub cache, $TORCH_HOME/hub/checkpoints,
    downloaded once when missing), the linear heads from the lpips package itself.
    """
    try:
        import lpips
    except ImportError:
        raise ValueError("LPIPS needs the lpips package: pip install lpips") from None
    if net not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"LPIPS net is {net!r}: choose alex, vgg or squeeze")
    import warnings

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated pretrained=True
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, verbose=False).eval()


def lpips_diversity(model, images, size: int = 256) -> float:
    """Mean pairwise LPIPS of an IMAGE batch (downscaled like the other measures, inputs scaled to [-1, 1])."""
    x = downscale(as_batch(images), size) * 2.0 - 1.0
    device = next(model.parameters()).device

    def distance(a, b):
        with torch.no_grad():
            return float(model(a[None].to(device), b[None].to(device)).reshape(()))

    return pairwise(list(x), distance)[0]


# ------------------------------------------------------------------------------------ tables, plots


def format_row(report: dict) -> dict:
    """The numbers of a report, rounded for a table."""
    return {k: (round(v, 4) if isinstance(v, float) else ("-" if v is None else v)) for k, v in report.items()
            if not isinstance(v, (list, dict))}


def figure_to_array(fig) -> np.ndarray:
    """An RGB uint8 array of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def seed_grid(rows: list[tuple[str, torch.Tensor]], labels: list[str] | None = None, tile: int = 192) -> np.ndarray:
    """A labelled grid: one row per (name, IMAGE batch), one column per seed / batch row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(int(images.shape[0]) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * tile / 100, len(rows) * (tile + 24) / 100), dpi=100,
                             squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < images.shape[0]:
                ax.imshow(as_batch(images[c])[0].permute(1, 2, 0).numpy())
                title = labels[c] if labels and c < len(labels) else f"#{c}"
                ax.set_title(f"{name} {title}" if c == 0 else title, fontsize=8)
    fig.tight_layout()
    return figure_to_array(fig)


def draw_strength(ax, series: dict[str, list[tuple[float, float]]], ylabel: str, title: str) -> None:
    """One panel: a line per technique through its finite points (strength, value)."""
    for name, points in series.items():
        points = sorted(p for p in points if p[1] is not None and math.isfinite(p[1]))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("strength")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def strength_plot(series: dict[str, list[tuple[float, float]]], measure: str, title: str = "") -> np.ndarray:
    """Diversity against strength: one line per technique, points (strength, value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    draw_strength(ax, series, f"mean pairwise {measure}", title or f"seed diversity ({measure})")
    fig.tight_layout()
    return figure_to_array(fig)


# ------------------------------------------------------------------------- paired seed comparison


def distance_matrix(batch: torch.Tensor, pool: int = 1) -> np.ndarray:
    """[N, N] RMSE between the rows of a [N, C, H, W] batch, after `pool` x `pool` average pooling (low frequencies)."""
    x = batch.double()
    if pool > 1:
        x = F.avg_pool2d(x, pool)
    x = x.flatten(1)
    return (torch.cdist(x, x) / math.sqrt(x.shape[1])).numpy()


def off_diagonal_mean(matrix: np.ndarray, index: np.ndarray) -> float:
    """Mean of matrix[index_i, index_j] over pairs i < j drawing two different items."""
    sub = matrix[np.ix_(index, index)]
    distinct = index[:, None] != index[None, :]
    upper = np.triu(np.ones_like(sub, dtype=bool), 1) & distinct
    return float(sub[upper].mean())


def paired_bootstrap(base: np.ndarray, other: np.ndarray, rounds: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean pairwise distance of `other` minus `base` (same seeds, [N, N] matrices) with a bootstrap interval over seeds."""
    if base.shape != other.shape or base.ndim != 2 or base.shape[0] < 3:
        raise ValueError(f"matrices {base.shape} and {other.shape}: give two [N, N] matrices of the same N >= 3 seeds")
    n = base.shape[0]
    diff = other - base
    everyone = np.arange(n)
    rng = np.random.default_rng(seed)
    draws = [off_diagonal_mean(diff, rng.integers(0, n, n)) for _ in range(rounds)]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"base": off_diagonal_mean(base, everyone), "other": off_diagonal_mean(other, everyone),
            "difference": off_diagonal_mean(diff, everyone), "low": float(low), "high": float(high), "seeds": n}


if __name__ == "__main__":  # the sweep table's command keeps its name: python -m core.diversity OUT
    from .diversity_sweep import main

    main()
