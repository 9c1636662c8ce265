"""``python -m zlab train-lora``: train a context-refiner LoRA from text on a ComfyUI server, headless.

The training runs inside ComfyUI (it needs the loaded DiT and Qwen3, and uses the server's GPU
when it has one): this command takes the shipped training workflow, keeps the training node and
what it needs (loaders) plus a SaveImage of the loss plot, fills in the settings, queues it and
reports the saved LoRA file, the losses, and downloads the loss plot. The LoRA lands in the
server's ``models/loras`` folder, ready for the Refiner LoRA Loader or LoraLoaderModelOnly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import workflow as wf
from .api import ComfyClient

TRAIN_NODE = "ZImageLabRefinerLoRATrain"
DEFAULT_WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "api" / "zimage_refiner_lora_train.json"
SETTINGS = {  # command-line option -> training node input
    "style": "style", "rank": "rank", "alpha": "alpha", "lr": "learning_rate", "steps": "steps", "seed": "seed",
    "preservation_weight": "preservation_weight", "modules": "modules", "name": "lora_name",
}


def add_parser(sub) -> None:
    p = sub.add_parser("train-lora", help="train a context-refiner LoRA from text on a ComfyUI server",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"),
                   help="ComfyUI server URL (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    p.add_argument("--prompts", required=True, help="text file with the training prompts, one per line ('-' = stdin)")
    p.add_argument("--style", required=True, help="the style words the LoRA should learn to imply")
    p.add_argument("--preserve", help="text file with prompts to keep unchanged (default: the workflow's list)")
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--preservation-weight", dest="preservation_weight", type=float)
    p.add_argument("--modules", choices=["attention", "attention + feed-forward"])
    p.add_argument("--name", help="LoRA file name in the loras folder (a _00001 style number is appended)")
    p.add_argument("--unet", help="diffusion model file for UNETLoader (default: the workflow's)")
    p.add_argument("--clip", help="Qwen3 file for CLIPLoader (default: the workflow's)")
    p.add_argument("--workflow", default=str(DEFAULT_WORKFLOW), help="API workflow holding the training node")
    p.add_argument("--out", default="out", help="folder for the loss plot and the training record (default: out)")
    p.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to wait (default one day)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _read_lines(path: str) -> str:
    import sys

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def training_graph(api: dict) -> tuple[dict, str]:
    """The training node and its ancestors, plus a SaveImage of its loss plot: (graph, training node id)."""
    ids = [nid for nid, node in api.items() if node["class_type"] == TRAIN_NODE]
    if len(ids) != 1:
        raise wf.WorkflowError(f"the workflow has {len(ids)} {TRAIN_NODE} nodes: it needs exactly one")
    keep, todo = set(), [ids[0]]
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    graph = {nid: json.loads(json.dumps(api[nid])) for nid in keep}
    graph["loss_plot"] = {"class_type": "SaveImage", "_meta": {"title": "Save Loss Plot"},
                          "inputs": {"images": [ids[0], 2], "filename_prefix": "zimage_lab/refiner_lora_loss"}}
    return graph, ids[0]


def prepare(args) -> tuple[dict, str]:
    graph, nid = training_graph(wf.load(args.workflow))
    inputs = graph[nid]["inputs"]
    inputs["prompts"] = _read_lines(args.prompts)
    if args.preserve:
        inputs["preserve_prompts"] = _read_lines(args.preserve)
    for option, name in SETTINGS.items():
        value = getattr(args, option)
        if value is not None:
            inputs[name] = value
    for option, class_type, key in (("unet", "UNETLoader", "unet_name"), ("clip", "CLIPLoader", "clip_name")):
        value = getattr(args, option)
        if value is not None:
            targets = [n for n in graph.values() if n["class_type"] == class_type]
            if not targets:
                raise wf.WorkflowError(f"--{option} given but the workflow has no {class_type}")
            for node in targets:
                node["inputs"][key] = value
    return graph, nid


def main(args) -> int:
    graph, nid = prepare(args)
    client = ComfyClient(args.server)
    result = client.run(graph, out_dir=args.out, timeout=args.timeout, progress=not args.quiet)
    report = result.outputs.get(nid, {})
    losses = report.get("loss") or []
    for line in report.get("text", []):
        print(line)
    for name in report.get("lora_name", []):
        print(f"lora_name: {name}")
    if losses:
        print(f"loss {losses[0]:.6g} -> {losses[-1]:.6g} over {len(losses) - 1} steps")
    os.makedirs(args.out, exist_ok=True)
    record = Path(args.out) / "refiner_lora_training.json"
    record.write_text(json.dumps({"prompt_id": result.prompt_id, "text": report.get("text", []), "loss": losses,
                                  "files": result.files}, indent=1))
    for path in result.files:
        print(path)
    print(record)
    return 0
