"""The field benchmark's steps on one server: timing in alternating blocks, stock = lab pixels, every workflow.

A helper of bench/e2e.py. Each step stores what it measured in the configuration's run record and saves the
report after every prompt; when the time budget cannot fit the next prompt, the step stops cleanly
(``OutOfTime``) and the record says so.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from field_graphs import DEPENDS, load_api, workflow_order


class OutOfTime(Exception):
    """The time budget cannot fit the next prompt (with the margin to stop the server and write the JSON)."""


def image_pixels(base: Path, record: dict, wait: float = 10.0) -> list:
    """uint8 arrays of the PNG files a prompt wrote (in node order; a background writer may still be busy)."""
    import numpy as np
    from PIL import Image

    out = []
    for f in record["files"]:
        if not f["filename"].endswith(".png"):
            continue
        path = base / f.get("type", "output") / f.get("subfolder", "") / f["filename"]
        deadline = time.monotonic() + wait
        while True:
            try:
                out.append(np.asarray(Image.open(path).convert("RGB")))
                break
            except (OSError, SyntaxError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows: dict) -> dict:
    """Medians per variant (per image, per node, steady state) and the ratio to the stock graph."""
    table = {}
    for name, row in rows.items():
        nodes = {}
        for per in row["nodes"]:
            for k, v in per.items():
                nodes.setdefault(k, []).append(v)
        table[name] = {"n": len(row["server_s"]), "server_s": median(row["server_s"]), "wall_s": median(row["wall_s"]),
                       "first_s": row.get("first_s"), "nodes": {k: median(v) for k, v in nodes.items()},
                       "steady_s": median(row["steady_s"]), "all_server_s": row["server_s"], "errors": row["errors"]}
    stock = table.get("stock", {})
    for row in table.values():
        for key, ref in (("x_stock", "server_s"), ("steady_x_stock", "steady_s")):
            row[key] = row[ref] / stock[ref] if stock.get(ref) and row[ref] else None
    return table


def timing(ctx, graphs: dict, blocks: int, per_block: int) -> dict:
    """Warm each variant once, then alternate blocks of prompts with fresh seeds; medians per image.

    The summary is stored in ``ctx.run["timing"]`` after every prompt (a run cut short keeps its numbers)."""
    rows = {name: {"server_s": [], "wall_s": [], "nodes": [], "errors": [], "steady_s": []} for name in graphs}
    order = list(graphs)

    def keep():
        ctx.run["timing"] = summarize(rows)
        ctx.save()

    try:
        for name in order:  # first prompt: loads, compiles, captures (reported apart)
            record = ctx.prompt(graphs[name])
            rows[name]["first_s"] = record["server_s"]
            if not record["ok"]:
                rows[name]["errors"].append(record["error"])
            keep()
        for b in range(blocks):
            for name in order[b % len(order):] + order[:b % len(order)]:
                if rows[name]["errors"]:
                    continue
                for i in range(per_block):
                    record = ctx.prompt(graphs[name])
                    if not record["ok"]:
                        rows[name]["errors"].append(record["error"])
                        break
                    for key in ("server_s", "wall_s", "nodes"):
                        rows[name][key].append(record[key])
                    if i > 0:  # not the first after another graph ran (which re-runs nodes whose inputs changed)
                        rows[name]["steady_s"].append(record["server_s"])
                    keep()
    finally:
        keep()
    return ctx.run["timing"]


def identity(ctx, graphs: dict, seeds=(7, 1234567)) -> dict:
    """Stock graph and zimage_turbo_lab at the same seeds: pixel-identical images?"""
    import numpy as np

    result = {"seeds": list(seeds), "identical": True, "max_abs_diff": 0, "accelerated_max_abs_diff": None}
    ctx.run["identity"] = result
    for seed in seeds:
        images = {}
        for name in ("stock", "lab", "accelerated"):
            record = ctx.prompt(graphs[name], seed=seed)
            images[name] = image_pixels(ctx.base, record) if record["ok"] else None
        if not images["stock"] or not images["lab"]:
            result["identical"] = False
            result["error"] = "a prompt failed"
            continue
        same = all(np.array_equal(a, b) for a, b in zip(images["stock"], images["lab"]))
        result["identical"] &= same
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images["stock"], images["lab"]))
        result["max_abs_diff"] = max(result["max_abs_diff"], diff)
        if images["accelerated"]:
            acc = max(int(np.abs(a.astype(int) - b.astype(int)).max())
                      for a, b in zip(images["stock"], images["accelerated"]))
            result["accelerated_max_abs_diff"] = max(result["accelerated_max_abs_diff"] or 0, acc)
        result.setdefault("done_seeds", []).append(seed)
        ctx.save()
    return result


def workflows(ctx, names: list) -> dict:
    """Every shipped API workflow once; the server must survive each (restarted if it did not)."""
    results = ctx.run.setdefault("workflows", {})
    trained = None
    for name in workflow_order(names):
        api = load_api(name)
        if name in DEPENDS and trained:
            for node in api.values():
                if node["class_type"] == "ZImageLabRefinerLoRALoader":
                    node["inputs"]["lora_name"] = trained
        record = ctx.prompt(api, seed=None)
        alive = not record.get("server_died")
        results[name] = {"ok": record["ok"] and alive, "error": record["error"], "server_s": record["server_s"],
                         "server_alive": alive}
        if name == "zimage_refiner_lora_train.json" and record["ok"]:
            for out in record["outputs"].values():
                if "lora_name" in out:
                    trained = out["lora_name"][0]
        if not alive:
            results[name]["log_tail"] = record["error"][-3000:]
        ctx.save()
        print(f"  {name:42s} {'ok' if results[name]['ok'] else 'FAILED'}"
              f"{'' if record['ok'] else ': ' + str(record['error'])[:200]}", flush=True)
    return results


