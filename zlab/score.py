"""``python -m zlab score SWEEP_DIR``: learned metrics for a finished sweep, written to OUT/scores.json.

Per cell: clip_score, siglip, pickscore, hpsv2, image_reward (image against its prompt) and lpips_to_reference (LPIPS
to the reference cell of the same seed). Per condition: lpips_diversity (mean pairwise LPIPS over its
seeds) and fid (against --reference-images). Weights are read from --models (layout in
docs/metrics.md); nothing is downloaded. ``zlab report`` merges scores.json into its tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import sweep as sw
from . import workflow as wf
from .report import core_module, load_sweep
from .server_score import METRIC_FOLDERS, PROMPT_INPUTS, SET_METRICS

PROMPT_METRICS = {name: (METRIC_FOLDERS[name], loader, fn) for name, (loader, fn) in {
    "clip_score": ("load_clip", "clip_score"), "siglip": ("load_siglip", "siglip_score"),
    "pickscore": ("load_pickscore", "pick_score"), "hpsv2": ("load_hpsv2", "hps_score"),
    "image_reward": ("load_image_reward", "image_reward")}.items()}


class ScoreError(wf.WorkflowError):
    """A score run that cannot go ahead, with a message meant for a person."""


def default_models_dir() -> str:
    return os.environ.get("ZLAB_METRICS_MODELS") or os.path.join(
        os.environ.get("COMFYUI_PATH", os.path.expanduser("~/comfy/ComfyUI")), "models", "metrics")


def model_path(models: str, folder: str) -> str:
    """The metric's folder, or its only / first sub-folder when it holds named model folders."""
    path = os.path.join(models, folder)
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        subs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if subs and folder in ("clip", "siglip", "pickscore"):
            return os.path.join(path, subs[0])
    return path


def cell_prompts(sweep, address: str | None, text: str | None) -> dict[str, str]:
    """cell id -> prompt: --prompt, else the input at ``address`` (default: the first text input) of each cell's graph."""
    if text is not None:
        return {r["cell"]: text for r in sweep.rows}
    workflow = sweep.meta.get("workflow") or sweep.spec.get("workflow")
    if not workflow or not os.path.exists(workflow):
        raise ScoreError("cannot find the sweep's workflow to read the prompt from: pass --prompt TEXT")
    api = wf.load(workflow)
    if wf.is_ui_format(api):
        raise ScoreError(f"{workflow} is in UI format: pass --prompt TEXT (or sweep an API workflow)")
    spec = sw.parse_spec(dict(sweep.spec, workflow=None), "sweep.json")
    base = sw.base_prompt(api, spec)
    out = {}
    for row in sweep.rows:
        prompt = sw.build_prompt(base, spec, sw.Cell(row["cell"], row["params"], row["seed"]))
        out[row["cell"]] = read_text(prompt, address)
    return out


def read_text(prompt: dict, address: str | None) -> str:
    if address:
        node, _, name = address.rpartition(".")
        ids = wf.find_nodes(prompt, node)
        value = prompt[ids[0]]["inputs"].get(name) if ids else None
        if not isinstance(value, str):
            raise ScoreError(f"--prompt-input {address!r} is not a text input of the sweep's workflow")
        return value
    for node in prompt.values():
        for name in PROMPT_INPUTS:
            if isinstance(node.get("inputs", {}).get(name), str):
                return node["inputs"][name]
    raise ScoreError("found no text input in the sweep's workflow: pass --prompt TEXT or --prompt-input NODE.INPUT")


def load_images(sweep, rows):
    import numpy as np
    from PIL import Image

    out = []
    for r in rows:
        with Image.open(sweep.out_dir / r["image"]) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def score(out_dir, metrics: list[str], models: str, prompt: str | None = None, prompt_input: str | None = None,
          reference_images: str | None = None, device: str = "cpu") -> dict:
    """Compute the metrics and write OUT/scores.json (merged with what it held)."""
    mm = core_module("metric_models")
    sweep = load_sweep(out_dir)
    rows = [r for r in sweep.rows if r.get("image")]
    path = sweep.out_dir / "scores.json"
    doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"cells": {}, "conditions": {}}
    wanted = [m for m in metrics if m in PROMPT_METRICS]
    if wanted:
        prompts = cell_prompts(sweep, prompt_input, prompt)
    for name in wanted:
        for r in rows:  # scored on the server during the sweep: kept, not recomputed
            if name in r:
                doc["cells"].setdefault(r["cell"], {})[name] = r[name]
        todo = [r for r in rows if name not in r]
        if not todo:
            continue
        folder, loader, fn = PROMPT_METRICS[name]
        module = core_module("image_reward") if name == "image_reward" else mm
        scorer = getattr(module, loader)(model_path(models, folder)).to(device)
        for start in range(0, len(todo), 8):
            batch = todo[start:start + 8]
            values = getattr(module, fn)(scorer, load_images(sweep, batch), [prompts[r["cell"]] for r in batch])
            for r, v in zip(batch, values.tolist()):
                doc["cells"].setdefault(r["cell"], {})[name] = v
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(sweep.condition(r), []).append(r)
    if "lpips" in metrics:
        scorer = mm.load_lpips(model_path(models, "lpips")).to(device)
        by_key = {(sweep.condition(r), r["seed"]): r for r in rows}
        for r in rows:
            ref_condition = sweep.reference(sweep.condition(r))
            ref = by_key.get((ref_condition, r["seed"])) if ref_condition else None
            if ref is not None:
                a, b = load_images(sweep, [r, ref])
                if a.shape == b.shape:
                    doc["cells"].setdefault(r["cell"], {})["lpips_to_reference"] = float(mm.lpips_pairwise(scorer, [a, b])[0, 1])
        for condition, members in groups.items():
            if len(members) > 1:
                doc["conditions"].setdefault(sweep.label(condition), {})["lpips_diversity"] = mm.mean_pairwise(
                    mm.lpips_pairwise(scorer, load_images(sweep, members)))
    if "fid" in metrics:
        if not reference_images:
            raise ScoreError("fid needs --reference-images DIR (a folder of real images)")
        scorer = mm.load_inception(model_path(models, "inception")).to(device)
        refs = sorted(p for p in Path(reference_images).iterdir() if p.suffix.lower() in sw.IMAGE_SUFFIXES)
        reference = load_images(sweep, [{"image": str(p.resolve())} for p in refs])
        for condition, members in groups.items():
            doc["conditions"].setdefault(sweep.label(condition), {})["fid"] = mm.fid_score(
                scorer, load_images(sweep, members), reference)
    doc["metrics"] = sorted(set(doc.get("metrics", [])) | set(metrics))
    sw.write_atomic(path, json.dumps(doc, indent=1))
    return doc


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="compute learned metrics (CLIPScore, PickScore, HPSv2, SigLIP, LPIPS, FID) for a sweep",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="the sweep's output folder")
    p.add_argument("--metrics", default="clip_score,pickscore,hpsv2,siglip,lpips",
                   help=f"comma-separated, from {', '.join([*PROMPT_METRICS, *SET_METRICS])}")
    p.add_argument("--models", default=None, help="metrics model root (default $ZLAB_METRICS_MODELS or "
                                                  "$COMFYUI_PATH/models/metrics)")
    p.add_argument("--prompt", default=None, help="the prompt of every cell (default: read from the workflow)")
    p.add_argument("--prompt-input", default=None, help="NODE.INPUT holding the prompt in the sweep's workflow")
    p.add_argument("--reference-images", default=None, help="folder of real images for fid")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=main)


def main(args) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in PROMPT_METRICS and m not in SET_METRICS]
    if unknown:
        raise ScoreError(f"unknown metrics {unknown}: choose from {', '.join([*PROMPT_METRICS, *SET_METRICS])}")
    mm = core_module("metric_models")
    try:
        score(args.sweep_dir, metrics, args.models or default_models_dir(), args.prompt, args.prompt_input,
              args.reference_images, args.device)
    except (mm.MissingWeights, mm.MissingPackage) as e:
        raise ScoreError(str(e)) from None
    print(f"wrote {Path(args.sweep_dir) / 'scores.json'}")
    return 0
