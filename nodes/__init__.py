"""Thin ComfyUI V3 nodes over core/. Each module lists its node classes in ``NODES``.

Modules are discovered, so a new technique only adds its own file. A module may also define
``on_load()`` (register model folders, server routes); it runs once when ComfyUI loads the pack.
"""

from __future__ import annotations

import importlib
import pkgutil

CATEGORY = "Z-Image Lab"


def _node_modules():
    """Import every public module of this package, in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def all_nodes() -> list:
    """Every node class of the pack."""
    return [node for module in _node_modules() for node in getattr(module, "NODES", [])]


def make_extension():
    """Build the ComfyExtension that ComfyUI's comfy_entrypoint expects."""
    from comfy_api.latest import ComfyExtension

    modules = _node_modules()

    class ZImageLabExtension(ComfyExtension):
        async def on_load(self) -> None:
            for module in modules:
                hook = getattr(module, "on_load", None)
                if hook is not None:
                    hook()

        async def get_node_list(self) -> list:
            return [node for module in modules for node in getattr(module, "NODES", [])]

    return ZImageLabExtension()
