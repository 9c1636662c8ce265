"""Chunked long-prompt encoding: encode overlapping windows of a prompt, then join them.

Qwen3 reads a long prompt in one pass without trouble, but Z-Image was trained on prompts of at
most 512 tokens, so the hidden states of a 1,500-token prompt come from contexts the DiT never
saw. Chunked encoding keeps every encoder pass prompt-sized: the prompt's own (content) tokens
are cut into windows of ``window`` tokens (the last one may be shorter) that share ``overlap``
tokens with their neighbours; each window is wrapped in the default chat template and encoded
on its own; the windows' content states are joined on the prompt's token axis, overlaps
blended; the first window's template prefix and the last window's template suffix frame the
result (the inner windows' template tokens are dropped). The joined caption is as long as the prompt: it changes what each token's state has
seen, not how many positions the DiT reads, so pair it with the RoPE extender for captions past
512 tokens. A prompt that fits one window is encoded exactly as CLIPTextEncode does.

Blending in an overlap, per token: ``crossfade`` ramps linearly from the earlier window to the
later one (the token leans on the window that saw more context before and after it);
``average`` gives every window covering the token the same weight.
"""

from __future__ import annotations

import torch

JOIN_MODES = ("crossfade", "average")


def validate(window: int, overlap: int, join: str) -> None:
    """Raise ValueError naming the input when windows cannot be planned."""
    if int(window) < 8:
        raise ValueError(f"window is {window}: use at least 8 content tokens per window (default 480)")
    if int(overlap) < 0 or 2 * int(overlap) >= int(window):
        raise ValueError(f"overlap is {overlap}: it must be >= 0 and less than half the window ({window}), "
                         "so that no token is covered by more than two windows")
    if join not in JOIN_MODES:
        raise ValueError(f"join is {join!r}: choose one of {', '.join(JOIN_MODES)}")


def plan_windows(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows over n tokens at stride window - overlap; the last one ends at n (maybe shorter).

    Neighbours share exactly ``overlap`` tokens, and since overlap < window / 2 no token is in
    more than two windows.
    """
    stride = window - overlap
    windows = [(0, min(window, n))]
    while windows[-1][1] < n:
        start = windows[-1][0] + stride
        windows.append((start, min(start + window, n)))
    return windows


def window_weights(windows: list[tuple[int, int]], n: int, join: str) -> torch.Tensor:
    """[num_windows, n] blending weights that sum to 1 for every token (float64)."""
    weights = torch.zeros(len(windows), n, dtype=torch.float64)
    for k, (start, end) in enumerate(windows):
        pos = torch.arange(start, end, dtype=torch.float64)
        w = torch.ones(end - start, dtype=torch.float64)
        if join == "crossfade":
            if k > 0:
                lead = windows[k - 1][1] - start  # tokens shared with the previous window
                w = torch.minimum(w, (pos - start + 1) / (lead + 1))
            if k + 1 < len(windows):
                trail = end - windows[k + 1][0]  # tokens shared with the next window
                w = torch.minimum(w, (end - pos) / (trail + 1))
        weights[k, start:end] = w
    return weights / weights.sum(dim=0, keepdim=True)


def join_windows(contents: list[torch.Tensor], windows: list[tuple[int, int]], n: int, join: str) -> torch.Tensor:
    """Blend per-window content states [B, len_k, W] into one [B, n, W] sequence."""
    weights = window_weights(windows, n, join)
    first = contents[0]
    out = torch.zeros(first.shape[0], n, first.shape[-1], dtype=torch.float32, device=first.device)
    for k, ((start, end), states) in enumerate(zip(windows, contents)):
        if states.shape[1] != end - start:
            raise ValueError(f"window {k} encoded to {states.shape[1]} content tokens, expected {end - start}")
        w = weights[k, start:end].to(device=states.device, dtype=torch.float32)[None, :, None]
        out[:, start:end] += w * states.float()
    return out.to(first.dtype)


def window_tokens(tokens: list, windows: list[tuple[int, int]], n_prefix: int, n_suffix: int) -> list[list]:
    """Each window's token list: the prompt's template prefix + its content slice + the template suffix."""
    prefix, content, suffix = tokens[:n_prefix], tokens[n_prefix:len(tokens) - n_suffix], tokens[len(tokens) - n_suffix:]
    return [prefix + content[start:end] + suffix for start, end in windows]


def assemble(first: torch.Tensor, last: torch.Tensor, content: torch.Tensor, n_prefix: int, n_suffix: int) -> torch.Tensor:
    """Caption = first window's template prefix + joined content + last window's template suffix."""
    return torch.cat([first[:, :n_prefix], content.to(first.dtype), last[:, last.shape[1] - n_suffix:]], dim=1)


def describe(n: int, windows: list[tuple[int, int]], join: str) -> str:
    """One line for the node's report."""
    if len(windows) == 1:
        return f"{n} content tokens: one window, encoded exactly as CLIPTextEncode"
    spans = ", ".join(f"{a}-{b}" for a, b in windows)
    return f"{n} content tokens in {len(windows)} windows ({spans}), {join} join"
