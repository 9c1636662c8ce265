"""``python -m zlab convert IN OUT``: turn a UI-format workflow into API format or back."""

from __future__ import annotations

import json

from . import workflow as wf
from .api import ComfyClient


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a workflow between UI format and API format",
                       description="Convert UI -> API (for POST /prompt) or API -> UI (for drag-and-drop). The node "
                                   "schema comes from a running server (--server) or from object_info JSON files (--schema).")
    p.add_argument("source", help="workflow JSON in either format")
    p.add_argument("dest", help="where to write the other format")
    p.add_argument("--server", help="ComfyUI server URL to read /object_info from")
    p.add_argument("--schema", action="append", default=[], help="object_info JSON file (repeatable, merged)")
    p.set_defaults(func=main)


def load_schema(server: str | None, files: list[str]) -> dict:
    """Merge node schemas from files and/or a live server."""
    schema = {}
    for path in files:
        schema.update(wf.load(path))
    if server:
        schema.update(ComfyClient(server).object_info())
    if not schema:
        raise wf.WorkflowError("no node schema: pass --server URL or --schema object_info.json")
    return schema


def main(args) -> int:
    graph = wf.load(args.source)
    schema = load_schema(args.server, args.schema)
    out = wf.ui_to_api(graph, schema) if wf.is_ui_format(graph) else wf.api_to_ui(graph, schema)
    with open(args.dest, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {'API' if wf.is_ui_format(graph) else 'UI'} format to {args.dest}")
    return 0
