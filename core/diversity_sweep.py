"""The seed-diversity table of a finished sweep (no ComfyUI import): ``python -m core.diversity OUT``.

A sweep (``python -m zlab sweep``, e.g. sweeps/seed_diversity.yaml) runs one image per cell; here its
finished rows (OUT/results.json) are grouped by setting (every seed of the same swept values) and each
setting gets:

- the weight-free diversity across its seeds (core.diversity.image_diversity: 1 - SSIM, 1 - MS-SSIM,
  colour histogram, pixel RMSE) and optionally a perceptual one (LPIPS);
- ``fidelity_<metric>``: the mean over its seeds of each per-image prompt score the rows carry
  (clip_score, siglip, pickscore, hpsv2, image_reward: core.metric_models.PROMPT_SCORE_NAMES, scored on
  the server when the spec lists them under ``metrics``). A setting where some seed lacks the score gets
  an empty value; a score no row carries gets no column.

Written to OUT: diversity.csv, diversity.json and diversity_vs_strength.png (1 - SSIM against strength per
technique, and one more panel per fidelity column: the score against strength).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from .diversity import draw_strength, figure_to_array, format_row, image_diversity, load_lpips, lpips_diversity
from .metric_models import PROMPT_SCORE_NAMES


def load_rgb(path) -> torch.Tensor:
    """An image file as IMAGE [1, H, W, 3] in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).float().div(255.0)[None]


def sweep_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Finished sweep rows grouped by their swept values (every seed of one setting together)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("image"):
            groups.setdefault(tuple(sorted(row["params"].items())), []).append(row)
    return groups


def technique_of(params: dict) -> tuple[str, float]:
    """(technique, strength) of a setting: the one swept input that is not 0, or ('stock', 0)."""
    active = [(address.rsplit(".", 1)[0], float(v)) for address, v in params.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0]
    if len(active) == 1:
        return active[0]
    return ("stock", 0.0) if not active else (" + ".join(a for a, _ in active), float("nan"))


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fidelity_means(rows: list[dict], names=PROMPT_SCORE_NAMES) -> dict:
    """fidelity_<name>: the mean of each score the rows carry; None when only some rows carry it."""
    out = {}
    for name in names:
        values = [row.get(name) for row in rows]
        numbers = [float(v) for v in values if is_number(v)]
        if numbers:
            out[f"fidelity_{name}"] = round(float(np.mean(numbers)), 6) if len(numbers) == len(values) else None
    return out


def setting_row(out: Path, params: dict, rows: list[dict], size: int, bins: int, perceptual) -> dict:
    """One setting's row: technique, strength, seeds, swept values, diversity, fidelity."""
    images = torch.cat([load_rgb(out / r["image"]) for r in sorted(rows, key=lambda r: r["seed"])])
    technique, strength = technique_of(params)
    entry = {"technique": technique, "strength": strength, "seeds": len(rows), **params,
             **format_row(image_diversity(images, size, bins))}
    if perceptual is not None:
        entry[perceptual[0]] = round(perceptual[1](images), 4)
    return {**entry, **fidelity_means(rows)}


def series_of(table: list[dict], column: str) -> dict[str, list]:
    """technique -> [(strength, value)], each technique's line starting from the stock value at 0."""
    stock = [(0.0, r.get(column)) for r in table if r["technique"] == "stock"]
    series: dict[str, list] = {}
    for r in table:
        if r["technique"] != "stock":
            series.setdefault(r["technique"], list(stock)).append((r["strength"], r.get(column)))
    return series


def sweep_plot(table: list[dict], fidelity_columns: list[str]) -> np.ndarray:
    """1 - SSIM against strength, then one panel per fidelity column (the score against strength)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ssim", "mean pairwise 1 - SSIM", "seed diversity (1 - SSIM)")]
    panels += [(c, f"mean {c.removeprefix('fidelity_')}", f"fidelity ({c.removeprefix('fidelity_')})")
               for c in fidelity_columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.0), dpi=100, squeeze=False)
    for ax, (column, ylabel, title) in zip(axes[0], panels):
        draw_strength(ax, series_of(table, column), ylabel, title)
    fig.tight_layout()
    return figure_to_array(fig)


def write_outputs(out: Path, table: list[dict]) -> None:
    """diversity.csv, diversity.json and diversity_vs_strength.png in out."""
    from PIL import Image

    columns = list(dict.fromkeys(k for row in table for k in row))
    with open(out / "diversity.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    (out / "diversity.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    fidelity = [c for c in columns if c.startswith("fidelity_") and any(is_number(r.get(c)) for r in table)]
    Image.fromarray(sweep_plot(table, fidelity)).save(out / "diversity_vs_strength.png")


def sweep_diversity(out_dir, size: int = 256, bins: int = 16, perceptual=None) -> list[dict]:
    """Per setting of a finished sweep (results.json): diversity across its seeds and mean prompt scores, written to
    diversity.csv/.json and diversity_vs_strength.png in out_dir; ``perceptual``: (name, fn(IMAGE) -> float)."""
    out = Path(out_dir)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    table = [setting_row(out, dict(key), rows, size, bins, perceptual)
             for key, rows in sweep_groups(results["rows"]).items() if len(rows) >= 2]
    if not table:
        raise ValueError(f"{out} has no setting with 2 or more finished seeds: run the sweep first")
    write_outputs(out, table)
    return table


def main(argv=None) -> None:
    """The command line: python -m core.diversity OUT [--size N] [--bins N] [--lpips NET | --dreamsim FOLDER]."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.diversity",
                                     description="Diversity across seeds and mean prompt scores of every setting of a "
                                                 "finished sweep.")
    parser.add_argument("out_dir", help="the sweep's output folder (holds results.json and images/)")
    parser.add_argument("--size", type=int, default=256, help="downscale images to this many pixels (longer side)")
    parser.add_argument("--bins", type=int, default=16, help="histogram bins per channel")
    perceptual = parser.add_mutually_exclusive_group()
    perceptual.add_argument("--lpips", choices=("alex", "vgg", "squeeze"), help="also mean pairwise LPIPS")
    perceptual.add_argument("--dreamsim", metavar="FOLDER",
                            help="also mean pairwise DreamSim, weights read from FOLDER (models/metrics/dreamsim: "
                                 "docs/metrics.md)")
    parser.add_argument("--dreamsim-type", default="ensemble",
                        choices=("ensemble", "dino_vitb16", "open_clip_vitb32", "clip_vitb32"))
    args = parser.parse_args(argv)
    extra = None
    if args.dreamsim:
        from .dreamsim import perceptual_measure

        extra = perceptual_measure(args.dreamsim, args.dreamsim_type)
    elif args.lpips:
        model = load_lpips(args.lpips)
        extra = (f"lpips_{args.lpips}", lambda images: lpips_diversity(model, images, args.size))
    for row in sweep_diversity(args.out_dir, args.size, args.bins, extra):
        print(", ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
