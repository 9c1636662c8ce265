"""Layer surgery on Z-Image's DiT: skip, reorder, repeat or scale blocks, and skip-layer guidance.

NextDiT runs three groups of transformer blocks, each a residual map x -> x + delta(x):
``context_refiner`` (2 blocks on the caption, no timestep), ``noise_refiner`` (2 blocks on the
image tokens) and ``layers`` (30 blocks on the joint [caption, image] sequence). An ``Edit``
changes one group while the sampling schedule is inside its window:

* skip a block (factor 0): the block is not called; its input passes through (delta = 0);
* scale a block by f: x + f * (block(x) - x); f = 1 is the stock block itself, bit for bit;
* run refiner blocks in another order or repeated, e.g. (1, 0) or (0, 0, 1, 1), or none.

Windows are given in percent of the schedule like ComfyUI's own start/end options (0 = the first
step at sigma 1, 1 = the end) and are turned into sigmas with the sampling model's
``percent_to_sigma`` when the step runs, so a shift applied after the edit is honoured.

Skip-layer guidance (SLG, Stability's SD3.5 technique after Perturbed-Attention Guidance) adds
``scale * (cond - cond_skipped)`` to the guided prediction, where ``cond_skipped`` is the
conditional prediction of the same model with the named main layers skipped.

Plain torch: the ComfyUI side (wrappers, clones) lives in nodes/layer_surgery.py.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

GROUPS = ("context_refiner", "noise_refiner", "layers")
"""NextDiT's block groups, in the order a forward pass runs them."""

GROUP_NAMES = {"context_refiner": "context-refiner blocks", "noise_refiner": "noise-refiner blocks",
               "layers": "main layers"}

OPTIONS_KEY = "zimage_lab_surgery"
"""transformer_options key holding the tuple of Edits that the apply-model wrapper carries out."""

SLG_PRESET = {"layers": "7-12", "scale": 2.5, "start_percent": 0.05, "end_percent": 0.5}
"""The research harness's SLG preset for Z-Image."""

_TOKEN = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_indices(text: str, count: int, name: str, what: str = "main layers") -> list[int]:
    """Block indices from text like '7-12, 15' in the order written (repeats kept), checked against count."""
    out = []
    for token in (t for t in re.split(r"[,;\s]+", str(text).strip()) if t):
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"{name}: cannot read {token!r}. Write block indices separated by commas, "
                             f"with ranges like 7-12 (inclusive), e.g. '7-12' or '3, 17'.")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = 1 if last >= first else -1
        out.extend(range(first, last + step, step))
    bad = [i for i in out if i >= count]
    if bad:
        raise ValueError(f"{name}: index {bad[0]} is out of range: this model has {count} {what} "
                         f"(indices 0-{count - 1}).")
    return out


def parse_layer_set(text: str, count: int, name: str = "layers") -> list[int]:
    """A sorted set of main-layer indices ('' = none)."""
    return sorted(set(parse_indices(text, count, name)))


def parse_block_order(text: str, count: int, name: str, what: str) -> tuple[int, ...]:
    """Refiner blocks to run, in order: 'all' (stock), 'none' (skip the refiner) or indices like '1, 0, 0'."""
    word = str(text).strip().lower()
    if word == "all":
        return tuple(range(count))
    if word in ("none", ""):
        return ()
    return tuple(parse_indices(text, count, name, what))


def parse_scales(text: str, count: int, name: str) -> tuple[float, ...]:
    """Residual factors: one number for every block, or one per block index."""
    tokens = [t for t in re.split(r"[,;\s]+", str(text).strip()) if t]
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(f"{name}: cannot read {text!r} as numbers. Write one factor for every block "
                         f"(e.g. '1.0') or one per block ({count} numbers, e.g. '1.0, 0.5').") from None
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"{name}: {len(tokens)} factors for {count} blocks. Write one factor for every block "
                         f"(e.g. '1.0') or exactly {count}.")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: factors must be finite numbers, got {text!r}.")
    return tuple(values)


def validate_window(start_percent: float, end_percent: float) -> None:
    """Raise ValueError unless 0 <= start_percent <= end_percent <= 1."""
    for label, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{label} is {value}: it must be between 0.0 (first step) and 1.0 (end of the schedule).")
    if start_percent > end_percent:
        raise ValueError(f"start_percent ({start_percent}) is after end_percent ({end_percent}): the window would be "
                         "empty. Make start_percent <= end_percent (e.g. 0.05 and 0.5).")


def in_window(sigma: float, start_percent: float, end_percent: float, percent_to_sigma) -> bool:
    """Whether a step at this sigma lies inside [start_percent, end_percent] of the schedule (as ComfyUI's SLG)."""
    return percent_to_sigma(end_percent) <= sigma <= percent_to_sigma(start_percent)


@dataclass(frozen=True)
class Edit:
    """One change to a block group, active while the schedule is inside [start_percent, end_percent].

    ``order``: block indices to run in order (None keeps the stock order); ``scales``: (block index,
    residual factor) pairs, 0 = skip. ``source`` names the node that made it (for reports).
    """

    group: str
    order: tuple[int, ...] | None = None
    scales: tuple[tuple[int, float], ...] = ()
    start_percent: float = 0.0
    end_percent: float = 1.0
    source: str = ""

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"unknown block group {self.group!r}: one of {GROUPS}")

    def is_identity(self) -> bool:
        return self.order is None and all(f == 1.0 for _, f in self.scales)

    def to_json(self) -> dict:
        return {"group": self.group, "order": list(self.order) if self.order is not None else "stock",
                "scales": {str(i): f for i, f in self.scales}, "start_percent": self.start_percent,
                "end_percent": self.end_percent, "source": self.source}


@dataclass(frozen=True)
class Plan:
    """What one group runs at one step: (block index, residual factor) in order."""

    group: str
    steps: tuple[tuple[int, float], ...] = field(default_factory=tuple)


def plan_group(edits, group: str, count: int, sigma: float, percent_to_sigma) -> Plan | None:
    """Compose the active edits of one group (the last order wins, factors multiply); None = stock."""
    order = tuple(range(count))
    factors = [1.0] * count
    for edit in edits:
        if edit.group != group or not in_window(sigma, edit.start_percent, edit.end_percent, percent_to_sigma):
            continue
        if edit.order is not None:
            order = edit.order
        for index, factor in edit.scales:
            factors[index] *= factor
    if order == tuple(range(count)) and all(f == 1.0 for f in factors):
        return None
    return Plan(group, tuple((i, factors[i]) for i in order))


def plan_all(edits, counts: dict, sigma: float, percent_to_sigma) -> list[Plan]:
    """The non-stock plans of every group at this sigma."""
    plans = (plan_group(edits, g, counts[g], sigma, percent_to_sigma) for g in GROUPS if g in counts)
    return [p for p in plans if p is not None]


class SkippedBlock(nn.Module):
    """Stands in for a block that must not run: the hidden states pass through unchanged."""

    def forward(self, x, *args, **kwargs):
        return x.clone()  # a fresh tensor, as a block returns: later in-place patches must not alias the input


class ScaledBlock(nn.Module):
    """A block whose residual update is scaled: x + factor * (block(x) - x)."""

    def __init__(self, block: nn.Module, factor: float):
        super().__init__()
        self.block = block
        self.factor = factor

    def forward(self, x, *args, **kwargs):
        out = self.block(x, *args, **kwargs)
        return x + self.factor * (out - x)


def build_blocks(blocks, plan: Plan) -> nn.ModuleList:
    """The module list that carries out a plan over the given stock blocks."""
    out = []
    for index, factor in plan.steps:
        if factor == 0.0:
            out.append(SkippedBlock())
        elif factor == 1.0:
            out.append(blocks[index])
        else:
            out.append(ScaledBlock(blocks[index], factor))
    return nn.ModuleList(out)


@contextlib.contextmanager
def swapped(dit: nn.Module, plans):
    """Run the DiT with its block groups replaced by the plans' lists, restoring them whatever happens."""
    saved = {}
    try:
        for plan in plans:
            saved[plan.group] = getattr(dit, plan.group)
            setattr(dit, plan.group, build_blocks(saved[plan.group], plan))
        yield
    finally:
        for group, blocks in saved.items():
            setattr(dit, group, blocks)


def guide(guided: torch.Tensor, cond: torch.Tensor, cond_skipped: torch.Tensor, scale: float) -> torch.Tensor:
    """Skip-layer guidance: the guided prediction plus scale * (cond - cond_skipped)."""
    return guided + (cond - cond_skipped) * scale


def with_edits(options: dict, edits) -> dict:
    """A copy of transformer_options with these edits appended (the given dict is not mutated)."""
    out = dict(options)
    out[OPTIONS_KEY] = tuple(options.get(OPTIONS_KEY, ())) + tuple(edits)
    return out


def describe(edits) -> str:
    """One line per edit, for the node's report."""
    lines = []
    for e in edits:
        window = f"{e.start_percent:.0%}-{e.end_percent:.0%} of the schedule"
        what = GROUP_NAMES[e.group]
        if e.order is not None:
            runs = ", ".join(str(i) for i in e.order) if e.order else "nothing (skipped)"
            lines.append(f"{what}: run {runs} ({window})")
        skipped = [i for i, f in e.scales if f == 0.0]
        scaled = [(i, f) for i, f in e.scales if f not in (0.0, 1.0)]
        if skipped:
            lines.append(f"{what} skipped: {', '.join(map(str, skipped))} ({window})")
        if scaled:
            lines.append(f"{what} scaled: {', '.join(f'{i} x{f:g}' for i, f in scaled)} ({window})")
    return "\n".join(lines) or "no change (stock model)"
