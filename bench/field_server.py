"""The field benchmark's server side: a ComfyUI process started as users start it, its websocket, one timed prompt.

A helper of bench/e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from zlab.api import ComfyClient, ComfyError, output_files  # noqa: E402

PACK_FOLDER = "ComfyUI-ZImage-Lab"


class Server:
    """``python main.py`` from the ComfyUI work tree with a base directory of our own; stop() ends it."""

    def __init__(self, comfyui: Path, base: Path, flags: list, python: str, tiny: bool):
        import harness

        self.comfyui, self.base, self.python = comfyui, base, python
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        frontend = base / "frontend"
        frontend.mkdir(parents=True, exist_ok=True)
        self.cmd = [python, "main.py", *(["--cpu"] if tiny else []), "--listen", "127.0.0.1", "--port",
                    str(self.port), "--base-directory", str(base), "--disable-auto-launch", "--database-url",
                    "sqlite:///:memory:", "--front-end-root", str(frontend), *flags]
        self.log_path = base / "server.log"
        self.process = None

    def start(self, timeout: float = 600.0) -> "Server":
        self._log = open(self.log_path, "a")
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a native crash (segfault, abort) leaves its stack in the log
        self.process = subprocess.Popen(self.cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        client = ComfyClient(self.url, timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log()[-3000:]}")
                try:
                    client.get_json("/system_stats")
                    return self
                except ComfyError:
                    time.sleep(0.5)
            raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")
        except BaseException:  # never leave a server behind (also on SIGTERM while it starts)
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()


def make_base(comfyui: Path, base: Path, models: Path | None, tiny: bool, python: str) -> Path:
    """custom_nodes with this pack; the checkpoints linked into models/ (tiny: the tests' files); fresh loras."""
    import harness

    if tiny:
        return harness.make_base(comfyui, base, python)
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    if not (nodes_dir / PACK_FOLDER).exists():
        (nodes_dir / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (base / "models").mkdir(exist_ok=True)
        link = base / "models" / folder
        if not link.exists():
            link.symlink_to(models / folder, target_is_directory=True)
    for folder in ("loras", "steering_vectors"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    return base


class Events:
    """Every websocket message of one client id, with the time it arrived (a reader thread)."""

    def __init__(self, url: str, client_id: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=1)
        self.items: list = []
        self.stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        import websocket

        while not self.stop:
            try:
                message = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                return
            if isinstance(message, str) and message.strip():
                try:
                    event = json.loads(message)
                except ValueError:
                    continue
                if isinstance(event, dict) and "type" in event:
                    self.items.append((time.perf_counter(), event["type"], event.get("data") or {}))

    def node_seconds(self, prompt_id: str, api: dict) -> dict:
        """{class_type: seconds} from consecutive ``executing`` messages of one prompt (summed per class)."""
        marks = [(t, d.get("node")) for t, kind, d in self.items
                 if kind == "executing" and d.get("prompt_id") == prompt_id]
        out: dict = {}
        for (t0, node), (t1, _) in zip(marks, marks[1:]):
            if node is not None and node in api:
                name = api[node]["class_type"]
                out[name] = out.get(name, 0.0) + t1 - t0
        return out

    def finished(self, prompt_id: str) -> bool:
        """Whether the server said this prompt ended (success, error or interruption)."""
        return any(kind in ("execution_success", "execution_error", "execution_interrupted")
                   and d.get("prompt_id") == prompt_id for _, kind, d in self.items[-50:])

    def wait(self, client: ComfyClient, prompt_id: str, timeout: float) -> dict:
        """The prompt's history entry once it ended (one websocket per client id: the client's own wait would
        take the server's messages away from this reader)."""
        deadline = time.monotonic() + timeout
        polled = time.monotonic()
        while time.monotonic() < deadline:
            if self.finished(prompt_id) or time.monotonic() - polled > 0.5:
                polled = time.monotonic()
                entry = client.history(prompt_id)
                if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                    return client._check_status(prompt_id, entry)
            time.sleep(0.01)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def close(self):
        self.stop = True
        self.ws.close()


def run_prompt(client: ComfyClient, events: Events, api: dict, timeout: float) -> dict:
    """Queue, wait, and time one prompt: {ok, error, server_s, wall_s, nodes, files}."""
    start = time.perf_counter()
    record = {"ok": False, "error": None, "server_s": None, "nodes": {}, "files": []}
    try:
        prompt_id = client.queue(api)
        entry = events.wait(client, prompt_id, timeout)
    except ComfyError as e:
        record["error"] = str(e)
        record["wall_s"] = time.perf_counter() - start
        return record
    record["wall_s"] = time.perf_counter() - start
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    if stamps.get("execution_start") and stamps.get("execution_success"):
        record["server_s"] = (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
    time.sleep(0.05)  # the last websocket messages
    record["nodes"] = events.node_seconds(prompt_id, api)
    record["files"] = [f for f in output_files(entry.get("outputs", {}))]
    record["outputs"] = entry.get("outputs", {})
    record["ok"] = True
    return record


def gpu_total_gb() -> float | None:
    """The GPU's memory in GB (nvidia-smi; this process never touches CUDA)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        return float(out.split()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def status(run: dict) -> str:
    """Whether a configuration ran every step, or why not."""
    if run.get("complete"):
        return "yes"
    return "stopped by the time budget" if run.get("stopped") else run.get("error", "no")[:80]


def table(report: dict) -> str:
    """Markdown table: per configuration and graph, median s / image, x stock, the main nodes."""
    lines = ["| ComfyUI | config | graph | n | s / image | x stock | steady s | steady x | sampler | VAEDecode | save "
             "| first prompt s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        for name, row in run.get("timing", {}).items():
            nodes = row["nodes"]
            sampler = nodes.get("KSampler") or nodes.get("ZImageLabSampler")
            save = next((v for k, v in nodes.items() if "Save" in k), None)

            def f(v, d=3):
                return "-" if v is None else f"{v:.{d}f}"

            lines.append(f"| {run['system']['comfyui']} | {run['config']} | {name} | {row['n']} | {f(row['server_s'])} "
                         f"| {f(row['x_stock'], 2)} | {f(row.get('steady_s'))} | {f(row.get('steady_x_stock'), 2)} | {f(sampler)} | {f(nodes.get('VAEDecode'))} | {f(save)} "
                         f"| {f(row['first_s'], 1)} |")
    lines.append("")
    lines.append("| ComfyUI | config | stock = lab pixels | workflows ok | server crashes | complete |")
    lines.append("|---|---|---|---|---|---|")
    for run in report["runs"]:
        wf = run.get("workflows", {})
        ok = sum(1 for r in wf.values() if r["ok"])
        ident = run.get("identity", {}).get("identical")
        lines.append(f"| {run['system']['comfyui']} | {run['config']} | {'-' if ident is None else ident} | "
                     f"{ok}/{len(wf)} | {run['crashes']} | {status(run)} |")
    return "\n".join(lines)
