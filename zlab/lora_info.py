"""``python -m zlab lora-info FILE``: what a Z-Image LoRA file is and which of its keys will not load.

Reads the safetensors file locally (no server, no model): trainer layout, adapter kinds, rank, alpha,
blocks touched, the delta formula per adapter kind, and every key the loader cannot use, with the
reason. The LoRA Inspector node prints the same text (and, with a model connected, how it loads).
"""

from __future__ import annotations

import sys
from pathlib import Path


def report(path: str) -> str:
    """The inspector text for one file; ValueError for a file that is not a readable safetensors LoRA."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from core import lora_formats, refiner_lora

    if not path.lower().endswith((".safetensors", ".sft")):
        raise ValueError(f"{path} is not a .safetensors file (pickled .pt/.ckpt files can run code: convert it first)")
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path} cannot be read as safetensors: {e}") from None
    if not tensors:
        raise ValueError(f"{path} holds no tensors: it is not a LoRA")
    info = lora_formats.describe(tensors)
    return lora_formats.format_report(Path(path).name, info, refiner_lora.compress_blocks(info["blocks"]))


def add_parser(sub) -> None:
    p = sub.add_parser("lora-info", help="report a Z-Image LoRA file's format, rank, alpha, blocks and unloadable keys",
                       description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE", help="LoRA .safetensors file(s)")
    p.set_defaults(func=main)


def main(args) -> int:
    status = 0
    for i, path in enumerate(args.files):
        try:
            print(("\n" if i else "") + report(path))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
    return status
