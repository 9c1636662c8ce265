"""Metrics that need no downloaded weights: text-embedding statistics and image statistics.

Plain numpy (torch tensors are accepted and converted), so the sweep command can score images
without ComfyUI or torch. Images are float arrays [H, W, 3] in [0, 1] (ComfyUI's IMAGE layout)
or uint8 [H, W, 3]; embeddings are token matrices [tokens, width].

Definitions:
- sharpness: variance of the 4-neighbour Laplacian of the luma (0..255, ITU-R BT.601 weights)
  over the interior pixels (no border padding), as OpenCV's ``Laplacian(ksize=1).var()``.
- edge density: fraction of interior pixels whose Sobel gradient magnitude of the luma (0..1)
  is at least ``threshold``; a step edge of height h gives magnitude 4h, so the default 0.5
  counts steps of 1/8 of full range and more.
- colourfulness: Hasler & Suesstrunk (2003), on 0..255: rg = R - G, yb = (R + G)/2 - B,
  C = sqrt(std_rg^2 + std_yb^2) + 0.3 * sqrt(mean_rg^2 + mean_yb^2).
- pixel distance: RMSE and MAE on 0..1 and PSNR in dB (peak 1); latent distance: RMSE and cosine.
- embedding: mean token L2 norm, Frobenius norm, variance of all values, Hoyer sparsity
  (0 = all values equal in size, 1 = one non-zero value), effective rank (Roy & Vetterli 2007:
  exp of the entropy of the normalised singular values), pairwise cosine of mean-pooled tokens.
"""

from __future__ import annotations

import math

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
IMAGE_METRICS = ("sharpness", "edge_density", "colourfulness")


def as_array(x) -> np.ndarray:
    """A float64 numpy array from a numpy array or a (CPU or device) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def as_image(image) -> np.ndarray:
    """[H, W, 3] float64 in [0, 1] from a float image in [0, 1] or a uint8 image; ValueError otherwise."""
    is_uint8 = getattr(image, "dtype", None) == np.uint8
    x = as_array(image)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"image has shape {x.shape}: expected [height, width, 3]")
    x = x[..., :3]
    return x / 255.0 if is_uint8 else x


def luma(image) -> np.ndarray:
    """BT.601 luma [H, W] in [0, 1]."""
    return as_image(image) @ LUMA


def laplacian(gray: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over the interior pixels."""
    return (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]) - 4.0 * gray[1:-1, 1:-1]


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude over the interior pixels."""
    gx = (gray[:-2, 2:] + 2 * gray[1:-1, 2:] + gray[2:, 2:]) - (gray[:-2, :-2] + 2 * gray[1:-1, :-2] + gray[2:, :-2])
    gy = (gray[2:, :-2] + 2 * gray[2:, 1:-1] + gray[2:, 2:]) - (gray[:-2, :-2] + 2 * gray[:-2, 1:-1] + gray[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def _check_size(gray: np.ndarray) -> None:
    if min(gray.shape) < 3:
        raise ValueError(f"image is {gray.shape[1]}x{gray.shape[0]} pixels: these metrics need at least 3x3")


def sharpness(image) -> float:
    """Laplacian variance of the luma on 0..255 (higher = more fine detail / sharper)."""
    gray = luma(image) * 255.0
    _check_size(gray)
    return float(laplacian(gray).var())


def edge_density(image, threshold: float = 0.5) -> float:
    """Fraction of interior pixels on an edge (Sobel magnitude of the 0..1 luma >= threshold)."""
    if not threshold > 0:
        raise ValueError(f"edge threshold is {threshold}: it must be > 0 (0.5 counts intensity steps of 1/8 and more)")
    gray = luma(image)
    _check_size(gray)
    return float((sobel_magnitude(gray) >= threshold).mean())


def colourfulness(image) -> float:
    """Hasler-Suesstrunk colourfulness on 0..255 (0 for grey images; ~>100 is 'extremely colourful')."""
    x = as_image(image) * 255.0
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def image_metrics(image, threshold: float = 0.5) -> dict:
    """sharpness, edge_density and colourfulness of one image."""
    return {"sharpness": sharpness(image), "edge_density": edge_density(image, threshold),
            "colourfulness": colourfulness(image)}


def pixel_distance(a, b) -> dict:
    """RMSE / MAE (0..1 scale) and PSNR (dB) between two equal-size images."""
    x, y = as_image(a), as_image(b)
    if x.shape != y.shape:
        raise ValueError(f"cannot compare a {x.shape[1]}x{x.shape[0]} image with a {y.shape[1]}x{y.shape[0]} one: "
                         "give images of the same size")
    diff = x - y
    mse = float((diff * diff).mean())
    return {"rmse": math.sqrt(mse), "mae": float(np.abs(diff).mean()),
            "psnr": float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)}


def latent_distance(a, b) -> dict:
    """RMSE and cosine similarity between two equal-shape latents (flattened)."""
    x, y = as_array(a).ravel(), as_array(b).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cannot compare latents of {as_array(a).shape} and {as_array(b).shape}: give latents of the same shape")
    denom = np.linalg.norm(x) * np.linalg.norm(y)
    return {"rmse": float(np.sqrt(((x - y) ** 2).mean())), "cosine": float(x @ y / denom) if denom > 0 else 0.0}


def hoyer_sparsity(values) -> float:
    """Hoyer's sparsity in [0, 1]: (sqrt(n) - L1/L2) / (sqrt(n) - 1)."""
    x = np.abs(as_array(values).ravel())
    n = x.size
    l2 = np.sqrt((x * x).sum())
    if n < 2 or l2 == 0:
        return 0.0
    return float((math.sqrt(n) - x.sum() / l2) / (math.sqrt(n) - 1))


def effective_rank(matrix) -> float:
    """Roy-Vetterli effective rank of a [tokens, width] matrix: exp(entropy of s / sum(s))."""
    s = np.linalg.svd(as_array(matrix), compute_uv=False)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_stats(tokens) -> dict:
    """Statistics of one prompt's token matrix [tokens, width]."""
    x = as_array(tokens)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embedding has shape {x.shape}: expected [tokens, width]")
    norms = np.linalg.norm(x, axis=1)
    return {"tokens": int(x.shape[0]), "width": int(x.shape[1]), "mean_token_norm": float(norms.mean()),
            "max_token_norm": float(norms.max()), "norm": float(np.linalg.norm(x)), "variance": float(x.var()),
            "sparsity": hoyer_sparsity(x), "effective_rank": effective_rank(x)}


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (0 when one is zero)."""
    x, y = as_array(a).ravel(), as_array(b).ravel()
    denom = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / denom) if denom > 0 else 0.0


def pairwise_cosine(embeddings: list) -> np.ndarray:
    """[n, n] cosine similarity of the mean-pooled token matrices (widths must agree)."""
    pooled = [as_array(e).mean(axis=0) for e in embeddings]
    widths = {p.shape for p in pooled}
    if len(widths) > 1:
        raise ValueError(f"cannot compare embeddings of different widths {sorted(w[0] for w in widths)}")
    n = len(pooled)
    return np.array([[cosine(pooled[i], pooled[j]) for j in range(n)] for i in range(n)])


def format_value(value) -> str:
    """A number as a short table cell."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def table_image(rows: list[dict], title: str = "", row_height_px: int = 28) -> np.ndarray:
    """A small table of rows (dicts with the same keys) as an RGB uint8 array, drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0]) if rows else ["(no rows)"]
    cells = [[format_value(r.get(c, "")) for c in columns] for r in rows] or [[""]]
    chars = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    width_px = max(480, sum(8 * n + 24 for n in chars))
    height_px = row_height_px * (len(cells) + 1) + (40 if title else 12)
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        ax = fig.add_axes([0.01, 0.01, 0.98, 0.98 - (36 / height_px if title else 0.0)])
        ax.axis("off")
        table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.3)
        table.auto_set_column_width(list(range(len(columns))))
        for (row, _), cell in table.get_celld().items():
            if row == 0:
                cell.set_facecolor("#dde4ee")
                cell.set_text_props(weight="bold")
        if title:
            fig.suptitle(title, fontsize=11, y=0.99)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
