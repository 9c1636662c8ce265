"""Z-Image Lab: research techniques for Z-Image-Turbo as ComfyUI nodes.

ComfyUI imports this file from custom_nodes/<any folder name>/. It must import without
ComfyUI (pytest imports it from a clone), so comfy_api is imported inside comfy_entrypoint.
"""

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]


async def comfy_entrypoint():
    """Return the ComfyExtension that registers every Z-Image Lab node."""
    from .nodes import make_extension

    return make_extension()
