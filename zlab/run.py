"""``python -m zlab run WORKFLOW``: submit one workflow to ComfyUI, wait, download its outputs."""

from __future__ import annotations

import json
import os

from . import workflow as wf
from .api import ComfyClient


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one workflow (API or UI format) on a ComfyUI server",
                       description="Submit a workflow to a ComfyUI server, show progress, and download its images.")
    p.add_argument("workflow", help="workflow JSON, API format (workflows/api/*.json) or UI format")
    p.add_argument("--server", default=os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"),
                   help="ComfyUI server URL (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    p.add_argument("--prompt", help="positive prompt text (the node titled 'Positive Prompt')")
    p.add_argument("--seed", type=int, help="set every seed / noise_seed input")
    p.add_argument("--steps", type=int, help="set every steps input")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="set any input; NODE is a node id, title or class type (repeatable)")
    p.add_argument("--out", default="out", help="folder for downloaded outputs (default: out)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the prompt (default 3600)")
    p.add_argument("--print-prompt", action="store_true", help="print the final API prompt and exit without running")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def prepare(args, client: ComfyClient | None) -> dict:
    """Load the workflow as an API prompt and apply the command-line settings."""
    graph = wf.load(args.workflow)
    if wf.is_ui_format(graph):
        if client is None:
            raise wf.WorkflowError("a UI-format workflow needs the server's node schema: drop --print-prompt or pass an API workflow")
        graph = wf.ui_to_api(graph, client.object_info())
    if args.prompt is not None:
        graph = wf.set_prompt(graph, args.prompt)
    for names, value in ((("seed", "noise_seed"), args.seed), (("steps",), args.steps)):
        if value is not None:
            graph, count = wf.set_every(graph, names, value)
            if count == 0:
                raise wf.WorkflowError(f"the workflow has no {names[0]} input to set")
    for assignment in args.sets:
        graph = wf.set_input(graph, assignment)
    return graph


def main(args) -> int:
    client = ComfyClient(args.server)
    graph = prepare(args, None if args.print_prompt and not wf.is_ui_format(wf.load(args.workflow)) else client)
    if args.print_prompt:
        print(json.dumps(graph, indent=1))
        return 0
    result = client.run(graph, out_dir=args.out, timeout=args.timeout, progress=not args.quiet)
    print(f"prompt {result.prompt_id} finished in {result.seconds:.1f} s")
    for path in result.files:
        print(path)
    if not result.files:
        print("(the workflow produced no files)")
    return 0
