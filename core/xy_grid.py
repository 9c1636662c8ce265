"""XY grids: parse two axes of settings, list the cells, and draw the labelled grid image.

An axis is a setting name and a comma-separated list of values ("1, 2, 3.5" / "euler, res_multistep";
ranges "4-12:4" = 4, 8, 12 for integers, "1.0-3.0:0.5" for floats). Cells run row by row (Y), column
by column (X). The grid image puts the X values over the columns and the Y values beside the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AXES = {  # setting -> value type
    "seed": int, "steps": int, "shift": float, "cfg": float, "denoise": float,
    "sampler_name": str, "scheduler": str, "nag_scale": float, "steering_alpha": float, "layer": int,
}
RANGES = {"layer": (-64, -1)}  # Qwen3 hidden layers counted from the end, as the Z-Image Qwen3 Encoder takes them
NONE = "none"


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple

    def label(self, value) -> str:
        return f"{self.name}={value}"


def _number(text: str, kind):
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _expand(item: str, kind) -> list:
    """'4-12:4' -> [4, 8, 12]; '1.0-2.0:0.5' -> [1.0, 1.5, 2.0]; anything else one value."""
    if kind in (int, float) and ":" in item and "-" in item[1:]:
        span, step = item.split(":", 1)
        cut = span.index("-", 1)
        start, stop, step = _number(span[:cut], kind), _number(span[cut + 1:], kind), _number(step, kind)
        if step <= 0 or stop < start:
            raise ValueError(f"range {item!r}: write start-stop:step with start <= stop and step > 0")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > 1000:
            raise ValueError(f"range {item!r} has {count} values: at most 1000")
        return [kind(round(start + k * step, 10)) for k in range(count)]
    return [_number(item, kind) if kind in (int, float) else item]


def parse_axis(name: str, text: str, input_name: str, choices: dict[str, list] | None = None) -> Axis | None:
    """An Axis from a setting name and its values text; None for the 'none' axis. ValueError names the input."""
    if name == NONE:
        return None
    if name not in AXES:
        raise ValueError(f"{input_name} axis {name!r}: choose one of {', '.join([NONE, *AXES])}")
    kind = AXES[name]
    values = []
    try:
        for item in (t.strip() for t in text.replace("\n", ",").split(",")):
            if item:
                values += _expand(item, kind)
    except ValueError as e:
        raise ValueError(f"{input_name} values for {name}: {e}") from None
    low, high = RANGES.get(name, (None, None))
    outside = [v for v in values if low is not None and not low <= v <= high]
    if outside:
        raise ValueError(f"{input_name} values for {name}: {outside} outside {low}..{high}")
    if not values:
        raise ValueError(f"{input_name} values for {name} are empty: give a comma-separated list, e.g. "
                         f"{'1, 2, 3' if kind is not str else 'euler, res_multistep'}")
    allowed = (choices or {}).get(name)
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{input_name} values {bad} are not {name} choices: {', '.join(map(str, allowed))}")
    return Axis(name, tuple(values))


def cells(base: dict, x: Axis | None, y: Axis | None) -> list[dict]:
    """Settings of every cell, rows (Y) outer, columns (X) inner; base holds every setting's default."""
    if x is not None and y is not None and x.name == y.name:
        raise ValueError(f"x and y both sweep {x.name}: pick two different settings (or y 'none')")
    xs = x.values if x else (None,)
    ys = y.values if y else (None,)
    out = []
    for yv in ys:
        for xv in xs:
            cell = dict(base)
            if x:
                cell[x.name] = xv
            if y:
                cell[y.name] = yv
            out.append(cell)
    return out


def grid_image(images: np.ndarray, columns: int, column_labels: list[str], row_labels: list[str],
               title: str = "", gap: int = 4) -> np.ndarray:
    """[N, H, W, 3] floats in [0, 1] -> one labelled grid [H', W', 3] (white margins, black text)."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    font = ImageFont.load_default(size=max(12, min(h, w) // 16))
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: draw_probe.textbbox((0, 0), s, font=font)[2]  # noqa: E731
    text_h = draw_probe.textbbox((0, 0), "Ag", font=font)[3] + 6
    left = max([text_w(s) for s in row_labels] + [0]) + 12 if any(row_labels) else gap
    top = text_h * (2 if title else 1) + gap
    canvas = Image.new("RGB", (left + columns * (w + gap), top + rows * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left, 3), title, fill="black", font=font)
    for c, label in enumerate(column_labels[:columns]):
        draw.text((left + c * (w + gap) + max(0, (w - text_w(label)) // 2), top - text_h), label, fill="black", font=font)
    for r, label in enumerate(row_labels[:rows]):
        draw.text((6, top + r * (h + gap) + h // 2 - text_h // 2), label, fill="black", font=font)
    tiles = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    for k in range(n):
        r, c = divmod(k, columns)
        canvas.paste(Image.fromarray(tiles[k]), (left + c * (w + gap), top + r * (h + gap)))
    return np.asarray(canvas).astype(np.float32) / 255.0
