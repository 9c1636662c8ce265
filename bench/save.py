"""Saving benchmark: what a 1024x1024 PNG costs, by PIL compress_level and zlib strategy, and what
Z-Image Save Image leaves on the prompt's thread.

Images: two decoded diffusion outputs shipped with ComfyUI's workflow templates (Flux schnell and
SDXL, 1024x1024, from the ``comfyui_workflow_templates_media_image`` package ComfyUI installs; a
synthetic scene with grain when it is missing) and uniform noise (what random-weight models decode
to, as in the field benchmark). Each encode is PIL's ``Image.save`` as SaveImage calls it (into
memory, so the disk is not measured), median of ``--repeats``. The prompt-thread part is
``core.save``'s pixel conversion from a float32 IMAGE, the text chunks of a shipped workflow, and
the name reservation in an empty folder and in one holding ``--folder-files`` earlier images.

    python bench/save.py --json save.json [--repeats 5] [--size 1024]

Needs numpy, Pillow and torch (any build); no ComfyUI, no GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from core import save  # noqa: E402

STRATEGIES = {"default": 0, "filtered": 1, "huffman_only": 2, "rle": 3}  # zlib strategies (PIL's compress_type)


def template_image(name: str, size: int) -> np.ndarray | None:
    spec = importlib.util.find_spec("comfyui_workflow_templates_media_image")
    path = spec and os.path.join(os.path.dirname(spec.origin), "templates", name)
    if not path or not os.path.exists(path):
        return None
    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC))


def synthetic_scene(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    scene = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y), np.sin(9 * x * y)], -1) * 0.4 + 0.5
    return (np.clip(scene + np.random.default_rng(1).normal(0, 0.02, scene.shape), 0, 1) * 255).astype(np.uint8)


def images(size: int) -> dict[str, np.ndarray]:
    out = {}
    for label, name in (("flux_schnell", "flux_schnell-1.webp"), ("sdxl", "sdxl_simple_example-1.webp")):
        array = template_image(name, size)
        if array is not None:
            out[label] = array
    if not out:
        out["synthetic"] = synthetic_scene(size)
    out["noise"] = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return out


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encode(array, chunks, level, strategy=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=save.png_info(chunks), compress_level=level,
                                compress_type=strategy)
    return buffer.getvalue()


def encoder_rows(pictures, chunks, repeats) -> list[dict]:
    rows = []
    for label, array in pictures.items():
        settings = [(level, "default") for level in range(10)] + [(1, "rle"), (1, "huffman_only"), (1, "filtered")]
        for level, strategy in settings:
            data = encode(array, chunks, level, STRATEGIES[strategy])
            seconds = median_seconds(lambda: encode(array, chunks, level, STRATEGIES[strategy]), repeats)
            rows.append({"image": label, "level": level, "strategy": strategy, "ms": round(seconds * 1000, 1),
                         "mb": round(len(data) / 1e6, 3)})
            print(f"{label:13s} level {level} {strategy:12s} {seconds * 1000:7.1f} ms {len(data) / 1e6:6.3f} MB", flush=True)
    return rows


def prompt_thread_rows(size, chunks_source, folder_files, repeats) -> dict:
    import torch

    image = torch.rand(size, size, 3)
    out = {"to_uint8_ms": median_seconds(lambda: save.to_uint8(image), repeats) * 1000}
    prompt, workflow = chunks_source
    out["text_chunks_ms"] = median_seconds(lambda: save.text_chunks(prompt, {"workflow": workflow}), repeats) * 1000
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as full:
        for n in range(folder_files):
            open(os.path.join(full, f"ComfyUI_{n + 1:05}_.png"), "w").close()
        counter = [1]

        def reserve(folder):
            save.reserve(folder, "bench", counter[0], 1)
            counter[0] += 1

        out["reserve_ms"] = median_seconds(lambda: reserve(empty), repeats) * 1000
        out[f"listdir_{folder_files}_files_ms"] = median_seconds(lambda: os.listdir(full), repeats) * 1000
    return {k: round(v, 2) for k, v in out.items()}


def markdown(rows) -> str:
    labels = list(dict.fromkeys(r["image"] for r in rows))
    settings = list(dict.fromkeys((r["level"], r["strategy"]) for r in rows))
    head = "| compress_level | " + " | ".join(f"{label} ms | MB" for label in labels) + " |"
    lines = [head, "|---" * (1 + 2 * len(labels)) + "|"]
    for level, strategy in settings:
        cells = []
        for label in labels:
            r = next(x for x in rows if x["image"] == label and x["level"] == level and x["strategy"] == strategy)
            cells += [f"{r['ms']:.0f}", f"{r['mb']:.2f}"]
        name = f"{level}" + ("" if strategy == "default" else f" ({strategy})") + (" (SaveImage)" if (level, strategy) == (4, "default") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder-files", type=int, default=10000)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    prompt = json.loads((REPO / "workflows" / "api" / "zimage_turbo_lab.json").read_text())
    workflow = json.loads((REPO / "workflows" / "zimage_turbo_lab.json").read_text())
    chunks = save.text_chunks(prompt, {"workflow": workflow})
    rows = encoder_rows(images(args.size), chunks, args.repeats)
    thread = prompt_thread_rows(args.size, (prompt, workflow), args.folder_files, args.repeats)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "pillow": Image.__version__,
            "numpy": np.__version__, "size": args.size, "metadata_bytes": sum(len(k) + len(v) for k, v in chunks)}
    print(json.dumps(meta))
    print(markdown(rows))
    print("prompt thread:", json.dumps(thread))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "encode": rows, "prompt_thread": thread}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
