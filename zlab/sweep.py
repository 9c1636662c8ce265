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

import csv
import hashlib
import io
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import workflow as wf
from .api import ComfyClient, ComfyError, output_files

REPO = Path(__file__).resolve().parent.parent
SPEC_KEYS = {"name", "description", "workflow", "mode", "params", "seeds", "seed_inputs", "fixed", "reference",
             "edge_threshold"}
MODES = ("grid", "zip")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RESULTS = "results.jsonl"


class SweepError(wf.WorkflowError):
    """A sweep that cannot run as specified, with a message meant for a person."""


def metrics_module():
    """core.metrics of this pack (plain numpy), importable without ComfyUI."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from core import metrics

    return metrics


# ---------------------------------------------------------------------------------------------- spec


@dataclass
class Spec:
    """A parsed, checked sweep spec."""

    name: str
    params: dict[str, list]
    seeds: list[int]
    mode: str = "grid"
    workflow: str | None = None
    seed_inputs: list[str] | None = None
    fixed: dict[str, object] = field(default_factory=dict)
    reference: dict[str, object] | None = None
    edge_threshold: float = 0.5
    description: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "workflow": self.workflow, "mode": self.mode,
                "params": self.params, "seeds": self.seeds, "seed_inputs": self.seed_inputs, "fixed": self.fixed,
                "reference": self.reference, "edge_threshold": self.edge_threshold}


def read_spec_file(path: str) -> dict:
    """The raw mapping of a YAML or JSON spec file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"cannot read sweep spec {path}: {e}") from None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SweepError(f"{path} is YAML: install PyYAML (pip install pyyaml) or write the spec as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepError(f"cannot parse {path} as YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SweepError(f"cannot parse {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep spec is a mapping with keys such as params, seeds, mode (see docs/sweeps.md)")
    return data


def parse_seeds(value) -> list[int]:
    """Seeds from a list, a 'a-b' range string / comma list, or {start, count}."""
    if isinstance(value, dict):
        unknown = set(value) - {"start", "count"}
        if unknown or "count" not in value:
            raise SweepError("seeds as a mapping takes start and count, e.g. seeds: {start: 0, count: 4}")
        start, count = int(value.get("start", 0)), int(value["count"])
        seeds = list(range(start, start + count))
    elif isinstance(value, str):
        seeds = []
        for item in (s for s in re.split(r"[,\s]+", value.strip()) if s):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if m is None:
                raise SweepError(f"seeds: cannot read {item!r}; write numbers or ranges like '0-3'")
            seeds += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    elif isinstance(value, (list, tuple)):
        seeds = []
        for s in value:
            if isinstance(s, bool) or not isinstance(s, int):
                raise SweepError(f"seeds: {s!r} is not a whole number")
            seeds.append(s)
    elif isinstance(value, int) and not isinstance(value, bool):
        seeds = [value]
    else:
        raise SweepError("seeds must be a list of numbers, a range string like '0-3', or {start: 0, count: 4}")
    if not seeds:
        raise SweepError("seeds is empty: list at least one seed, e.g. seeds: [42] (every cell runs once per seed)")
    if any(s < 0 for s in seeds):
        raise SweepError(f"seeds: {min(seeds)} is negative; ComfyUI seeds are 0 or more")
    if len(set(seeds)) != len(seeds):
        raise SweepError("seeds: some seeds are listed twice; each seed once")
    return seeds


def check_address(address: str, where: str) -> None:
    if not isinstance(address, str) or "." not in address:
        raise SweepError(f"{where}: {address!r} is not a node input; write it as 'Node Title.input' (e.g. 'Z-Image Sampler.steps')")


def parse_spec(data: dict, source: str = "spec", base_dir: str | None = None) -> Spec:
    """Check a raw spec mapping and return a Spec (relative workflow paths resolve against base_dir)."""
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise SweepError(f"{source}: unknown key(s) {sorted(unknown)}; a spec takes {sorted(SPEC_KEYS)}")
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{source}: params must map at least one 'Node Title.input' to a list of values")
    clean: dict[str, list] = {}
    for address, values in params.items():
        check_address(address, f"{source} params")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise SweepError(f"{source}: params {address!r} has no values; list at least one")
        clean[address] = values
    mode = data.get("mode", "grid")
    if mode not in MODES:
        raise SweepError(f"{source}: mode is {mode!r}; choose grid (every combination) or zip (the i-th values together)")
    if mode == "zip" and len({len(v) for v in clean.values()}) > 1:
        lengths = {a: len(v) for a, v in clean.items()}
        raise SweepError(f"{source}: mode zip needs lists of equal length, got {lengths}")
    if "seeds" not in data:
        raise SweepError(f"{source}: no seeds; add e.g. seeds: [42] (every cell runs once per seed)")
    seeds = parse_seeds(data["seeds"])
    seed_inputs = data.get("seed_inputs")
    if seed_inputs is not None:
        seed_inputs = [seed_inputs] if isinstance(seed_inputs, str) else list(seed_inputs)
        for address in seed_inputs:
            check_address(address, f"{source} seed_inputs")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"{source}: fixed must map 'Node Title.input' to one value")
    for address in fixed:
        check_address(address, f"{source} fixed")
    reference = data.get("reference")
    if reference is not None:
        if not isinstance(reference, dict) or not reference:
            raise SweepError(f"{source}: reference must map swept inputs to the values of the reference cell")
        for address, value in reference.items():
            if address not in clean:
                raise SweepError(f"{source}: reference names {address!r}, which is not swept in params")
            if value not in clean[address]:
                raise SweepError(f"{source}: reference {address} = {value!r} is not one of its values {clean[address]}")
    workflow = data.get("workflow")
    if workflow is not None and base_dir is not None and not os.path.isabs(workflow):
        workflow = os.path.normpath(os.path.join(base_dir, workflow))
    threshold = float(data.get("edge_threshold", 0.5))
    name = str(data.get("name") or Path(source).stem)
    return Spec(name=name, params=clean, seeds=seeds, mode=mode, workflow=workflow, seed_inputs=seed_inputs, fixed=fixed,
                reference=reference, edge_threshold=threshold, description=str(data.get("description", "")))


def load_spec(path: str) -> Spec:
    """Read and check a spec file."""
    return parse_spec(read_spec_file(path), source=str(path), base_dir=str(Path(path).resolve().parent))


# --------------------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One run of the sweep: a value per swept input, and a seed."""

    id: str
    params: dict
    seed: int

    @property
    def label(self) -> str:
        return ", ".join(f"{short(a)}={v}" for a, v in self.params.items()) + f", seed={self.seed}"

    @property
    def slug(self) -> str:
        text = "_".join(f"{short(a)}-{v}" for a, v in self.params.items()) + f"_seed-{self.seed}"
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:120]


def short(address: str) -> str:
    """The input name of an address ('Z-Image Sampler.shift' -> 'shift')."""
    return address.rsplit(".", 1)[1]


def cell_id(params: dict, seed: int) -> str:
    """A stable id of a cell: the same values and seed always give the same id."""
    canonical = json.dumps({"params": params, "seed": seed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def combinations(spec: Spec) -> list[dict]:
    """The value combinations, grid or zip, in spec order."""
    addresses = list(spec.params)
    if spec.mode == "zip":
        rows = zip(*spec.params.values())
    else:
        rows = itertools.product(*spec.params.values())
    return [dict(zip(addresses, row)) for row in rows]


def cells(spec: Spec) -> list[Cell]:
    """Every cell: each combination once per seed."""
    return [Cell(cell_id(combo, seed), combo, seed) for combo in combinations(spec) for seed in spec.seeds]


# ------------------------------------------------------------------------------------------ workflow


def load_workflow(path: str, client: ComfyClient | None) -> dict:
    """The workflow as an API prompt (a UI-format file is converted with the server's /object_info)."""
    graph = wf.load(path)
    if wf.is_ui_format(graph):
        if client is None:
            raise SweepError(f"{path} is a UI-format workflow: converting it needs a server's node schema (pass --server)")
        graph = wf.ui_to_api(graph, client.object_info())
    return graph


def assign(api: dict, address: str, value) -> dict:
    """Set one input, with the spec named in the error when the workflow lacks it."""
    try:
        return wf.set_input(api, f"{address}={json.dumps(value)}")
    except wf.WorkflowError as e:
        raise SweepError(f"the sweep spec names {address!r}, which this workflow lacks: {e}") from None


def apply_seed(api: dict, seed: int, seed_inputs: list[str] | None) -> dict:
    """Set the seed: on the named inputs, else on every seed / noise_seed widget."""
    if seed_inputs:
        for address in seed_inputs:
            api = assign(api, address, seed)
        return api
    api, count = wf.set_every(api, ("seed", "noise_seed"), seed)
    if count == 0:
        raise SweepError("the workflow has no seed or noise_seed input to set: name the seed input with "
                         "seed_inputs: ['Node Title.input'] in the spec")
    return api


def base_prompt(api: dict, spec: Spec, sets: list[str] = ()) -> dict:
    """The workflow with the spec's fixed settings and the command line's --set applied."""
    for address, value in spec.fixed.items():
        api = assign(api, address, value)
    for assignment in sets:
        api = wf.set_input(api, assignment)
    return api


def build_prompt(base: dict, spec: Spec, cell: Cell) -> dict:
    """The API prompt of one cell."""
    api = base
    for address, value in cell.params.items():
        api = assign(api, address, value)
    return apply_seed(api, cell.seed, spec.seed_inputs)


def check_values(api: dict, spec: Spec, object_info: dict) -> None:
    """Raise SweepError when a swept value is outside the node schema's range or choices."""
    for address, values in spec.params.items():
        selector, name = address.rsplit(".", 1)
        for nid in wf.find_nodes(api, selector):
            schema = object_info.get(api[nid]["class_type"])
            if schema is None:
                continue
            spec_entry = dict(wf.input_order(schema)).get(name)
            if spec_entry is None:
                continue
            kind = spec_entry[0]
            options = spec_entry[1] if len(spec_entry) > 1 and isinstance(spec_entry[1], dict) else {}
            choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
            for value in values:
                if choices is not None and value not in choices:
                    raise SweepError(f"the sweep spec sets {address} to {value!r}, not one of {choices}")
                if kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
                    low, high = options.get("min"), options.get("max")
                    if (low is not None and value < low) or (high is not None and value > high):
                        raise SweepError(f"the sweep spec sets {address} to {value}, outside its range [{low}, {high}]")


def validate(api: dict, spec: Spec, object_info: dict | None = None, sets: list[str] = ()) -> dict:
    """Check every address and value of the spec against the workflow; return the base prompt."""
    base = base_prompt(api, spec, sets)
    for address, values in spec.params.items():
        assign(base, address, values[0])
    apply_seed(base, spec.seeds[0], spec.seed_inputs)
    if object_info is not None:
        check_values(base, spec, object_info)
    return base


def prompt_hash(base: dict) -> str:
    """Fingerprint of the base prompt, so a results folder is never resumed with another workflow."""
    return hashlib.sha1(json.dumps(base, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- results


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


# -------------------------------------------------------------------------------------------- runner


class ServerGone(Exception):
    """A server stopped answering; its cells go back to the queue for the other servers."""


class Runner:
    """Runs the cells on the servers, appending each finished cell to the results.

    Each server has one feeder thread that keeps ``per_server`` prompts in flight (queued or running
    on that server): whenever one finishes, the next cell is queued before anything else happens, so
    the server always has the next prompt waiting and its GPU never idles between prompts. Downloads
    and image metrics run on a separate pool and never delay the next submission. A row is appended
    only once its files are on disk, so a kill at any moment loses no finished row and writes none twice.
    """

    POLL_S = 0.1

    def __init__(self, spec: Spec, base: dict, urls: list[str], out_dir: Path, per_server: int = 3,
                 timeout: float = 3600.0, log=print):
        self.spec, self.base, self.urls, self.out_dir = spec, base, urls, out_dir
        self.per_server, self.timeout, self.log = per_server, timeout, log
        self.images = out_dir / "images"
        self.results = Results(out_dir)
        self.todo: queue.Queue[Cell] = queue.Queue()
        self.dead: set[str] = set()
        self.failed: list[tuple[Cell, str]] = []
        self.count_lock = threading.Lock()
        self.finished = 0
        self.pending: dict[str, tuple[ComfyClient, str]] = {}

    def run(self, all_cells: list[Cell]) -> None:
        todo = [c for c in all_cells if not self.results.done(c)]
        skipped = len(all_cells) - len(todo)
        self.total = len(todo)
        self.log(f"sweep {self.spec.name}: {len(all_cells)} cells, {skipped} already done, {len(todo)} to run "
                 f"on {len(self.urls)} server(s)")
        if not todo:
            return
        self.images.mkdir(parents=True, exist_ok=True)
        for cell in todo:
            self.todo.put(cell)
        with ThreadPoolExecutor(max(2, len(self.urls)), thread_name_prefix="sweep download") as downloads:
            feeders = [threading.Thread(target=self.feed, args=(url, downloads), daemon=True, name=f"sweep {url}")
                       for url in self.urls]
            for t in feeders:
                t.start()
            try:
                while any(t.is_alive() for t in feeders):
                    for t in feeders:
                        t.join(timeout=0.5)
            except KeyboardInterrupt:
                self.cancel_pending()
                downloads.shutdown(wait=False, cancel_futures=True)
                raise
        if not self.todo.empty():
            left = self.todo.qsize()
            raise SweepError(f"every server became unreachable ({', '.join(sorted(self.dead))}); {left} cells did not run. "
                             "Start a server and rerun the same command: finished cells are kept.")

    def feed(self, url: str, downloads: ThreadPoolExecutor) -> None:
        """Keep ``per_server`` prompts in flight on one server until no cell is left."""
        client = ComfyClient(url, timeout=60)
        in_flight: dict[str, tuple[Cell, float, float]] = {}  # prompt id -> cell, monotonic start, epoch queued
        try:
            while True:
                while len(in_flight) < self.per_server and self.submit_next(client, in_flight):
                    pass
                if not in_flight:
                    return
                for prompt_id, entry in self.finished_prompts(client, in_flight):
                    cell, start, queued_at = in_flight.pop(prompt_id)
                    self.pending.pop(prompt_id, None)
                    downloads.submit(self.record, client, cell, prompt_id, entry, time.monotonic() - start, queued_at)
        except ServerGone:
            self.dead.add(url)
            for cell, _, _ in in_flight.values():
                self.todo.put(cell)
            self.log(f"server {url} is unreachable; its cells go to the other servers")
        except Exception as e:  # a bug or an answer we cannot read: fail this server's cells, keep the others going
            self.dead.add(url)
            for cell, _, _ in in_flight.values():
                self.fail(cell, url, f"{type(e).__name__}: {e}")
            self.log(f"stopped sending cells to {url}: {type(e).__name__}: {e}")

    def submit_next(self, client: ComfyClient, in_flight: dict) -> bool:
        """Queue the next cell on this server; False when no cell is left."""
        try:
            cell = self.todo.get_nowait()
        except queue.Empty:
            return False
        start = time.monotonic()
        try:
            prompt_id = client.queue(build_prompt(self.base, self.spec, cell))
        except ComfyError as e:
            if not self.reachable(client):
                self.todo.put(cell)
                raise ServerGone(client.url) from None
            self.fail(cell, client.url, str(e))
            return True
        in_flight[prompt_id] = (cell, start, round(time.time(), 3))
        self.pending[prompt_id] = (client, prompt_id)
        return True

    def finished_prompts(self, client: ComfyClient, in_flight: dict) -> list[tuple[str, dict | Exception]]:
        """Wait until the oldest in-flight prompt ended (a server runs its queue in order, so only the oldest
        is asked about, and those behind it once it is done); each one's history entry or its error."""
        while True:
            done = []
            for prompt_id, (cell, start, _) in in_flight.items():
                try:
                    entry = client.history(prompt_id)
                except Exception:
                    if not self.reachable(client):
                        raise ServerGone(client.url) from None
                    break  # a hiccup: ask again at the next poll
                status = (entry or {}).get("status", {})
                if entry is not None and (status.get("completed") is not None or status.get("status_str") == "error"):
                    try:
                        done.append((prompt_id, client._check_status(prompt_id, entry)))
                    except ComfyError as e:
                        done.append((prompt_id, e))
                elif time.monotonic() - start > self.timeout:
                    done.append((prompt_id, ComfyError(f"prompt {prompt_id} did not finish within {self.timeout:.0f} s")))
                else:
                    break
            if done:
                return done
            time.sleep(self.POLL_S)

    def record(self, client: ComfyClient, cell: Cell, prompt_id: str, entry, wall: float, queued_at: float) -> None:
        """Download a finished cell's files and append its row (or record its failure)."""
        if isinstance(entry, Exception):
            self.fail(cell, client.url, str(entry))
            return
        try:
            files = self.download(client, cell, entry.get("outputs", {}))
            pictures = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            row = {"cell": cell.id, "label": cell.label, "status": "ok", "seed": cell.seed, "params": cell.params,
                   "image": pictures[0].relative_to(self.out_dir).as_posix() if pictures else None,
                   "files": [f.relative_to(self.out_dir).as_posix() for f in files], "server": client.url,
                   "prompt_id": prompt_id, "seconds": execution_seconds(entry), "wall_seconds": round(wall, 3),
                   "queued_at": queued_at}
            if pictures:
                row.update(image_metrics(pictures[0], self.spec.edge_threshold))
        except Exception as e:  # an unreadable output file, a full disk: record it and go on with the others
            self.fail(cell, client.url, f"{type(e).__name__}: {e}")
            return
        self.results.append(row)
        with self.count_lock:
            self.finished += 1
            n = self.finished
        self.log(f"[{n}/{self.total}] {cell.label} on {client.url}: {row['seconds'] or wall:.1f} s")

    def fail(self, cell: Cell, url: str, error: str) -> None:
        """Record a failed cell (retried on the next run) and tell the user."""
        self.failed.append((cell, error))
        self.results.append({"cell": cell.id, "label": cell.label, "status": "error", "error": error,
                             "server": url, "seed": cell.seed, "params": cell.params})
        self.log(f"cell {cell.label} failed: {error}")

    @staticmethod
    def reachable(client: ComfyClient) -> bool:
        try:
            client.get_json("/system_stats")
            return True
        except ComfyError:
            return False

    def download(self, client: ComfyClient, cell: Cell, outputs: dict) -> list[Path]:
        """Every output file of a cell, renamed after the cell (images of type 'output', else previews)."""
        records = output_files(outputs)
        saved = [r for r in records if r.get("type", "output") == "output"] or records
        tmp = self.images / f".{cell.id}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        paths = []
        for n, record in enumerate(saved):
            got = Path(client.download(record, str(tmp / str(n))))
            suffix = "" if len(saved) == 1 else f"_{n + 1}"
            dest = self.images / f"{cell.slug}_{cell.id[:6]}{suffix}{got.suffix}"
            os.replace(got, dest)
            paths.append(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        return paths

    def cancel_pending(self) -> None:
        """Best effort on Ctrl-C: take our still-queued prompts off the servers."""
        for client, prompt_id in list(self.pending.values()):
            try:
                client._open("/queue", data=json.dumps({"delete": [prompt_id]}).encode())
            except Exception:
                pass


# ------------------------------------------------------------------------------------------- outputs


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
                                "pixel_mae", "psnr") if any(m in r for r in rows)]
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


# ----------------------------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a workflow over a grid of settings and seeds, on one or more servers",
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
    p.add_argument("--dry-run", action="store_true", help="check the spec against the workflow and list the cells; run nothing")
    p.set_defaults(func=main)


def pack_version() -> str:
    """The version in this pack's pyproject.toml."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else "unknown"


def setup_record(clients: list[ComfyClient]) -> dict:
    """What zlab report's setup section shows: the exact command, versions and each server's devices."""
    servers = []
    for client in clients:
        stats = client.get_json("/system_stats")
        system = stats.get("system", {})
        servers.append({"url": client.url, "comfyui_version": system.get("comfyui_version"),
                        "pytorch_version": system.get("pytorch_version"), "python_version": system.get("python_version"),
                        "devices": [{"name": d.get("name"), "type": d.get("type"), "vram_total": d.get("vram_total")}
                                    for d in stats.get("devices", [])]})
    return {"command": " ".join(["python", "-m", "zlab", *map(shlex.quote, sys.argv[1:])]),
            "pack_version": pack_version(), "servers": servers, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(args) -> int:
    spec = load_spec(args.spec)
    workflow = args.workflow or spec.workflow
    if not workflow:
        raise SweepError("no workflow: give --workflow FILE or a 'workflow:' entry in the spec")
    urls = list(dict.fromkeys(args.servers or [os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")]))
    if args.per_server < 1:
        raise SweepError(f"--per-server is {args.per_server}: keep at least 1 prompt in flight per server")
    raw = wf.load(workflow)
    needs_server = wf.is_ui_format(raw) or not args.dry_run
    clients = [ComfyClient(url, timeout=30) for url in urls] if needs_server else []
    for client in clients:
        client.get_json("/system_stats")  # raises "cannot reach ComfyUI at URL ..." for a server that is down
    object_info = clients[0].object_info() if clients else None
    api = load_workflow(workflow, clients[0] if clients else None)
    base = validate(api, spec, object_info, args.sets)
    all_cells = cells(spec)
    if args.dry_run:
        for cell in all_cells:
            print(f"{cell.id}  {cell.label}")
        print(f"{len(all_cells)} cells; the spec matches the workflow {workflow}")
        return 0
    for client in clients[1:]:
        missing = client.missing_node_types(base)
        if missing:
            raise SweepError(f"the server at {client.url} lacks node types {sorted(missing)}")
    missing = clients[0].missing_node_types(base)
    if missing:
        raise SweepError(f"the server at {clients[0].url} lacks node types {sorted(missing)}")

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
                                        "setup": setup_record(clients)}, indent=1))
    runner = Runner(spec, base, urls, out_dir, per_server=args.per_server, timeout=args.timeout)
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
