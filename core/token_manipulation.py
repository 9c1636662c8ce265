"""Caption token manipulations for token ablations: reorder, repeat or cut the prompt's own tokens.

Z-Image reads the caption as Qwen3 hidden states wrapped in the chat template
(``<|im_start|>user\\n`` ... ``<|im_end|>\\n<|im_start|>assistant\\n``). These manipulations act on
the content tokens only (``core.conditioning.content_span``); the template tokens stay where they
are. Every mode is a re-indexing of the content rows, so a result holds only token vectors of the
input (shuffle and reverse hold exactly the same multiset of rows):

* ``shuffle``: a seeded random permutation (torch.randperm with a CPU generator);
* ``reverse``: last token first;
* ``duplicate``: the content repeated n times, back to back;
* ``keep`` / ``drop``: keep only, or remove, the listed positions (original order kept);
* ``front_load`` / ``back_load``: move the listed positions, in the order written, to the start / end;
* ``none``: identity.

Positions count content tokens from 0. Hidden states are contextual (each token has already seen
its neighbours inside Qwen3), so these probe what the DiT makes of the vectors it is given, not a
re-encoded prompt.
"""

from __future__ import annotations

import re

import torch

MODES = ("none", "shuffle", "reverse", "duplicate", "keep", "drop", "front_load", "back_load")
NEEDS_POSITIONS = ("keep", "drop", "front_load", "back_load")
MAX_REPEATS = 64


def parse_positions(text: str, count: int, name: str = "positions") -> list[int]:
    """Content-token positions from text like '0-3, 7' (inclusive ranges), in the order written, no repeats."""
    out = []
    for token in (t for t in re.split(r"[,;\s]+", str(text).strip()) if t):
        match = re.match(r"^(\d+)(?:-(\d+))?$", token)
        if match is None:
            raise ValueError(f"{name}: cannot read {token!r}. Write content-token positions counted from 0, with "
                             "inclusive ranges, e.g. '0-3, 7'.")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = 1 if last >= first else -1
        for i in range(first, last + step, step):
            if i >= count:
                raise ValueError(f"{name}: position {i} is out of range: the prompt has {count} content tokens "
                                 f"(positions 0-{count - 1}).")
            if i not in out:
                out.append(i)
    return out


def content_order(mode: str, count: int, seed: int = 0, repeats: int = 2, positions: list[int] | None = None) -> list[int]:
    """Which content rows, in which order, a mode produces from `count` content tokens."""
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}: choose one of {', '.join(MODES)}.")
    positions = list(positions or [])
    if mode in NEEDS_POSITIONS and not positions:
        raise ValueError(f"positions is empty: mode {mode} needs content-token positions, e.g. '0-3'.")
    if mode == "none":
        return list(range(count))
    if mode == "shuffle":
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        return torch.randperm(count, generator=generator).tolist()
    if mode == "reverse":
        return list(range(count - 1, -1, -1))
    if mode == "duplicate":
        if not 1 <= int(repeats) <= MAX_REPEATS:
            raise ValueError(f"repeats is {repeats}: it must be between 1 (identity) and {MAX_REPEATS}.")
        return list(range(count)) * int(repeats)
    chosen = set(positions)
    rest = [i for i in range(count) if i not in chosen]
    if mode == "keep":
        return sorted(chosen)
    if mode == "drop":
        if not rest:
            raise ValueError(f"positions covers all {count} content tokens: mode drop would leave no prompt. "
                             "Drop fewer tokens.")
        return rest
    if mode == "front_load":
        return positions + rest
    return rest + positions  # back_load


def full_index(span: tuple[int, int], length: int, order: list[int]) -> torch.Tensor:
    """Row index over the whole caption: template prefix, the reordered content, template suffix."""
    start, end = span
    content = [start + i for i in order]
    return torch.tensor(list(range(start)) + content + list(range(end, length)), dtype=torch.long)


def manipulate(tokens: torch.Tensor, span: tuple[int, int], order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens [B, L', W], the row index used) for a content order."""
    index = full_index(span, tokens.shape[1], order)
    return tokens.index_select(1, index.to(tokens.device)), index


def describe(mode: str, count: int, order: list[int], seed: int, repeats: int) -> str:
    """One line saying what a manipulation did."""
    if mode == "none":
        return f"none: {count} content tokens unchanged"
    detail = {"shuffle": f" with seed {seed}", "duplicate": f" x{repeats}"}.get(mode, "")
    return f"{mode}{detail}: {count} content tokens -> {len(order)} (order {order[:16]}{' ...' if len(order) > 16 else ''})"
