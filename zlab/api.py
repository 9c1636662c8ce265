"""A small client for ComfyUI's public HTTP / websocket API (POST /prompt, /ws, /history, /view)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field


class ServerUnreachable(Exception):
    """Mixin of the ComfyError raised when the server did not answer (refused, reset or timed out)."""


class ComfyError(RuntimeError):
    """Anything that stops a workflow from running, with a message meant for a person."""


class UnreachableError(ComfyError, ServerUnreachable):
    """The server did not answer: a server problem, never a fault of the prompt."""


def format_validation_error(body: dict) -> str:
    """Turn ComfyUI's /prompt 400 answer into readable lines (missing nodes, bad inputs)."""
    lines = []
    error = body.get("error") or {}
    if isinstance(error, dict):
        lines.append(f"{error.get('message', 'prompt rejected')}: {error.get('details', '')}".rstrip(": "))
    else:
        lines.append(str(error))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for e in node_error.get("errors", []):
            extra = e.get("extra_info", {})
            name = extra.get("input_name")
            where = f"node {node_id} ({node_error.get('class_type', '?')})" + (f" input '{name}'" if name else "")
            lines.append(f"  {where}: {e.get('message', '')} {e.get('details', '')}".rstrip())
    return "\n".join(lines)


@dataclass
class RunResult:
    """The outcome of one queued prompt."""

    prompt_id: str
    outputs: dict
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


class ComfyClient:
    """Talks to one ComfyUI server; every failure becomes a ComfyError with a clear message."""

    def __init__(self, url: str = "http://127.0.0.1:8188", timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, path: str, data: bytes | None = None, method: str | None = None):
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UnreachableError(f"cannot reach ComfyUI at {self.url} ({reason}). Is the server running? "
                             "Start it with `python main.py --listen 127.0.0.1 --port 8188` or pass --server URL.") from None

    def get_json(self, path: str):
        """GET a JSON endpoint."""
        with self._open(path) as response:
            return json.loads(response.read())

    def object_info(self) -> dict:
        """Every node type the server knows, with its input schema."""
        return self.get_json("/object_info")

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        """POST an API-format prompt (``extra_data``: e.g. ``{"extra_pnginfo": {"workflow": ui}}``, which
        SaveImage writes into the PNG); return its prompt_id or raise with the validation errors."""
        missing = self.missing_node_types(prompt)
        if missing:
            raise ComfyError("the server lacks these node types: " + ", ".join(sorted(missing)) +
                             ". Install the node packs that provide them (Z-Image Lab nodes need this pack in custom_nodes).")
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        data = json.dumps(body).encode()
        try:
            with self._open("/prompt", data=data) as response:
                return json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read())
            except ValueError:
                body = {"error": f"HTTP {e.code}"}
            raise ComfyError("ComfyUI rejected the workflow:\n" + format_validation_error(body)) from None

    def missing_node_types(self, prompt: dict) -> set[str]:
        """Class types in the prompt that the server does not have."""
        known = self.object_info()
        return {node["class_type"] for node in prompt.values() if node.get("class_type") not in known}

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a prompt, or None while it is queued or running."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 3600.0, progress: bool = True) -> dict:
        """Wait for a prompt to finish (websocket progress when available) and return its history entry."""
        deadline = time.monotonic() + timeout
        try:
            self._follow_websocket(prompt_id, deadline, progress)
        except ImportError:
            pass
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return self._check_status(prompt_id, entry)
            if entry is not None and entry.get("status", {}).get("status_str") == "error":
                return self._check_status(prompt_id, entry)
            time.sleep(0.2)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def _follow_websocket(self, prompt_id: str, deadline: float, show: bool) -> None:
        """Show per-node progress from /ws until the prompt stops executing."""
        import websocket  # websocket-client

        ws_url = self.url.replace("http", "ws", 1) + "/ws?" + urllib.parse.urlencode({"clientId": self.client_id})
        try:
            ws = websocket.create_connection(ws_url, timeout=5)
        except Exception:
            return
        bar = None
        try:
            while time.monotonic() < deadline:
                if self.history(prompt_id) is not None:
                    return
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if not isinstance(message, str):
                    continue
                event = json.loads(message)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if event["type"] == "progress" and show:
                    bar = _progress(bar, data["value"], data["max"], data.get("node"))
                elif event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    return
                elif event["type"] == "executing" and data.get("node") is None:
                    return
        finally:
            if bar is not None:
                bar.close()
            ws.close()

    @staticmethod
    def _check_status(prompt_id: str, entry: dict) -> dict:
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    raise ComfyError(f"prompt {prompt_id} failed in node {data.get('node_id')} "
                                     f"({data.get('node_type')}): {data.get('exception_message', '').strip()}")
            raise ComfyError(f"prompt {prompt_id} failed")
        return entry

    def download(self, file_info: dict, dest_dir: str) -> str:
        """Fetch one output file through /view into dest_dir; return its path."""
        os.makedirs(dest_dir, exist_ok=True)
        path = os.path.join(dest_dir, os.path.basename(file_info["filename"]))
        data = self.fetch(file_info)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def fetch(self, file_info: dict) -> bytes:
        """The bytes of one output file, through /view."""
        query = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        with self._open("/view?" + query) as response:
            return response.read()

    def run(self, prompt: dict, out_dir: str | None = None, timeout: float = 3600.0, progress: bool = True) -> RunResult:
        """Queue a prompt, wait for it, and download its images (and other files) into out_dir."""
        start = time.monotonic()
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout=timeout, progress=progress)
        result = RunResult(prompt_id, entry.get("outputs", {}), seconds=time.monotonic() - start)
        if out_dir:
            for file_info in output_files(result.outputs):
                result.files.append(self.download(file_info, out_dir))
        return result


def output_files(outputs: dict) -> list[dict]:
    """Every file record (images, latents, ...) in a history entry's outputs, in node order."""
    files = []
    for node_id in sorted(outputs, key=lambda k: (len(k), k)):
        for value in outputs[node_id].values():
            if isinstance(value, list):
                files.extend(v for v in value if isinstance(v, dict) and "filename" in v)
    return files


def _progress(bar, value, maximum, node):
    """Advance (or create) a tqdm bar for the websocket 'progress' events."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"\rnode {node}: {value}/{maximum}", end="", flush=True)
        return None
    if bar is None or bar.total != maximum or value < bar.n:
        if bar is not None:
            bar.close()
        bar = tqdm(total=maximum, desc=f"node {node}", unit="step")
    bar.update(value - bar.n)
    return bar
