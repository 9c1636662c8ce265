"""Shared input checks: each raises a ValueError whose message names the input and the fix.

Nodes call these before any work, so bad input ends in a sentence a user can act on, not in a
traceback from torch, safetensors or the file system, and never after a long computation.
"""

from __future__ import annotations

import math
import re
import unicodedata

MAX_PROMPT_CHARS = 8000
"""Default bound on prompts a node encodes many times (training sets, per-word attribution)."""
MAX_NAME_CHARS = 120
"""Longest file or folder name a save node writes (most file systems allow 255 bytes)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PATH_CHARS = '<>:"|?*\\'


def finite(value: float, name: str, hint: str = "") -> float:
    """The value as a float, or ValueError when it is NaN or infinite."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is {number}: it must be a finite number{'; ' + hint if hint else ''}")
    return number


def bounded_text(text: str, name: str, max_chars: int = MAX_PROMPT_CHARS, why: str = "") -> str:
    """The text, or ValueError when it is longer than max_chars (work that grows with it stays bounded)."""
    if len(text) > max_chars:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} has {len(text):,} characters; at most {max_chars:,} are accepted here{reason}: "
                         "shorten it")
    return text


def bounded_count(count: int, name: str, limit: int, unit: str, why: str = "") -> int:
    """The count, or ValueError when the input makes more than limit units of work."""
    if count > limit:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} has {count:,} {unit}; at most {limit:,} are accepted here{reason}: shorten it")
    return count


def no_control_characters(text: str, name: str) -> str:
    """The text, or ValueError when it holds control characters (other than tab and newline)."""
    bad = sorted({f"U+{ord(c):04X}" for c in text if c not in "\t\n" and (_CONTROL.match(c)
                  or unicodedata.category(c) in ("Cc", "Cf"))})
    if bad:
        raise ValueError(f"{name} contains control characters ({', '.join(bad[:5])}): remove them")
    return text


def filename_prefix(prefix: str, name: str = "filename_prefix") -> str:
    """A relative 'folder/name' prefix safe to write under a models or output folder, else ValueError."""
    text = prefix.strip()
    if not text:
        raise ValueError(f"{name} is empty: give a file name such as 'zimage_lab/steering'")
    for c in text:
        if _CONTROL.match(c) or unicodedata.category(c) in ("Cc", "Cf") or c in _BAD_PATH_CHARS:
            raise ValueError(f"{name} contains the character U+{ord(c):04X} {c!r}, which cannot be in a file name: "
                             "use letters, digits, '-', '_', '.', and '/' between folders")
    parts = text.replace("\\", "/").split("/")
    if text.startswith("/") or any(p in ("..", ".") for p in parts):
        raise ValueError(f"{name} {text[:60]!r} leaves its folder: give a relative path without '..', "
                         "such as 'zimage_lab/steering'")
    longest = max(parts, key=len)
    if len(longest.encode()) > MAX_NAME_CHARS:
        raise ValueError(f"{name} has a file or folder name of {len(longest.encode())} bytes; at most "
                         f"{MAX_NAME_CHARS} are accepted: shorten it")
    if any(not p.strip() for p in parts):
        raise ValueError(f"{name} {text[:60]!r} has an empty folder name (two '/' in a row or a trailing '/')")
    return text


def output_prefix(prefix: str, name: str = "filename_prefix") -> str:
    """A Save Image style prefix (ComfyUI's %date:...% and %Node.input% patterns allowed) that stays inside the
    output folder and fits the file system, else ValueError."""
    no_control_characters(prefix, name)
    parts = prefix.replace("\\", "/").split("/")
    if prefix.startswith(("/", "\\")) or any(p.strip() == ".." for p in parts):
        raise ValueError(f"{name} {prefix[:60]!r} leaves the output folder: give a relative path without '..', "
                         "such as 'zimage_lab/portrait'")
    longest = max(parts, key=lambda p: len(p.encode()))
    if len(longest.encode()) > MAX_NAME_CHARS:
        raise ValueError(f"{name} has a file or folder name of {len(longest.encode())} bytes; at most "
                         f"{MAX_NAME_CHARS} are accepted: shorten it")
    return prefix


MAX_CPU_NOISE_SEED = 2**64 - 2
"""ComfyUI's noise sampler adds 1 to the seed on the CPU (k_diffusion default_noise_sampler), so 2**64 - 1 overflows."""


def noise_seed(seed: int, name: str, model=None) -> int:
    """The seed, or ValueError where ComfyUI's CPU noise sampler would overflow on it (stock KSampler fails there too).

    The device is the MODEL's ``load_device`` (a ModelPatcher attribute); anything else counts as the CPU."""
    device_type = getattr(getattr(model, "load_device", None), "type", "cpu")
    if device_type == "cpu" and int(seed) > MAX_CPU_NOISE_SEED:
        raise ValueError(f"{name} is {seed}: on a CPU server ComfyUI's noise sampler adds 1 to the seed, which "
                         f"overflows 64 bits (stock KSampler fails the same way): use {MAX_CPU_NOISE_SEED:,} or less")
    return seed
