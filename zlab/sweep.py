"""``python -m zlab sweep SPEC``: run a workflow over a grid of settings and seeds on ComfyUI servers.

A sweep spec (YAML or JSON, see docs/sweeps.md) names the workflow, which node inputs take which
values ("Node Title.input", as ``python -m zlab run --set`` addresses them), the seeds, and whether
the values form a grid (every combination) or are zipped. Every cell (one combination and one
seed) is submitted to one of the servers; each server always has the next prompts queued behind
the one it is running, so its GPU never waits for the sweep.

Finished cells are appended, one JSON line each, to OUT/results.jsonl as soon as their images are
on disk, so an interrupted sweep resumes where it stopped: rerunning the same command skips every
cell already there. At the end OUT holds the images, results.csv and results.json (every
parameter, seed, image path, timing and the image metrics of core/metrics.py) and a labelled
contact sheet.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from . import workflow as wf
from .api import ComfyClient
from .sweep_outputs import CellFailures, Recorder, fetch_outputs  # noqa: F401
from .sweep_http import Runner, ServerGone  # noqa: F401  (re-exported: zlab.sweep keeps its names)
from .sweep_outputs import (Results, contact_sheet, csv_value, execution_seconds, image_metrics,  # noqa: F401
                            reference_distances, table_columns, write_atomic, write_tables)
from .sweep_spec import (IMAGE_SUFFIXES, MODES, REPO, RESULTS, SPEC_KEYS, Cell, Spec, SweepError,  # noqa: F401
                         apply_seed, assign, base_prompt, build_prompt, cell_id, cells, check_address, check_values,
                         combinations, load_spec, load_workflow, metrics_module, parse_seeds, parse_spec, prompt_hash,
                         read_spec_file, short, validate)

# ----------------------------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a workflow over a grid of settings and seeds, on one or more servers or a Ray cluster",
                       description="Run every cell of a sweep spec (YAML or JSON; see docs/sweeps.md) through ComfyUI's API, "
                                   "resumably, and write the images, results.csv / results.json and a contact sheet.")
    p.add_argument("spec", help="sweep spec file (sweeps/*.yaml)")
    p.add_argument("--workflow", help="workflow JSON (API or UI format); overrides the spec's workflow")
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="ComfyUI server URL; repeat for several servers (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    p.add_argument("--out", help="output folder (default: sweeps_out/<spec name>); rerun with the same folder to resume")
    p.add_argument("--per-server", type=int, default=3,
                   help="prompts kept in flight per server: 1 running + the rest queued behind it (default 3)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="set an input in every cell (repeatable)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one cell (default 3600)")
    p.add_argument("--server-timeout", type=float, default=60.0,
                   help="a server that does not answer for this many seconds is taken out of rotation and its cells go "
                        "to the others; it comes back when it answers again (default 60)")
    p.add_argument("--give-up", type=float, default=600.0,
                   help="stop (resumably) when no server or worker has answered for this many seconds (default 600)")
    p.add_argument("--dry-run", action="store_true", help="check the spec against the workflow and list the cells; run nothing")
    from .sweep_ray import add_arguments

    add_arguments(p)
    p.set_defaults(func=main)


def pack_version() -> str:
    """The version in this pack's pyproject.toml."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else "unknown"


def server_record(url: str, stats: dict) -> dict:
    """A server's versions and devices, from its /system_stats."""
    system = stats.get("system", {})
    return {"url": url, "comfyui_version": system.get("comfyui_version"),
            "pytorch_version": system.get("pytorch_version"), "python_version": system.get("python_version"),
            "devices": [{"name": d.get("name"), "type": d.get("type"), "vram_total": d.get("vram_total")}
                        for d in stats.get("devices", [])]}


def setup_record(clients: list[ComfyClient], stats: list[tuple[str, dict]] = ()) -> dict:
    """What zlab report's setup section shows: the exact command, versions and each server's devices."""
    servers = [server_record(c.url, c.get_json("/system_stats")) for c in clients]
    servers += [server_record(url, s) for url, s in stats]
    return {"command": " ".join(["python", "-m", "zlab", *map(shlex.quote, sys.argv[1:])]),
            "pack_version": pack_version(), "servers": servers, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def check_args(args) -> None:
    if args.per_server < 1:
        raise SweepError(f"--per-server is {args.per_server}: keep at least 1 prompt in flight per server")
    if args.server_timeout <= 0 or args.give_up <= 0:
        raise SweepError("--server-timeout and --give-up are seconds, more than 0")


def prepare(spec: Spec, workflow: str, args, object_info: dict | None, client: ComfyClient | None):
    """The checked base prompt and the cells; prints them and returns None on --dry-run."""
    api = load_workflow(workflow, client) if client is not None or not wf.is_ui_format(wf.load(workflow)) else None
    if api is None:
        raise SweepError(f"{workflow} is a UI-format workflow: converting it needs a server's node schema (pass --server)")
    base = validate(api, spec, object_info, args.sets)
    all_cells = cells(spec)
    if args.dry_run:
        for cell in all_cells:
            print(f"{cell.id}  {cell.label}")
        print(f"{len(all_cells)} cells; the spec matches the workflow {workflow}")
        return None
    return base, all_cells


def open_out_dir(spec: Spec, workflow: str, args, base: dict, setup: dict) -> Path:
    """The output folder, refused when it holds a sweep of another workflow; sweep.json written."""
    out_dir = Path(args.out or os.path.join("sweeps_out", spec.name))
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = prompt_hash(base)
    meta_path = out_dir / "sweep.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        if previous.get("prompt_hash") != fingerprint:
            raise SweepError(f"{out_dir} holds a sweep of another workflow or other fixed settings; "
                             "use a new --out folder (finished cells are only reused for the same workflow)")
    write_atomic(meta_path, json.dumps({"spec": spec.as_dict(), "workflow": str(workflow), "prompt_hash": fingerprint,
                                        "setup": setup}, indent=1))
    return out_dir


def run_and_report(spec: Spec, workflow: str, all_cells: list[Cell], runner, out_dir: Path) -> int:
    """Run the cells, then write the tables and contact sheet (also after Ctrl-C) and report."""
    try:
        runner.run(all_cells)
    finally:
        rows = write_tables(spec, all_cells, runner.results, out_dir, str(workflow))
        sheet = contact_sheet(spec, all_cells, rows, out_dir)
    print(f"{len(rows)} of {len(all_cells)} cells finished; results in {out_dir / 'results.csv'}"
          + (f", contact sheet {sheet}" if sheet else ""))
    if runner.failed:
        print(f"{len(runner.failed)} cells failed (rerun the same command to retry them):", file=sys.stderr)
        for cell, error in runner.failed:
            print(f"  {cell.label}: {error}", file=sys.stderr)
        return 1
    return 0


def main(args) -> int:
    spec = load_spec(args.spec)
    workflow = args.workflow or spec.workflow
    if not workflow:
        raise SweepError("no workflow: give --workflow FILE or a 'workflow:' entry in the spec")
    check_args(args)
    if args.ray is not None:
        from . import sweep_ray

        return sweep_ray.main(args, spec, workflow)
    urls = list(dict.fromkeys(args.servers or [os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")]))
    needs_server = wf.is_ui_format(wf.load(workflow)) or not args.dry_run
    clients = [ComfyClient(url, timeout=30) for url in urls] if needs_server else []
    for client in clients:
        client.get_json("/system_stats")  # raises "cannot reach ComfyUI at URL ..." for a server that is down
    prepared = prepare(spec, workflow, args, clients[0].object_info() if clients else None, clients[0] if clients else None)
    if prepared is None:
        return 0
    base, all_cells = prepared
    for client in clients:
        missing = client.missing_node_types(base)
        if missing:
            raise SweepError(f"the server at {client.url} lacks node types {sorted(missing)}")
    out_dir = open_out_dir(spec, workflow, args, base, setup_record(clients))
    runner = Runner(spec, base, urls, out_dir, per_server=args.per_server, timeout=args.timeout,
                    server_timeout=args.server_timeout, give_up=args.give_up)
    return run_and_report(spec, workflow, all_cells, runner, out_dir)
