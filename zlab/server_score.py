"""Scores a sweep's cells where the GPU is: the pack's Image Score nodes are appended to each cell's prompt.

The sweep runner calls three functions (no model is loaded in the driver):

- ``score_models(object_info, wanted)`` once: metric -> model choice of the server's Z-Image Image Score node
  (``clip/<name>``, ``pickscore/<name>``, ...), checked against what the server's models/metrics holds;
- ``add_scoring(prompt, models)`` per cell: the cell's API prompt with one score node per metric, fed by the
  images of its save node and the text of its prompt node;
- ``read_scores(outputs)`` per finished cell: metric -> score of the cell's (first) image, from its history.

The score nodes are output nodes whose results reach the history as ``zlab_scores`` (full precision); they
use the server's device (ComfyUI's ``get_torch_device``) and unload diffusion models only if memory is short.
Set metrics (LPIPS diversity / to the reference, FID) need several cells' images: ``zlab score`` computes them.
"""

from __future__ import annotations

import copy

from . import workflow as wf
from .sweep_spec import SweepError

SCORE_NODE = "ZImageLabImageScore"
NODE_PREFIX = "zlab_score_"
METRIC_FOLDERS = {"clip_score": "clip", "siglip": "siglip", "pickscore": "pickscore", "hpsv2": "hpsv2",
                  "image_reward": "imagereward"}
SAVE_NODES = ("ZImageLabSaveImage", "SaveImage", "PreviewImage")
PROMPT_INPUTS = ("text", "prompt", "user_prompt")


class ServerScoreError(wf.WorkflowError):
    """Scoring cannot be set up on this server, with a message meant for a person."""


SET_METRICS = ("lpips", "fid")
RATED = ("user_pref",)


def plan(metrics) -> dict[str, list[str]]:
    """Split a spec's ``metrics`` list: per-image ones scored on the server, set metrics for ``zlab score``,
    ``user_pref`` for ``zlab rate``; an unknown name is an error listing the known ones."""
    out = {"server": [], "zlab score": [], "zlab rate": []}
    for metric in metrics:
        key = ("server" if metric in METRIC_FOLDERS else "zlab score" if metric in SET_METRICS
               else "zlab rate" if metric in RATED else None)
        if key is None:
            raise ServerScoreError(f"unknown metric {metric!r}: choose from "
                                   f"{', '.join([*METRIC_FOLDERS, *SET_METRICS, *RATED])}")
        out[key].append(metric)
    return out


def model_choices(object_info: dict) -> list[str]:
    """The model options of the server's Image Score node (V3 'COMBO' + options, or the older list form)."""
    if SCORE_NODE not in object_info:
        raise ServerScoreError(f"the server has no {SCORE_NODE} node: install Z-Image Lab on it to score there")
    spec = object_info[SCORE_NODE]["input"]["required"]["model"]
    return list(spec[1].get("options", [])) if spec[0] == "COMBO" else list(spec[0])


def score_models(object_info: dict, wanted) -> dict[str, str]:
    """metric -> model: ``wanted`` is a list of metric names (first model of each metric's folder) or a
    mapping metric -> model name ('clip/<name>'); every one must be on the server."""
    choices = model_choices(object_info)
    pairs = wanted.items() if isinstance(wanted, dict) else ((m, None) for m in wanted)
    out = {}
    for metric, model in pairs:
        if metric not in METRIC_FOLDERS:
            raise ServerScoreError(f"metric {metric!r} is not scored per image on the server: choose from "
                                   f"{', '.join(METRIC_FOLDERS)} (LPIPS and FID: python -m zlab score)")
        folder = METRIC_FOLDERS[metric]
        found = [c for c in choices if c.split("/", 1)[0] == folder]
        if model is None and found:
            model = found[0]
        if model not in choices:
            raise ServerScoreError(f"{metric}: the server's models/metrics/{folder}/ holds "
                                   f"{', '.join(found) or 'no model'}; put the model there (docs/metrics.md)")
        out[metric] = model
    return out


def sweep_models(metrics, object_info, where: str) -> dict[str, str]:
    """metric -> model for a sweep's per-image metrics, checked before any cell (object_info() asked only if needed)."""
    wanted = plan(metrics)["server"]
    if not wanted:
        return {}
    try:
        return score_models(object_info(), wanted)
    except ServerScoreError as e:
        raise SweepError(f"{where}: {e}") from None


def image_source(prompt: dict) -> list:
    """The [node, output] feeding the first save / preview node's images."""
    for class_type in SAVE_NODES:
        for nid in sorted(wf.find_nodes(prompt, class_type)):
            source = prompt[nid]["inputs"].get("images")
            if isinstance(source, list):
                return source
    raise ServerScoreError(f"the workflow has no {' / '.join(SAVE_NODES)} node with linked images to score")


def prompt_text(prompt: dict) -> str:
    """The cell's prompt: the node titled 'Positive Prompt', else the first text / prompt widget."""
    ordered = wf.find_nodes(prompt, wf.PROMPT_TITLE) + sorted(prompt, key=str)
    for nid in ordered:
        for name in PROMPT_INPUTS:
            value = prompt[nid].get("inputs", {}).get(name)
            if isinstance(value, str) and value.strip():
                return value
    raise ServerScoreError("found no prompt text in the workflow to score against: title its node "
                           f"{wf.PROMPT_TITLE!r}")


def add_scoring(prompt: dict, models: dict[str, str]) -> dict:
    """A copy of the cell's API prompt with one Image Score node per metric on its saved images."""
    if not models:
        return prompt
    out = copy.deepcopy(prompt)
    images, text = image_source(prompt), prompt_text(prompt)
    for metric, model in models.items():
        out[NODE_PREFIX + metric] = {"class_type": SCORE_NODE, "inputs": {"images": images, "prompt": text,
                                                                          "model": model},
                                     "_meta": {"title": f"zlab sweep score: {metric}"}}
    return out


def read_scores(outputs: dict) -> dict[str, float]:
    """metric -> score of the first image, from a finished prompt's history outputs."""
    scores = {}
    for nid, output in outputs.items():
        if str(nid).startswith(NODE_PREFIX):
            for record in output.get("zlab_scores", []):
                scores[record["metric"]] = float(record["scores"][0])
    return scores
