"""Saving images as ComfyUI's SaveImage does, with the PNG encode and write off the prompt's thread.

SaveImage (ComfyUI ``nodes.py``) converts each image with ``clip(255 * x, 0, 255).astype(uint8)``,
puts the prompt and every ``extra_pnginfo`` entry (the UI workflow) into tEXt chunks as JSON, and
encodes with PIL at ``compress_level`` 4 on the prompt's thread: a 1024x1024 PNG costs 0.1-0.4 s of
CPU, during which the GPU waits for the next prompt. Here the same bytes are produced, but:

1. on the prompt's thread (cheap): pixels to uint8 (a private copy), text chunks to strings, and the
   file name reserved by creating ``<name>.part`` exclusively. ComfyUI's counter scan
   (``folder_paths.get_save_image_path``) parses ``<prefix>_<counter>_...`` names, so the placeholder
   reserves the counter for this pack, for stock SaveImage and for other processes alike;
2. on a writer thread: PIL encodes into the placeholder, then ``os.replace`` gives it its final name,
   so no reader ever sees half a PNG under the final name.

``BackgroundWriter`` keeps the pending files by path so a server can make a download of one wait for
it (``wait_for``), bounds the memory of queued images (the node waits for room when the encoder falls
behind), and ``flush`` finishes every queued write (at exit, on SIGTERM, on request).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

LOG = logging.getLogger("zimage_lab.save")
PART_SUFFIX = ".part"
STOCK_COMPRESS_LEVEL = 4  # SaveImage's self.compress_level
DEFAULT_WORKERS = 2
DEFAULT_QUEUE_MB = 256


def to_uint8(image) -> np.ndarray:
    """One IMAGE [H, W, C] (torch tensor or numpy, floats in [0, 1]) as SaveImage converts it."""
    array = image.cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)
    scaled = array * 255.  # a new array: the same values as SaveImage's 255. * x, clipped in place (10x faster)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def text_chunks(prompt, extra_pnginfo) -> list[tuple[str, str]]:
    """The PNG text chunks SaveImage writes: the prompt, then each extra_pnginfo entry, as JSON."""
    chunks = []
    if prompt is not None:
        chunks.append(("prompt", json.dumps(prompt)))
    if extra_pnginfo is not None:
        for key in extra_pnginfo:
            chunks.append((key, json.dumps(extra_pnginfo[key])))
    return chunks


def png_info(chunks: list[tuple[str, str]] | None) -> PngInfo | None:
    """PngInfo with the chunks added as SaveImage adds them; None (no metadata) when chunks is None."""
    if chunks is None:
        return None
    info = PngInfo()
    for key, value in chunks:
        info.add_text(key, value)
    return info


def file_names(filename: str, counter: int, count: int) -> list[str]:
    """SaveImage's names for a batch: ``<filename with %batch_num%>_<counter:05>_.png``, counter + 1 each."""
    return [f"{filename.replace('%batch_num%', str(n))}_{counter + n:05}_.png" for n in range(count)]


def reserve(folder: str, filename: str, counter: int, count: int) -> list[str]:
    """Reserve ``count`` SaveImage names in ``folder`` from ``counter`` on by creating their ``.part``
    placeholders exclusively; a name already taken (by a file or a placeholder) moves the whole batch
    to the next free counter, so batches stay consecutive as SaveImage numbers them."""
    while True:
        names = file_names(filename, counter, count)
        made = []
        for name in names:
            path = os.path.join(folder, name)
            if os.path.exists(path) or not _create_exclusive(path + PART_SUFFIX):
                break
            made.append(path + PART_SUFFIX)
        else:
            return names
        for part in made:
            os.remove(part)
        counter += 1


def _create_exclusive(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False


def write_png(array: np.ndarray, path: str, chunks: list[tuple[str, str]] | None, compress_level: int) -> None:
    """Encode into ``path + '.part'`` exactly as SaveImage's ``img.save`` does, then rename it to ``path``."""
    part = path + PART_SUFFIX
    try:
        Image.fromarray(array).save(part, format="PNG", pnginfo=png_info(chunks), compress_level=compress_level)
        os.replace(part, path)
    except BaseException:
        _remove_quietly(part)
        raise


def remove_placeholder(path: str) -> None:
    """Give back a reserved name that will not be written."""
    _remove_quietly(path + PART_SUFFIX)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def path_key(path: str) -> str:
    """How pending files are looked up: absolute, normalised, case-folded where the OS folds case."""
    return os.path.normcase(os.path.abspath(path))


@dataclass
class WriteStats:
    queued: int = 0
    written: int = 0
    failed: int = 0
    waited_for_room_s: float = 0.0
    last_error: str = ""


class BackgroundWriter:
    """A small pool of writer threads for PNG files, with the pending files looked up by path.

    ``max_bytes`` bounds the uint8 pixels waiting to be encoded; ``submit`` blocks while it is full
    (a prompt then waits for the encoder, as SaveImage would have). Threads are created on first
    use and are not daemons, so a normal interpreter exit finishes the queue.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, max_bytes: int = DEFAULT_QUEUE_MB << 20):
        self.workers, self.max_bytes = max(1, workers), max(1, max_bytes)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._bytes = 0
        self._room = threading.Condition(threading.RLock())
        self.stats = WriteStats()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="zimage-lab-save")
        return self._pool

    def submit(self, array: np.ndarray, path: str, chunks, compress_level: int) -> Future:
        """Queue one file (its ``.part`` placeholder must exist); returns the Future of the write."""
        size = array.nbytes
        with self._room:
            start = time.monotonic()
            while self._bytes and self._bytes + size > self.max_bytes:
                self._room.wait(timeout=1.0)
            self.stats.waited_for_room_s += time.monotonic() - start
            self._bytes += size
            self.stats.queued += 1
            future = self._executor().submit(self._write, array, path, chunks, compress_level)
            self._pending[path_key(path)] = future
        future.add_done_callback(lambda f: self._done(path, size, f))
        return future

    def _write(self, array, path, chunks, compress_level) -> str:
        write_png(array, path, chunks, compress_level)
        return path

    def _done(self, path: str, size: int, future: Future) -> None:
        with self._room:
            self._bytes -= size
            if self._pending.get(path_key(path)) is future:
                del self._pending[path_key(path)]
            error = future.exception()
            if error is None:
                self.stats.written += 1
            else:
                self.stats.failed += 1
                self.stats.last_error = f"{path}: {type(error).__name__}: {error}"
                LOG.error("Z-Image Save Image could not write %s: %s", path, error)
            self._room.notify_all()

    def pending(self, path: str) -> Future | None:
        """The Future of a queued or running write of ``path``, or None when none is pending."""
        return self._pending.get(path_key(path)) if self._pending else None

    def pending_count(self) -> int:
        return len(self._pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write has finished; False when ``timeout`` seconds ran out first.
        Takes no lock, so a signal handler may call it while another frame of the same thread holds one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            for future in list(self._pending.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                try:
                    future.result(timeout=left)
                except TimeoutError:
                    return False
                except Exception:
                    pass  # logged by _done
        return True

    def status(self) -> dict:
        s = self.stats
        return {"pending": self.pending_count(), "pending_mb": round(self._bytes / 2**20, 1), "queued": s.queued,
                "written": s.written, "failed": s.failed, "waited_for_room_s": round(s.waited_for_room_s, 3),
                "last_error": s.last_error, "workers": self.workers, "max_mb": self.max_bytes >> 20}


def writer_from_env(environ=os.environ) -> BackgroundWriter:
    """The writer sized by ZIMAGE_LAB_SAVE_WORKERS and ZIMAGE_LAB_SAVE_QUEUE_MB (defaults 2 and 256)."""
    workers = int(environ.get("ZIMAGE_LAB_SAVE_WORKERS", DEFAULT_WORKERS))
    queue_mb = int(environ.get("ZIMAGE_LAB_SAVE_QUEUE_MB", DEFAULT_QUEUE_MB))
    return BackgroundWriter(workers, queue_mb << 20)
