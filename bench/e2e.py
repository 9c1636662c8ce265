"""Field benchmark: a real ComfyUI server started as users start it, the shipped workflows over HTTP.

For each configuration (``main.py`` defaults, ``--disable-cuda-malloc``, ``--disable-dynamic-vram``, a memory cap
through ``--reserve-vram``) it starts ComfyUI from its work tree with this pack in ``custom_nodes/`` and the
checkpoints in ``models/`` (full-size random ones in the official formats, see bench/checkpoints.py, read by the
stock UNETLoader / CLIPLoader / VAELoader), then

1. times the stock graph (UNETLoader -> ModelSamplingAuraFlow -> KSampler), ``zimage_turbo_lab``,
   ``zimage_turbo_accelerated`` and the accelerated one with FP8 in alternating blocks, a new seed per prompt:
   server-side execution time (the history's execution_start / execution_success) and per node (the
   websocket's ``executing`` messages);
2. checks that the stock graph and ``zimage_turbo_lab`` give pixel-identical images for the same seed;
3. runs every shipped API workflow once (the trainer's LoRA feeding ``zimage_refiner_lora``) and checks the server
   is still alive after each.

It prints a table and writes JSON (after every step, so a run cut short keeps what it measured).

    COMFYUI_PATH=~/comfy/ComfyUI python bench/e2e.py --models MODELS --out field.json
    python bench/e2e.py --tiny --configs defaults      (CPU, the tests' tiny models: what tests run)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from zlab.api import ComfyClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_server import Events, Server, gpu_total_gb, make_base, run_prompt, table  # noqa: E402

CONFIGS = {"defaults": [], "no-cuda-malloc": ["--disable-cuda-malloc"],
           "no-dynamic-vram": ["--disable-dynamic-vram"], "memory-cap": ["--reserve-vram", "{reserve}"]}
VARIANTS = ("stock", "lab", "accelerated", "accelerated_fp8")
DEPENDS = {"zimage_refiner_lora.json": "zimage_refiner_lora_train.json"}
"""Workflows that read a file another workflow writes run after it."""


# --------------------------------------------------------------------------------------------
# graphs


def load_api(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / name).read_text())


def stock_graph(lab: dict) -> dict:
    """zimage_turbo_lab with our sampler replaced by ComfyUI's official Turbo path (AuraFlow shift -> KSampler)."""
    api = copy.deepcopy(lab)
    sid, sampler = next((k, v) for k, v in api.items() if v["class_type"] == "ZImageLabSampler")
    i = sampler["inputs"]
    api["100"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": i["model"], "shift": i["shift"]}}
    api["101"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": i["positive"]}}
    api["102"] = {"class_type": "KSampler", "inputs": {
        "model": ["100", 0], "seed": i["seed"], "steps": i["steps"], "cfg": i["cfg"], "sampler_name": i["sampler_name"],
        "scheduler": i["scheduler"], "positive": i["positive"], "negative": ["101", 0],
        "latent_image": i["latent_image"], "denoise": i["denoise"]}}
    del api[sid]
    for node in api.values():
        for key, value in node["inputs"].items():
            if value == [sid, 0]:
                node["inputs"][key] = ["102", 0]
    return api


def fill_defaults(api: dict, object_info: dict) -> dict:
    """Required inputs a graph leaves out, set to the node's default (a swapped-in node may have more inputs)."""
    for node in api.values():
        required = object_info.get(node["class_type"], {}).get("input", {}).get("required", {})
        for name, spec in required.items():
            if name not in node["inputs"] and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                node["inputs"][name] = spec[1]["default"]
    return api


def variants(save_node: str | None, object_info: dict | None = None) -> dict:
    """The four timed graphs; the accelerated ones save through save_node when the server has it."""
    lab = load_api("zimage_turbo_lab.json")
    acc = load_api("zimage_turbo_accelerated.json")
    fp8 = copy.deepcopy(acc)
    for node in fp8.values():
        if node["class_type"] == "ZImageLabAccelerate":
            node["inputs"]["fp8_matmul"] = True
    out = {"stock": stock_graph(lab), "lab": lab, "accelerated": acc, "accelerated_fp8": fp8}
    if save_node:
        for name in ("accelerated", "accelerated_fp8"):
            for node in out[name].values():
                if node["class_type"] == "SaveImage":
                    node["class_type"] = save_node
            fill_defaults(out[name], object_info or {})
    for name, api in out.items():
        for node in api.values():
            if "filename_prefix" in node["inputs"]:
                node["inputs"]["filename_prefix"] = f"e2e/{name}"
    return out


def set_seed(api: dict, seed: int) -> dict:
    api = copy.deepcopy(api)
    for node in api.values():
        for key in ("seed", "noise_seed"):
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = seed
    return api


def shrink(api: dict, tiny: bool) -> dict:
    """The tests' tiny loaders and 64 px latents (tiny mode), else the graph as shipped."""
    if not tiny:
        return api
    import harness

    api = harness.shrink_images(harness.use_tiny_models(api), 64)
    for node in api.values():  # the tiny CPU run checks the plumbing, not the images: few steps
        inputs = node["inputs"]
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], 20 if node["class_type"] == "ZImageLabRefinerLoRATrain" else 2)
    return api


# --------------------------------------------------------------------------------------------
# steps


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


def timing(ctx, graphs: dict, blocks: int, per_block: int) -> dict:
    """Warm each variant once, then alternate blocks of prompts with fresh seeds; medians per image."""
    rows = {name: {"server_s": [], "wall_s": [], "nodes": [], "errors": [], "steady_s": []} for name in graphs}
    order = list(graphs)
    for name in order:  # first prompt: loads, compiles, captures (reported apart)
        record = ctx.prompt(graphs[name])
        rows[name]["first_s"] = record["server_s"]
        if not record["ok"]:
            rows[name]["errors"].append(record["error"])
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


def identity(ctx, graphs: dict, seeds=(7, 1234567)) -> dict:
    """Stock graph and zimage_turbo_lab at the same seeds: pixel-identical images?"""
    import numpy as np

    result = {"seeds": list(seeds), "identical": True, "max_abs_diff": 0, "accelerated_max_abs_diff": None}
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
    return result


def workflow_order(names: list) -> list:
    """Alphabetical, each workflow after the one whose file it reads."""
    order = sorted(names)
    for after, before in DEPENDS.items():
        if after in order and before in order:
            order.remove(after)
            order.insert(order.index(before) + 1, after)
    return order


def workflows(ctx, names: list) -> dict:
    """Every shipped API workflow once; the server must survive each (restarted if it did not)."""
    results = {}
    trained = None
    for name in workflow_order(names):
        api = load_api(name)
        if name in DEPENDS and trained:
            for node in api.values():
                if node["class_type"] == "ZImageLabRefinerLoRALoader":
                    node["inputs"]["lora_name"] = trained
        record = ctx.prompt(api, seed=None)
        alive = ctx.server.alive()
        results[name] = {"ok": record["ok"] and alive, "error": record["error"], "server_s": record["server_s"],
                         "server_alive": alive}
        if name == "zimage_refiner_lora_train.json" and record["ok"]:
            for out in record["outputs"].values():
                if "lora_name" in out:
                    trained = out["lora_name"][0]
        if not alive:
            results[name]["log_tail"] = ctx.server.log()[-3000:]
            ctx.restart()
        print(f"  {name:42s} {'ok' if results[name]['ok'] else 'FAILED'}"
              f"{'' if record['ok'] else ': ' + str(record['error'])[:200]}", flush=True)
    return results


class Context:
    """One configuration's server, client and websocket, and the prompt runner the steps use."""

    def __init__(self, args, name: str, flags: list):
        self.args, self.name, self.flags = args, name, flags
        self.base = Path(tempfile.mkdtemp(prefix=f"zimage-e2e-{name}-"))
        make_base(args.comfyui, self.base, args.models, args.tiny, args.python)
        self.crashes = 0
        self.seed = 1000
        self.start()

    def start(self):
        self.server = Server(self.args.comfyui, self.base, self.flags, self.args.python, self.args.tiny).start()
        self.client = ComfyClient(self.server.url, timeout=120)
        self.events = Events(self.server.url, self.client.client_id)

    def restart(self):
        self.crashes += 1
        self.events.close()
        self.server.stop()
        self.start()

    def prompt(self, api: dict, seed: int | None = 0) -> dict:
        if seed == 0:
            self.seed += 1
            seed = self.seed
        api = shrink(set_seed(api, seed) if seed is not None else api, self.args.tiny)
        record = run_prompt(self.client, self.events, api, self.args.prompt_timeout)
        if not record["ok"] and "cannot reach" in str(record["error"]):
            deadline = time.monotonic() + 120  # a crashed server can take a while to exit (pinned memory)
            while self.server.alive() and time.monotonic() < deadline:
                time.sleep(1)
            if self.server.alive():
                self.server.process.kill()  # not answering: counts as a crash too
        if not self.server.alive():
            record["ok"], record["error"] = False, f"server died: {self.server.log()[-3000:]}"
            self.restart()
        return record

    def system(self) -> dict:
        stats = self.client.get_json("/system_stats")
        version = (self.args.comfyui / "comfyui_version.py").read_text().split('"')[1]
        log = self.server.log()
        allocator = "cudaMallocAsync" if "cudaMallocAsync" in log else "native"
        return {"comfyui": version, "flags": self.flags, "system": stats.get("system", {}),
                "devices": stats.get("devices", []), "allocator_in_log": allocator,
                "dynamic_vram": "DynamicVRAM" in log or "aimdo" in log.lower()}

    def close(self):
        self.events.close()
        self.server.stop()



# --------------------------------------------------------------------------------------------
# report


def flags_for(name: str, cap_gb: float) -> list:
    total = gpu_total_gb()
    reserve = max(0.0, (total or cap_gb) - cap_gb)
    return [f.format(reserve=f"{reserve:.1f}") for f in CONFIGS[name]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")))
    parser.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI")
    parser.add_argument("--models", type=Path, help="folder with diffusion_models/, text_encoders/, vae/ "
                                                    "(bench/checkpoints.py writes them)")
    parser.add_argument("--tiny", action="store_true", help="CPU and the tests' tiny models (tests/testing_pack)")
    parser.add_argument("--configs", default="defaults,no-cuda-malloc,no-dynamic-vram,memory-cap")
    parser.add_argument("--steps", default="timing,identity,workflows", help="which steps to run per configuration")
    parser.add_argument("--timing-configs", default="", help="configurations that time (default: all)")
    parser.add_argument("--workflow-configs", default="", help="configurations that run the workflows (default: all)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--per-block", type=int, default=2)
    parser.add_argument("--workflows", default="all", help="comma-separated API workflow files, or all")
    parser.add_argument("--cap-gb", type=float, default=14.0, help="GPU memory left to ComfyUI in memory-cap")
    parser.add_argument("--save-node", default="ZImageLabSaveImage",
                        help="save node for the accelerated graphs, where the server has it")
    parser.add_argument("--prompt-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=Path("e2e.json"))
    args = parser.parse_args(argv)
    args.comfyui = args.comfyui.expanduser().resolve()
    if not args.tiny and args.models is None:
        parser.error("--models is required (or --tiny)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json")) if args.workflows == "all" \
        else args.workflows.split(",")
    steps = set(args.steps.split(","))
    timed = set(args.timing_configs.split(",")) if args.timing_configs else None
    flows = set(args.workflow_configs.split(",")) if args.workflow_configs else None
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    for config in args.configs.split(","):
        print(f"== {config}", flush=True)
        ctx = Context(args, config, flags_for(config, args.cap_gb))
        run = {"config": config, "system": ctx.system(), "crashes": 0}
        report["runs"].append(run)
        try:
            have = ctx.client.object_info()
            save_node = args.save_node if args.save_node in have else None
            run["save_node"] = save_node
            graphs = {k: v for k, v in variants(save_node, have).items()
                      if k in args.variants.split(",")}
            if "timing" in steps and (timed is None or config in timed):
                run["timing"] = timing(ctx, graphs, args.blocks, args.per_block)
                args.out.write_text(json.dumps(report, indent=1))
            if "identity" in steps:
                run["identity"] = identity(ctx, graphs)
                args.out.write_text(json.dumps(report, indent=1))
            if "workflows" in steps and (flows is None or config in flows):
                run["workflows"] = workflows(ctx, names)
        except Exception as e:  # keep what was measured; the report says what broke
            run["error"] = f"{type(e).__name__}: {e}"
            print(run["error"], flush=True)
        finally:
            run["crashes"] = ctx.crashes + (0 if ctx.server.alive() else 1)
            run["log_tail"] = ctx.server.log()[-4000:]
            ctx.close()
            args.out.write_text(json.dumps(report, indent=1))
        print(table({"runs": [run]}), flush=True)
    print(table(report))
    return 0 if all(r["crashes"] == 0 and "error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
