"""``python -m zlab <command>``: Z-Image Lab's tools for ComfyUI's HTTP API."""

import argparse
import importlib
import sys

from .api import ComfyError
from .workflow import WorkflowError

COMMANDS = ["run", "convert", "sweep", "score", "report", "rate", "fit_projector", "train_lora", "lora_info"]
"""Modules of this package that each define add_parser(subparsers) and main(args)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ComfyError, WorkflowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
