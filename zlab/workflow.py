"""ComfyUI workflows in both formats: convert UI <-> API with a node schema, and set inputs.

UI format (what the browser saves and drag-and-drop loads) keeps widget values as an ordered
list per node; API format (what POST /prompt takes) names every input. The mapping between the
two is the node schema from /object_info: widgets are the inputs whose type is a primitive or a
combo, in schema order, and an input with ``control_after_generate`` stores one extra value
(the "fixed / randomize" control) right after its own.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict

PRIMITIVE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class WorkflowError(ValueError):
    """A workflow that cannot be read, converted or edited as asked."""


def load(path: str) -> dict:
    """Read a workflow JSON file (either format)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from None


def is_ui_format(workflow: dict) -> bool:
    """True for the browser's format (nodes + links), False for API format (id -> node)."""
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def input_order(spec: dict) -> list[tuple[str, list]]:
    """(name, [type, options]) of a node's required then optional inputs, in schema order."""
    inputs = spec.get("input", {})
    order = spec.get("input_order") or {k: list(inputs.get(k, {})) for k in ("required", "optional")}
    return [(name, inputs[group][name]) for group in ("required", "optional") for name in order.get(group, [])
            if name in inputs.get(group, {})]


def is_widget(input_spec: list) -> bool:
    """Whether the frontend shows this input as a widget (and stores it in widgets_values)."""
    kind = input_spec[0]
    options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in PRIMITIVE_TYPES


def has_control(name: str, input_spec: list) -> bool:
    """Whether the widget carries a 'control after generate' value after its own.

    The frontend adds one to INT widgets that ask for it, and by default to INT inputs named
    seed or noise_seed (``control_after_generate ?? name in [seed, noise_seed]``).
    """
    options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
    if input_spec[0] != "INT":
        return bool(options.get("control_after_generate"))
    flag = options.get("control_after_generate")
    return bool(flag) if flag is not None else name in ("seed", "noise_seed")


def _spec(object_info: dict, class_type: str) -> dict:
    if class_type not in object_info:
        raise WorkflowError(f"node type {class_type!r} is not in the node schema: is its node pack installed?")
    return object_info[class_type]


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API format POST /prompt takes."""
    links = {link[0]: link for link in ui.get("links", [])}
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) in (2, 4) or node["type"] in ("Note", "MarkdownNote", "Reroute"):
            continue  # muted / bypassed nodes and notes are not executed
        spec = _spec(object_info, node["type"])
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, input_spec in input_order(spec):
            if is_widget(input_spec):
                if not values:
                    raise WorkflowError(f"node {node['id']} ({node['type']}) has too few widget values for {name!r}")
                inputs[name] = values.pop(0)
                if has_control(name, input_spec) and values:
                    values.pop(0)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        entry = {"inputs": inputs, "class_type": node["type"]}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def api_to_ui(api: dict, object_info: dict, column_width: int = 380, row_height: int = 260) -> dict:
    """Lay out an API-format workflow as a UI-format graph the browser can open (columns by depth)."""
    depth = _depths(api)
    rows = defaultdict(int)
    nodes, links = [], []
    link_id = 0
    outputs = {nid: [[] for _ in _spec(object_info, n["class_type"]).get("output", [])] for nid, n in api.items()}
    for order, nid in enumerate(sorted(api, key=lambda k: (depth[k], int(k)))):
        entry = api[nid]
        spec = _spec(object_info, entry["class_type"])
        ui_inputs, widgets = [], []
        for name, input_spec in input_order(spec):
            value = entry["inputs"].get(name)
            connected = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if is_widget(input_spec):
                default = input_spec[1].get("default") if len(input_spec) > 1 and isinstance(input_spec[1], dict) else None
                widgets.append(default if connected or value is None else value)
                if has_control(name, input_spec):
                    widgets.append("fixed")
            if connected:
                link_id += 1
                src, slot = value
                kind = _spec(object_info, api[src]["class_type"])["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(ui_inputs), kind])
                outputs[src][slot].append(link_id)
                item = {"name": name, "type": input_spec[0] if isinstance(input_spec[0], str) else "COMBO", "link": link_id}
                if is_widget(input_spec):
                    item["widget"] = {"name": name}
                ui_inputs.append(item)
            elif not is_widget(input_spec):
                ui_inputs.append({"name": name, "type": input_spec[0], "link": None})
        node = {
            "id": int(nid), "type": entry["class_type"],
            "pos": [60 + depth[nid] * column_width, 60 + rows[depth[nid]] * row_height],
            "size": [column_width - 40, row_height - 40], "flags": {}, "order": order, "mode": 0,
            "inputs": ui_inputs, "outputs": [], "properties": {"Node name for S&R": entry["class_type"]},
            "widgets_values": widgets,
        }
        if entry.get("_meta", {}).get("title"):
            node["title"] = entry["_meta"]["title"]
        rows[depth[nid]] += 1
        nodes.append((nid, node, spec))
    for nid, node, spec in nodes:
        node["outputs"] = [{"name": name, "type": kind, "links": outputs[nid][slot], "slot_index": slot}
                           for slot, (name, kind) in enumerate(zip(spec.get("output_name", spec["output"]), spec["output"]))]
    return {
        "last_node_id": max(int(k) for k in api), "last_link_id": link_id,
        "nodes": [n for _, n, _ in nodes], "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def _depths(api: dict) -> dict:
    """Longest distance of each node from a source node, for a left-to-right layout."""
    depth: dict[str, int] = {}

    def visit(nid, seen=()):
        if nid in depth:
            return depth[nid]
        if nid in seen:
            raise WorkflowError(f"workflow has a cycle through node {nid}")
        parents = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
        for p in parents:
            if p not in api:
                raise WorkflowError(f"node {nid} links to node {p}, which is not in the workflow")
        depth[nid] = 1 + max((visit(p, seen + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def find_nodes(api: dict, selector: str) -> list[str]:
    """Node ids matching a selector: a node id, a title (``_meta.title``) or a class type."""
    by_id = [selector] if selector in api else []
    by_title = [k for k, n in api.items() if n.get("_meta", {}).get("title") == selector]
    by_type = [k for k, n in api.items() if n["class_type"] == selector]
    return by_id or by_title or by_type


def set_input(api: dict, assignment: str) -> dict:
    """Apply ``node.input=value`` (node = id, title or class type; value parsed as JSON if it can be)."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise WorkflowError(f"cannot read {assignment!r}: write it as node_title.input=value (e.g. 'Z-Image Sampler.steps=12')")
    target, raw = assignment.split("=", 1)
    selector, name = target.rsplit(".", 1)
    ids = find_nodes(api, selector)
    if not ids:
        raise WorkflowError(f"no node with id, title or type {selector!r} in the workflow "
                            f"(titles: {sorted({n.get('_meta', {}).get('title', n['class_type']) for n in api.values()})})")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    out = copy.deepcopy(api)
    for nid in ids:
        if name not in out[nid]["inputs"]:
            raise WorkflowError(f"node {nid} ({out[nid]['class_type']}) has no input {name!r}; "
                                f"it has {sorted(out[nid]['inputs'])}")
        out[nid]["inputs"][name] = value
    return out


def set_every(api: dict, input_names: tuple[str, ...], value) -> tuple[dict, int]:
    """Set every widget input with one of these names (e.g. all seeds); return (workflow, count)."""
    out = copy.deepcopy(api)
    count = 0
    for node in out.values():
        for name in input_names:
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
                count += 1
    return out, count


PROMPT_TITLE = "Positive Prompt"
"""Shipped workflows give the node holding the prompt text this title, so --prompt finds it."""


def set_prompt(api: dict, text: str) -> dict:
    """Set the positive prompt: the node titled 'Positive Prompt', else the only text-encoder node."""
    ids = find_nodes(api, PROMPT_TITLE)
    if not ids:
        ids = [k for k, n in api.items() if isinstance(n["inputs"].get("text"), str)]
    if not ids:  # e.g. a Prompt Formatter feeding the encoder's text input
        ids = [k for k, n in api.items() if isinstance(n["inputs"].get("prompt"), str)]
    if len(ids) != 1:
        raise WorkflowError(f"cannot tell which node holds the prompt ({len(ids)} candidates): "
                            f"title it {PROMPT_TITLE!r} or use --set 'Title.text=...'")
    key = "text" if "text" in api[ids[0]]["inputs"] else "prompt"
    return set_input(api, f"{ids[0]}.{key}={json.dumps(text)}")


SAVE_NODE = "ZImageLabSaveImage"


def use_save_node(api: dict, compress_level: int = 4, background: bool = True) -> tuple[dict, int]:
    """Swap every stock SaveImage for Z-Image Save Image (same files, names and metadata; the PNG is
    written off the prompt's thread), keeping ids, titles, links and prefixes; return (workflow, count)."""
    out = copy.deepcopy(api)
    count = 0
    for node in out.values():
        if node.get("class_type") == "SaveImage":
            node["class_type"] = SAVE_NODE
            node["inputs"].update({"compress_level": compress_level, "background": background})
            count += 1
    return out, count
