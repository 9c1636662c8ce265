"""The ComfyUI server: HTTP routes on PromptServer and progress bars shown in the frontend."""

from __future__ import annotations

import comfy.utils


def routes():
    """PromptServer's aiohttp route table, or None when loaded without a web server (scripts, node scanners).

    ``server.py`` ``PromptServer.instance.routes``. Checked: 0.18.1, 0.30.2.
    """
    try:
        from server import PromptServer
    except ImportError:
        return None
    server = getattr(PromptServer, "instance", None)
    return None if server is None else server.routes


def progress_bar(total: int):
    """A frontend progress bar (``comfy/utils.py`` ``ProgressBar``: ``update(n)``,
    ``update_absolute(value, total, preview)``). Checked: 0.18.1, 0.30.2."""
    return comfy.utils.ProgressBar(total)
