"""Sweep specs and cells: parse and check a spec, list its cells, and build each cell's API prompt."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import workflow as wf
from .api import ComfyClient

REPO = Path(__file__).resolve().parent.parent
SPEC_KEYS = {"name", "description", "workflow", "mode", "params", "seeds", "seed_inputs", "fixed", "reference",
             "edge_threshold", "metrics"}
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
    metrics: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "workflow": self.workflow, "mode": self.mode,
                "params": self.params, "seeds": self.seeds, "seed_inputs": self.seed_inputs, "fixed": self.fixed,
                "reference": self.reference, "edge_threshold": self.edge_threshold,
                "metrics": self.metrics}


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
                reference=reference, edge_threshold=threshold, description=str(data.get("description", "")),
                metrics=spec_metrics(data.get("metrics"), source))


def spec_metrics(value, source: str) -> list[str]:
    """The spec's ``metrics`` list (names checked by server_score.plan)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise SweepError(f"{source}: metrics must be a list of names, e.g. [clip_score, pickscore]")
    from .server_score import ServerScoreError, plan
    try:
        plan(value)
    except ServerScoreError as e:
        raise SweepError(f"{source}: {e}") from None
    return list(value)


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
