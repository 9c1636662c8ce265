"""Sweep outputs, written by the driver alone: results.jsonl (appended, read back on resume), the cell's
image files, results.csv / results.json and the contact sheet."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from pathlib import Path

from .api import output_files
from .server_score import METRIC_FOLDERS
from .sweep_spec import IMAGE_SUFFIXES, RESULTS, Cell, Spec, cell_id, metrics_module, short


class Results:
    """results.jsonl in the output folder: one appended line per finished cell, read back on resume."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / RESULTS
        self.lock = threading.Lock()
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a line cut short by a kill: drop it so the next append starts clean
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("status") == "ok":
                    self.rows[row["cell"]] = row

    def done(self, cell: Cell) -> bool:
        return cell.id in self.rows

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if row.get("status") == "ok":
                self.rows[row["cell"]] = row


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new version, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def execution_seconds(entry: dict) -> float | None:
    """Seconds between execution_start and execution_success in a history entry, if reported."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])
              if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000.0 if start is not None and end is not None else None


def image_metrics(path: Path, threshold: float) -> dict:
    """core.metrics numbers of one image file."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"))
    return metrics_module().image_metrics(array, threshold)


def fetch_outputs(client, outputs: dict) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of every output file of a finished prompt: images of type 'output', else its previews."""
    records = output_files(outputs)
    saved = [r for r in records if r.get("type", "output") == "output"] or records
    return [(os.path.splitext(r["filename"])[1], client.fetch(r)) for r in saved]


class Recorder:
    """The driver's side of a finished cell: its files renamed after it, its image metrics, its appended row."""

    def __init__(self, spec: Spec, out_dir: Path, results: Results, log=print):
        self.spec, self.out_dir, self.results, self.log = spec, out_dir, results, log
        self.images = out_dir / "images"

    def save(self, cell: Cell, files: list[tuple[str, bytes]], meta: dict) -> dict:
        """Write the cell's files, then append its ok row (server, prompt_id, seconds... from meta)."""
        self.images.mkdir(parents=True, exist_ok=True)
        paths = []
        for n, (suffix, data) in enumerate(files):
            extra = "" if len(files) == 1 else f"_{n + 1}"
            dest = self.images / f"{cell.slug}_{cell.id[:6]}{extra}{suffix}"
            tmp = dest.with_name(f".{dest.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
            paths.append(dest)
        pictures = [f for f in paths if f.suffix.lower() in IMAGE_SUFFIXES]
        row = {"cell": cell.id, "label": cell.label, "status": "ok", "seed": cell.seed, "params": cell.params,
               "image": pictures[0].relative_to(self.out_dir).as_posix() if pictures else None,
               "files": [f.relative_to(self.out_dir).as_posix() for f in paths], **meta}
        if pictures:
            row.update(image_metrics(pictures[0], self.spec.edge_threshold))
        self.results.append(row)
        return row

    def fail(self, cell: Cell, server: str, error: str) -> None:
        """Append a failed cell's row (a rerun of the same command tries it again)."""
        self.results.append({"cell": cell.id, "label": cell.label, "status": "error", "error": error,
                             "server": server, "seed": cell.seed, "params": cell.params})


class CellFailures:
    """Where each cell failed: one that fails on two workers (or on the only one) is recorded failed, not retried."""

    def __init__(self, workers: int):
        self.needed = min(2, max(1, workers))
        self.errors: dict[str, dict[str, str]] = {}

    def add(self, cell: Cell, worker: str, error: str) -> bool:
        """Note a failure; True when the cell has now failed on enough workers to be recorded failed."""
        self.errors.setdefault(cell.id, {})[worker] = error
        return len(self.errors[cell.id]) >= self.needed

    def tried(self, cell: Cell, worker: str) -> bool:
        return worker in self.errors.get(cell.id, {})

    def message(self, cell: Cell) -> str:
        """The error, with the workers it happened on."""
        errors = self.errors.get(cell.id, {})
        if len(set(errors.values())) == 1:
            return f"{next(iter(errors.values()))} (failed on {', '.join(errors)})"
        return "; ".join(f"on {w}: {e}" for w, e in errors.items())


def reference_distances(spec: Spec, rows: dict[str, dict], out_dir: Path) -> None:
    """Add pixel_rmse (and pixel_mae, psnr) to the reference cell with the same seed and other values."""
    if not spec.reference:
        return
    import numpy as np
    from PIL import Image

    metrics = metrics_module()

    def load(row):
        with Image.open(out_dir / row["image"]) as im:
            return np.asarray(im.convert("RGB"))

    for row in rows.values():
        if not row.get("image"):
            continue
        ref_params = {**row["params"], **spec.reference}
        ref = rows.get(cell_id(ref_params, row["seed"]))
        if ref is None or not ref.get("image"):
            continue
        a, b = load(row), load(ref)
        if a.shape != b.shape:
            continue
        d = metrics.pixel_distance(a, b)
        row.update({"reference_cell": ref["cell"], "pixel_rmse": d["rmse"], "pixel_mae": d["mae"], "psnr": d["psnr"]})


def table_columns(spec: Spec, rows: list[dict]) -> list[str]:
    metric_names = [m for m in ("sharpness", "edge_density", "colourfulness", "reference_cell", "pixel_rmse",
                                "pixel_mae", "psnr", *METRIC_FOLDERS)
                    if any(m in r for r in rows)]
    return (["cell", "label", "status", "seed"] + list(spec.params) +
            ["image", "files", "server", "prompt_id", "seconds", "wall_seconds"] + metric_names)


def csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def write_tables(spec: Spec, all_cells: list[Cell], results: Results, out_dir: Path, workflow: str) -> list[dict]:
    """results.csv and results.json, one row per cell of the spec that finished, in spec order."""
    rows = {c.id: dict(results.rows[c.id]) for c in all_cells if c.id in results.rows}
    reference_distances(spec, rows, out_dir)
    ordered = [rows[c.id] for c in all_cells if c.id in rows]
    flat = [{**r, **r.get("params", {})} for r in ordered]
    columns = table_columns(spec, flat)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for r in flat:
        writer.writerow([csv_value(r.get(c)) for c in columns])
    write_atomic(out_dir / "results.csv", buffer.getvalue())
    doc = {"spec": spec.as_dict(), "workflow": workflow, "cells": len(all_cells), "finished": len(ordered),
           "rows": [{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in ordered]}
    write_atomic(out_dir / "results.json", json.dumps(doc, indent=1))
    return ordered


def contact_sheet(spec: Spec, all_cells: list[Cell], rows: list[dict], out_dir: Path, thumb: int = 256) -> Path | None:
    """A labelled grid: a row per value of the first swept input (per combination when zipped), a column per
    combination of the other inputs and seed."""
    from PIL import Image, ImageDraw, ImageFont

    by_id = {r["cell"]: r for r in rows}
    addresses = list(spec.params)

    def row_key(c):
        return tuple(c.params.items()) if spec.mode == "zip" else ((addresses[0], c.params[addresses[0]]),)

    def col_key(c):
        rest = () if spec.mode == "zip" else tuple((a, c.params[a]) for a in addresses[1:])
        return rest + (("seed", c.seed),)

    row_keys = list(dict.fromkeys(row_key(c) for c in all_cells))
    col_keys = list(dict.fromkeys(col_key(c) for c in all_cells))
    grid = {(row_key(c), col_key(c)): c for c in all_cells}
    first = next((r for r in rows if r.get("image")), None)
    if first is None:
        return None
    with Image.open(out_dir / first["image"]) as im:
        size = min(thumb, max(im.size))  # never blow small images up
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:
        font = ImageFont.load_default()

    def text(items):
        return ", ".join(f"{short(a) if a != 'seed' else a}={v}" for a, v in items)

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, header_h = 6, 48
    label_w = int(max(measure.textlength(text(rk), font=font) for rk in row_keys)) + 2 * pad
    tile_w = max(size, int(max(measure.textlength(text(ck), font=font) for ck in col_keys)) + pad)
    sheet = Image.new("RGB", (label_w + len(col_keys) * (tile_w + pad), header_h + len(row_keys) * (size + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), spec.name + (f": {spec.description}" if spec.description else ""), fill="black", font=font)
    for j, ck in enumerate(col_keys):
        draw.text((label_w + j * (tile_w + pad), header_h - 20), text(ck), fill="black", font=font)
    for i, rk in enumerate(row_keys):
        y = header_h + i * (size + pad)
        draw.text((pad, y + size // 2 - 7), text(rk), fill="black", font=font)
        for j, ck in enumerate(col_keys):
            x = label_w + j * (tile_w + pad)
            cell = grid.get((rk, ck))
            row = by_id.get(cell.id) if cell is not None else None
            if row is None or not row.get("image"):
                draw.rectangle([x, y, x + size - 1, y + size - 1], fill="#cccccc")
                draw.text((x + 4, y + size // 2 - 7), "missing", fill="black", font=font)
                continue
            with Image.open(out_dir / row["image"]) as im:
                tile = im.convert("RGB")
                tile.thumbnail((size, size))
                sheet.paste(tile, (x, y))
    path = out_dir / "contact_sheet.png"
    tmp = out_dir / "contact_sheet.png.tmp"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
