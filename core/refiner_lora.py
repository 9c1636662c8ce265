"""Which Z-Image blocks a LoRA patch touches, per-block strengths, shape checks and the report.

A LoRA file is parsed by ComfyUI into patches keyed by the DiT weight they change, e.g.
``diffusion_model.context_refiner.0.attention.qkv.weight`` (diffusers ``to_q/to_k/to_v`` become
slices of the fused ``qkv``). Each weight belongs to one block: ``context_refiner.N`` (the two
caption-only blocks), ``noise_refiner.N`` (the two image-only blocks), ``layers.N`` (the 30
joint blocks) or ``other`` (embedders, final layer). A target picks blocks; per-block strengths
multiply the LoRA strength of whole blocks.
"""

from __future__ import annotations

import math
import re

TARGETS = {
    "context refiner": ("context_refiner",),
    "noise refiner": ("noise_refiner",),
    "both refiners": ("context_refiner", "noise_refiner"),
    "everything": None,
}
BLOCK_GROUPS = ("context_refiner", "noise_refiner", "layers")
_MAIN_OFF = "context_refiner=0, noise_refiner=0, other=0"
PRESETS = {
    "none": "",
    "refiners only": "layers=0, other=0",
    "context refiner only": "noise_refiner=0, layers=0, other=0",
    "noise refiner only": "context_refiner=0, layers=0, other=0",
    "main layers only": _MAIN_OFF,
    "layers 0-9 (early)": f"{_MAIN_OFF}, layers.10-29=0",
    "layers 10-19 (middle)": f"{_MAIN_OFF}, layers.0-9=0, layers.20-29=0",
    "late layers (20-29)": f"{_MAIN_OFF}, layers.0-19=0",
    "no refiners": "context_refiner=0, noise_refiner=0",
}
"""Per-block strength presets, written in the block_strengths syntax; the user's own entries come after
and win (the last entry naming a block sets its multiplier)."""
OTHER = "other"

_BLOCK = re.compile(r"^(?:diffusion_model\.)?(context_refiner|noise_refiner|layers)\.(\d+)\.")
_ENTRY = re.compile(r"^(context_refiner|noise_refiner|layers|other)(?:\.(\d+)(?:-(\d+))?)?$")


def block_of(weight_key: str) -> str:
    """The block a DiT weight belongs to: 'context_refiner.0', 'layers.12', ... or 'other'."""
    match = _BLOCK.match(weight_key)
    return f"{match.group(1)}.{match.group(2)}" if match else OTHER


def in_target(block: str, target: str) -> bool:
    """Whether a block is patched for this target."""
    if target not in TARGETS:
        raise ValueError(f"target is {target!r}: choose one of {', '.join(TARGETS)}")
    groups = TARGETS[target]
    return groups is None or block.split(".")[0] in groups


def parse_block_strengths(text: str) -> list[tuple[str, int | None, int | None, float]]:
    """Entries 'group[.N[-M]]=value' separated by commas, semicolons or new lines (# starts a comment)
    -> [(group, first, last, value)]."""
    entries = []
    items = [item for line in (text or "").splitlines() for item in re.split(r"[,;]", line.split("#")[0])]
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        match = _ENTRY.match(name.strip())
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or match is None or not math.isfinite(number):
            raise ValueError(f"block_strengths entry {item!r}: expected name=value with name one of "
                             "context_refiner[.N], noise_refiner[.N], layers[.N] or layers.N-M, other; "
                             "e.g. 'context_refiner.1=0.5, layers.0-9=0'")
        group, first, last = match.group(1), match.group(2), match.group(3)
        if group == OTHER and first is not None:
            raise ValueError(f"block_strengths entry {item!r}: 'other' takes no block number")
        first = None if first is None else int(first)
        last = first if last is None else int(last)
        if first is not None and last < first:
            raise ValueError(f"block_strengths entry {item!r}: the range end is below its start")
        entries.append((group, first, last, number))
    return entries


def preset_entries(preset: str, text: str):
    """Parsed entries of a preset followed by the user's block_strengths."""
    if preset not in PRESETS:
        raise ValueError(f"block_preset is {preset!r}: choose one of {', '.join(PRESETS)}")
    return parse_block_strengths(PRESETS[preset]) + parse_block_strengths(text)


def entry_matches(entry, block: str) -> bool:
    """Whether a parsed block-strength entry covers a block."""
    group, first, last, _ = entry
    name, _, index = block.partition(".")
    if name != group:
        return False
    return first is None or first <= int(index) <= last


def block_multiplier(entries, block: str) -> float:
    """Strength multiplier of a block: the last entry that names it, else 1."""
    value = 1.0
    for entry in entries:
        if entry_matches(entry, block):
            value = entry[3]
    return value


def check_entries_match(entries, blocks: set[str]) -> None:
    """Raise ValueError for a block-strength entry that names no block of the model."""
    for entry in entries:
        if not any(entry_matches(entry, b) for b in blocks):
            group, first, last, _ = entry
            name = group if first is None else f"{group}.{first}" + ("" if last == first else f"-{last}")
            available = sorted({b.split(".")[0] for b in blocks})
            raise ValueError(f"block_strengths names {name}, which this model does not have "
                             f"(it has {', '.join(available)}; refiners are numbered from 0)")


def lora_shape_error(target_shape, up_shape, down_shape) -> str | None:
    """Why an up (B) / down (A) pair cannot patch a weight of target_shape, or None if it fits."""
    out_features, in_features = target_shape[0], math.prod(target_shape[1:])
    rank = math.prod(up_shape[1:])
    if up_shape[0] != out_features:
        return f"up/B has {up_shape[0]} rows but the weight has {out_features} outputs"
    if down_shape[0] != rank:
        return f"up/B has rank {rank} but down/A has rank {down_shape[0]}"
    if math.prod(down_shape[1:]) != in_features:
        return f"down/A reads {math.prod(down_shape[1:])} inputs but the weight has {in_features}"
    return None


def _runs(numbers: list[int]) -> str:
    """'0-3,7' from sorted distinct integers."""
    runs = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def compress_blocks(blocks) -> str:
    """'layers.0-29, noise_refiner.0-1, other' from block names."""
    groups: dict[str, set[int]] = {}
    others = set()
    for block in blocks:
        name, _, index = block.partition(".")
        if index.isdigit():
            groups.setdefault(name, set()).add(int(index))
        else:
            others.add(block)
    return ", ".join([f"{name}.{_runs(sorted(groups[name]))}" for name in sorted(groups)] + sorted(others))


def report(source: str, strength: float, target: str, applied: dict[str, int], outside: dict[str, int],
           muted: dict[str, int], not_understood: dict[str, str]) -> str:
    """Human-readable account of what a LoRA load applied and skipped."""
    lines = [f"{source}: applied {sum(applied.values())} patches to {len(applied)} blocks at strength {strength:g} "
             f"(target {target}): {compress_blocks(applied)}"]
    if outside:
        lines.append(f"skipped {sum(outside.values())} patches outside the target: {compress_blocks(outside)}")
    if muted:
        lines.append(f"skipped {sum(muted.values())} patches at block strength 0: {compress_blocks(muted)}")
    if not_understood:
        lines.append(f"{len(not_understood)} file keys not loaded:")
        keys = sorted(not_understood)
        lines.extend(f"  {k}: {not_understood[k]}" for k in keys[:12])
        if len(keys) > 12:
            lines.append(f"  ... and {len(keys) - 12} more (the LoRA Inspector lists them all)")
    return "\n".join(lines)
