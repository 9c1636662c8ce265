"""Leave-one-out token attribution: which words (or tokens) of a prompt move which pixels.

For a prompt and a seed, each unit (a word, or one token) is left out in turn; the image of the
shortened prompt is sampled with the same seed and compared pixel by pixel with the full
prompt's image. The change map of a unit is the mean over colour channels of |image - full|
(0..1); its score is the map's mean. Words asked for that the prompt does not contain leave the
prompt unchanged, so their change is exactly zero.

Prompts of equal token count are sampled together as one batch (the DiT reads every caption
position, padding included, so prompts of different lengths cannot share a batch exactly).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import validation

UNITS = ("word", "token")
MAX_VARIANTS = 256
"""Most shortened prompts one attribution samples (each is one more image): bounds the work of a long prompt."""
WORD = re.compile(r"\w+(?:['\-]\w+)*")


@dataclass
class Variant:
    """One leave-one-out prompt: what was left out, and the prompt text (word units) or token index (token units)."""

    label: str
    kind: str              # "word", "token" or "requested"
    index: int             # position among the prompt's units (-1 for requested words)
    text: str | None = None
    token_index: int | None = None
    span: tuple[int, int] | None = None
    present: bool = True


def word_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the words of a prompt (letters, digits, inner ' and -)."""
    return [m.span() for m in WORD.finditer(text)]


def remove_span(text: str, start: int, end: int) -> str:
    """The text without [start, end) and one space next to it (the following one, else the preceding one)."""
    if end < len(text) and text[end] == " ":
        end += 1
    elif start > 0 and text[start - 1] == " ":
        start -= 1
    return text[:start] + text[end:]


def remove_word(text: str, word: str) -> str:
    """The text without every whole-word, case-sensitive occurrence of word (unchanged when absent)."""
    spans = [m.span() for m in re.finditer(rf"(?<![\w'\-]){re.escape(word)}(?![\w'\-])", text)]
    for start, end in reversed(spans):
        text = remove_span(text, start, end)
    return text


def parse_words(text: str) -> list[str]:
    """Comma- or newline-separated words to attribute in addition to the prompt's own."""
    words = [w.strip() for w in re.split(r"[,\n]", text or "")]
    return list(dict.fromkeys(w for w in words if w))


def word_variants(prompt: str, extra_words: list[str] = ()) -> list[Variant]:
    """Leave-one-word-out prompts, then one prompt per requested word (all its occurrences removed)."""
    variants = []
    for i, (start, end) in enumerate(word_spans(prompt)):
        variants.append(Variant(prompt[start:end], "word", i, text=remove_span(prompt, start, end), span=(start, end)))
    variants += requested_variants(prompt, extra_words)
    return variants


def check_work(prompt: str, unit: str, token_count: int, extra_words: list[str]) -> None:
    """ValueError naming the input when the prompt would make more than MAX_VARIANTS shortened prompts."""
    validation.bounded_text(extra_words and ",".join(extra_words) or "", "extra_words", 20 * MAX_VARIANTS)
    units = len(word_spans(prompt)) if unit == "word" else token_count
    validation.bounded_count(units + len(extra_words), "prompt" if units else "extra_words", MAX_VARIANTS,
                             f"{unit}s to leave out" if units else "words", "each is one more sampled image")


def requested_variants(prompt: str, extra_words: list[str]) -> list[Variant]:
    """One variant per requested word; present=False (and the prompt unchanged) when the prompt lacks it."""
    out = []
    for word in extra_words:
        shortened = remove_word(prompt, word)
        out.append(Variant(word, "requested", -1, text=shortened, present=shortened != prompt))
    return out


def token_variants(labels: list[str], content: tuple[int, int]) -> list[Variant]:
    """Leave-one-token-out variants for the content tokens [start, end) of a token sequence with these labels."""
    start, end = content
    return [Variant(labels[i], "token", i - start, token_index=i) for i in range(start, end)]


def batches(groups: dict, size: int) -> list[list]:
    """Split each group's items into batches of at most size (groups in key order)."""
    if size < 1:
        raise ValueError(f"batch_size is {size}: sample at least 1 prompt per batch")
    out = []
    for key in sorted(groups):
        items = groups[key]
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def change_map(image: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Per-pixel change [H, W]: mean over channels of |image - base| (images [H, W, C] in 0..1)."""
    return (image.float() - base.float()).abs().mean(dim=-1)


def ranking(variants: list[Variant], maps: torch.Tensor) -> list[dict]:
    """Units sorted by mean change (largest first; ties keep prompt order), with rank, score and peak."""
    scores = maps.flatten(1).mean(dim=1).tolist() if len(variants) else []
    peaks = maps.flatten(1).amax(dim=1).tolist() if len(variants) else []
    rows = []
    for i, (v, score, peak) in enumerate(zip(variants, scores, peaks)):
        row = {"label": v.label, "kind": v.kind, "index": v.index, "present": v.present, "score": float(score),
               "peak": float(peak), "order": i}
        if v.text is not None:
            row["prompt"] = v.text
        rows.append(row)
    rows.sort(key=lambda r: (-r["score"], r["order"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def to_json(settings: dict, rows: list[dict]) -> str:
    """The ranked list and the settings as JSON text."""
    return json.dumps({**settings, "ranking": rows}, indent=1)


def describe(rows: list[dict]) -> str:
    """The ranked list as short lines for the node's text box."""
    return "\n".join(f"#{r['rank']} {r['label']!r}: {r['score']:.5f}" + ("" if r["present"] else " (not in the prompt)")
                     for r in rows)


def overlays(base: np.ndarray, maps: np.ndarray, titles: list[str], min_size: int = 256, alpha: float = 0.85) -> np.ndarray:
    """Heatmaps of maps [K, H, W] over the base image [H, W, 3] (0..1), titled: uint8 [K, H', W', 3].

    One colour scale for every map (0 .. the largest change of any unit), and the heat's opacity
    grows with the change, so unchanged pixels show the image itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = base.shape[:2]
    scale = max(1.0, min_size / min(height, width))
    w_px, h_px, band = int(round(width * scale)), int(round(height * scale)), 30
    vmax = float(maps.max()) if maps.size else 0.0
    cmap = matplotlib.colormaps["inferno"]
    dpi = 100
    out = []
    for heat, title in zip(maps, titles):
        fig = plt.figure(figsize=(w_px / dpi, (h_px + band) / dpi), dpi=dpi)
        try:
            ax = fig.add_axes([0, 0, 1, h_px / (h_px + band)])
            ax.imshow(base, interpolation="nearest")
            if vmax > 0:
                level = np.clip(heat / vmax, 0.0, 1.0)
                rgba = cmap(level)
                rgba[..., 3] = alpha * np.sqrt(level)
                ax.imshow(rgba, interpolation="nearest")
            ax.axis("off")
            fig.text(0.5, 1 - (band / 2) / (h_px + band), title, ha="center", va="center", fontsize=10)
            fig.canvas.draw()
            out.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        finally:
            plt.close(fig)
    return np.stack(out) if out else np.zeros((0, h_px + band, w_px, 3), dtype=np.uint8)
