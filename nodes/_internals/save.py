"""What the save node takes from ComfyUI below its public API: the metadata switch, the /view route
it makes wait for files still being written, status routes and the shutdown flush.

Checked against ComfyUI 0.18.1 and 0.30.2 (``nodes.py``, ``server.py``, ``main.py``, ``folder_paths.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

import folder_paths

LOG = logging.getLogger("zimage_lab.save")
VIEW_PATHS = ("/view", "/api/view")
VIEW_WAIT_S = 120.0
SHUTDOWN_FLUSH_S = 60.0
STATUS_ROUTE = "/zimage_lab/save"


def metadata_disabled() -> bool:
    """``--disable-metadata``: ``comfy/cli_args.py`` ``args.disable_metadata``, read by ``nodes.py``
    ``SaveImage.save_images`` before it builds the PngInfo. Checked: 0.18.1, 0.30.2."""
    from comfy.cli_args import args

    return bool(getattr(args, "disable_metadata", False))


def _server():
    """``server.py`` ``PromptServer.instance`` (None in scripts and node scanners). Checked: 0.18.1, 0.30.2."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def view_file(query) -> str | None:
    """The file a /view request names, resolved as ``server.py`` ``view_image`` resolves it (annotated
    names, ``type`` default output, ``subfolder``, base name). Only used to look up pending writes; the
    stock handler still does every security check. Checked: 0.18.1, 0.30.2."""
    name = query.get("filename")
    if not name or name.startswith("blake3:"):
        return None
    name, folder = folder_paths.annotated_filepath(name)
    if not name or name[0] == "/" or ".." in name:
        return None
    if folder is None:
        folder = folder_paths.get_directory_by_type(query.get("type", "output"))
    if folder is None:
        return None
    if "subfolder" in query:
        folder = os.path.join(folder, query["subfolder"])
    return os.path.join(folder, os.path.basename(name))


def wait_for_pending_views(writer, timeout: float = VIEW_WAIT_S) -> bool:
    """Make GET /view (and /api/view) of a file still queued in ``writer`` wait until it is written.

    Adds an aiohttp middleware to ``PromptServer.instance.app`` (its middleware list stays open
    until the server starts, after custom nodes load: ``main.py`` ``start_comfyui``). A write that
    fails or takes longer than ``timeout`` lets the stock handler answer (404 for a missing file).
    Returns False where no server runs or the app was already frozen. Checked: 0.18.1, 0.30.2.
    """
    server = _server()
    if server is None:
        return False
    from aiohttp import web

    app = server.app
    if app.middlewares.frozen:
        LOG.warning("Z-Image Save Image: the server started before the pack loaded; /view will not wait for "
                    "images still being written (they appear within a second)")
        return False

    @web.middleware
    async def wait_for_saved_file(request, handler):
        if writer.pending_count() and request.path in VIEW_PATHS:
            path = view_file(request.rel_url.query)
            future = writer.pending(path) if path else None
            if future is not None:
                try:  # shield: a client that gives up must not cancel the write itself
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
                except Exception:
                    pass  # the write failed (logged) or is slow: the stock handler answers
        return await handler(request)

    app.middlewares.append(wait_for_saved_file)
    return True


def serve_status(writer) -> bool:
    """GET /zimage_lab/save (queue status) and POST /zimage_lab/save/flush (wait for every queued
    write; body ``{"timeout": s}``), on ``PromptServer.instance.routes``. Checked: 0.18.1, 0.30.2."""
    server = _server()
    if server is None:
        return False
    from aiohttp import web

    @server.routes.get(STATUS_ROUTE)
    async def save_status(request):
        return web.json_response(writer.status())

    @server.routes.post(STATUS_ROUTE + "/flush")
    async def save_flush(request):
        try:
            timeout = float((await request.json()).get("timeout", SHUTDOWN_FLUSH_S)) if request.can_read_body else SHUTDOWN_FLUSH_S
        except (ValueError, AttributeError, TypeError):
            return web.json_response({"error": 'the body must be JSON like {"timeout": 30}'}, status=400)
        done = await asyncio.to_thread(writer.flush, timeout)
        return web.json_response({**writer.status(), "flushed": done})

    return True


def flush_on_sigterm(writer, timeout: float = SHUTDOWN_FLUSH_S) -> bool:
    """On SIGTERM, finish the queued writes (at most ``timeout`` s), then do what SIGTERM did before.

    ComfyUI's ``main.py`` installs no SIGTERM handler (checked 0.18.1, 0.30.2), so by default the
    process dies at once and would lose queued images; Ctrl-C (KeyboardInterrupt) ends the process
    normally and the writer's threads finish the queue at exit. A handler someone else installed
    is called after the flush. Must run on the main thread (ComfyUI loads custom nodes there).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        return False

    def on_sigterm(signum, frame):
        if writer.pending_count():
            LOG.info("Z-Image Save Image: writing %d queued image(s) before exiting", writer.pending_count())
            if not writer.flush(timeout):
                LOG.error("Z-Image Save Image: %d image(s) were still being written after %.0f s and are lost",
                          writer.pending_count(), timeout)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
