"""The Ray actor of ``zlab sweep --ray``: one per GPU, owning a ComfyUI server on its node (or attached to one).

Plain Python here; zlab/sweep_ray.py wraps the class with ``ray.remote`` (num_gpus=1, max_restarts). The
actor runs each cell it is given on its server and returns the cell's files; it never writes results. When
the server it started has died, the actor ends its own process so that Ray restarts it (a fresh server),
and the driver runs the cells it had elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .api import ComfyClient, ComfyError, ServerUnreachable
from .server_score import read_scores
from .sweep_outputs import execution_seconds, fetch_outputs

POLL_S = 0.1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the server's process (Linux): get SIGTERM when the actor that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def find_comfyui(path: str | None) -> Path:
    """ComfyUI on this node: the given path, else $COMFYUI_PATH."""
    found = path or os.environ.get("COMFYUI_PATH")
    if not found or not (Path(found).expanduser() / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI on node {socket.gethostname()}: set COMFYUI_PATH on every Ray node (where "
                           f"ComfyUI's main.py is, with this pack in its custom_nodes) or pass --comfyui (got {found!r})")
    return Path(found).expanduser().resolve()


class ComfyWorker:
    """A ComfyUI server on this node (started here, or named by URL) that runs the cells it is handed."""

    def __init__(self, name: str, url: str | None = None, comfyui: str | None = None, base_directory: str | None = None,
                 server_args: list[str] = (), scratch: str | None = None, timeout: float = 60.0,
                 start_timeout: float = 600.0):
        self.name, self.process, self.timeout = name, None, timeout
        self.url = url or self.start_server(find_comfyui(comfyui), base_directory, list(server_args), scratch,
                                            start_timeout)
        self.client = ComfyClient(self.url, timeout=timeout)
        self.client.get_json("/system_stats")  # raises for a named server that does not answer

    def start_server(self, comfyui: Path, base: str | None, extra: list[str], scratch: str | None, limit: float) -> str:
        """Start ComfyUI's main.py on a free port with its own output / temp / user folders; return its URL."""
        if scratch:
            Path(scratch).mkdir(parents=True, exist_ok=True)
        own = Path(tempfile.mkdtemp(prefix=f"zlab-ray-{self.name}-", dir=scratch))
        port = free_port()
        folders = []
        for sub in ("output", "temp", "user"):
            (own / sub).mkdir()
            folders += [f"--{sub}-directory", str(own / sub)]
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               *(["--base-directory", base] if base else []), *folders, *extra]
        self.log_path = own / "server.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
        url = f"http://127.0.0.1:{port}"
        client, deadline = ComfyClient(url, timeout=5), time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                client.get_json("/system_stats")
                return url
            except ComfyError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {limit:.0f} s: {self.log_path.read_text(errors='replace')[-3000:]}")

    def info(self) -> dict:
        """Where this worker is: its name, node, server URL and pid, and the server's /system_stats."""
        return {"name": self.name, "node": socket.gethostname(), "url": self.url,
                "pid": self.process.pid if self.process else None, "system_stats": self.client.get_json("/system_stats")}

    def object_info(self) -> dict:
        return ComfyClient(self.url, timeout=max(self.timeout, 300)).object_info()

    def missing_node_types(self, prompt: dict) -> list[str]:
        return sorted(ComfyClient(self.url, timeout=max(self.timeout, 300)).missing_node_types(prompt))

    def healthy(self) -> bool:
        """True when the server answers (ends this actor when the server it started has died)."""
        try:
            self.client.get_json("/system_stats")
            return True
        except ComfyError:
            self.end_if_server_died()
            return False

    def end_if_server_died(self) -> None:
        """Our own server exited: end this actor's process, and Ray restarts the actor with a new server."""
        if self.process is not None and self.process.poll() is not None:
            os._exit(1)

    def run_cell(self, prompt: dict, timeout: float) -> dict:
        """Run one cell's prompt: {"status": "ok", files, timings} / {"status": "error", error} / {"status": "gone"}."""
        queued_at, start = round(time.time(), 3), time.monotonic()
        try:
            prompt_id = self.client.queue(prompt)
            entry = self.wait(prompt_id, start, timeout)
            if isinstance(entry, str):
                return {"status": "error", "error": entry, "server": self.url}
            files = fetch_outputs(self.client, entry.get("outputs", {}))
        except Exception as e:
            if not isinstance(e, (ServerUnreachable, OSError)) and self.healthy():  # the prompt itself failed
                return {"status": "error", "error": str(e), "server": self.url}
            return {"status": "gone", "error": str(e), "server": self.url}
        return {"status": "ok", "files": files, "server": self.url, "worker": self.name, "prompt_id": prompt_id,
                "seconds": execution_seconds(entry), "wall_seconds": round(time.monotonic() - start, 3),
                "queued_at": queued_at, "scores": read_scores(entry.get("outputs", {}))}

    def wait(self, prompt_id: str, start: float, timeout: float) -> dict | str:
        """The prompt's history entry once it ended, or its error message."""
        while True:
            entry = self.client.history(prompt_id)
            status = (entry or {}).get("status", {})
            if entry is not None and (status.get("completed") is not None or status.get("status_str") == "error"):
                try:
                    return self.client._check_status(prompt_id, entry)
                except ComfyError as e:
                    return str(e)
            if time.monotonic() - start > timeout:
                return f"prompt {prompt_id} did not finish within {timeout:.0f} s"
            time.sleep(POLL_S)

    def stop(self) -> None:
        """End the server this worker started."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
