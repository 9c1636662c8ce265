"""Start a real ComfyUI server with this pack and tiny random models, for the integration tests.

ComfyUI is found at $COMFYUI_PATH, else the ComfyUI this pack is installed in (its
custom_nodes folder), else ~/comfy/ComfyUI (comfy-cli's default workspace). The server runs
from that work tree with ``--base-directory`` pointing at a temporary folder, so nothing is
written into ComfyUI itself: custom_nodes there holds links to this pack and to the test-only
loader nodes of tests/testing_pack, models/ holds the tiny files.

Also a command: ``python tests/harness.py demo`` runs the main shipped workflow through the
API client on such a server; ``python tests/harness.py schema`` rewrites the snapshot of our
node schemas in tests/data, ``python tests/harness.py stock-schema`` the stock node schema of the
ComfyUI at $COMFYUI_PATH (tests/data/object_info-<version>.json).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTING_PACK = REPO / "tests" / "testing_pack"
DATA = REPO / "tests" / "data"
PACK_FOLDER = "ComfyUI-ZImage-Lab"
TINY_LOADERS = {"UNETLoader": "ZImageLabTestTinyUNETLoader", "CLIPLoader": "ZImageLabTestTinyCLIPLoader"}
TINY_FILES = {"unet_name": "tiny_zimage.safetensors", "clip_name": "tiny_qwen3.safetensors",
              "vae_name": "tiny_flux_taesd.safetensors"}

sys.path.insert(0, str(REPO))
from zlab.api import ComfyClient  # noqa: E402


def find_comfyui() -> Path | None:
    """The ComfyUI work tree to test against, or None."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if REPO.parent.name == "custom_nodes":
        candidates.append(REPO.parent.parent)
    candidates.append(Path.home() / "comfy" / "ComfyUI")
    for path in candidates:
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path.resolve()
    return None


def comfyui_version(comfyui: Path) -> str:
    """The version a ComfyUI work tree declares (comfyui_version.py), or "unknown"."""
    import re

    text = (comfyui / "comfyui_version.py").read_text() if (comfyui / "comfyui_version.py").is_file() else ""
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


def frontend_version() -> str:
    """The version of the frontend package this Python environment serves (ComfyUI's requirements pin it)."""
    from importlib import metadata

    try:
        return metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(comfyui: Path) -> str:
    """One line naming the ComfyUI under test: version, frontend, work tree, Python."""
    return (f"ComfyUI {comfyui_version(comfyui)} (frontend {frontend_version()}) at {comfyui}, "
            f"Python {sys.executable}")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base(comfyui: Path, base: Path, python: str = sys.executable) -> Path:
    """Lay out a ComfyUI base directory: pack links, tiny models, input/output folders."""
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_FOLDER, REPO), ("zimage_lab_testing", TESTING_PACK)):
        link = nodes_dir / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    models = base / "models"
    if not (models / "diffusion_models" / TINY_FILES["unet_name"]).exists():
        subprocess.run([python, str(TESTING_PACK / "tiny_models.py"), str(models)], cwd=comfyui, check=True,
                       stdout=subprocess.DEVNULL)
    for folder in ("loras", "steering_vectors"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    return base


class ComfyServer:
    """A ComfyUI server process on a free loopback port; stop() ends it whatever happened."""

    def __init__(self, comfyui: Path, base: Path, python: str = sys.executable, extra_args=()):
        self.comfyui, self.base, self.python = comfyui, base, python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.extra_args = list(extra_args)
        self.process = None

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        device = [] if os.environ.get("ZLAB_SERVER_GPU") else ["--cpu"]  # ZLAB_SERVER_GPU=1: ComfyUI's own device choice
        cmd = [self.python, "main.py", *device, "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        self._log = open(self.log_path, "w")
        # One intra-op thread: the tiny models gain nothing from more, and on a small shared machine
        # oversubscribed threads made a tiny forward 10-40x slower. Results do not depend on it.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("ZLAB_SERVER_THREADS", "1")}
        self.process = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        client = ComfyClient(self.url, timeout=5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                client.get_json("/system_stats")
                return self
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def use_tiny_models(api: dict) -> dict:
    """Swap the stock Z-Image loaders of an API workflow for the test-only tiny loaders and files."""
    out = copy.deepcopy(api)
    for node in out.values():
        if node["class_type"] in TINY_LOADERS:
            node["class_type"] = TINY_LOADERS[node["class_type"]]
        for key, filename in TINY_FILES.items():
            if key in node["inputs"] and node["class_type"] in (*TINY_LOADERS.values(), "VAELoader"):
                node["inputs"][key] = filename
    return out


def shrink_images(api: dict, size: int = 64) -> dict:
    """Make every empty latent small so the tiny models sample in a blink."""
    out = copy.deepcopy(api)
    for node in out.values():
        if node["class_type"] in ("EmptySD3LatentImage", "EmptyLatentImage"):
            node["inputs"]["width"] = node["inputs"]["height"] = size
    return out


def our_schema(object_info: dict) -> dict:
    """The /object_info entries of this pack's nodes."""
    return {k: v for k, v in object_info.items() if v.get("python_module", "").startswith("custom_nodes." + PACK_FOLDER)}


def _demo(out_dir: str) -> int:
    comfyui = find_comfyui()
    if comfyui is None:
        print("no ComfyUI found: set COMFYUI_PATH or put it at ~/comfy/ComfyUI", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="zimage-lab-demo-"))
    try:
        base = make_base(comfyui, workdir / "base")
        with ComfyServer(comfyui, base) as server:
            api = shrink_images(use_tiny_models(json.loads((REPO / "workflows/api/zimage_turbo_lab.json").read_text())), 256)
            workflow = workdir / "zimage_turbo_lab.tiny.json"
            workflow.write_text(json.dumps(api, indent=1))
            print(f"ComfyUI {comfyui} serving at {server.url} with tiny random models")
            return subprocess.call([sys.executable, "-m", "zlab", "run", str(workflow), "--server", server.url,
                                    "--prompt", "a lighthouse on a cliff at dawn, oil painting", "--out", out_dir], cwd=REPO)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _schema() -> int:
    comfyui = find_comfyui()
    workdir = Path(tempfile.mkdtemp(prefix="zimage-lab-schema-"))
    try:
        with ComfyServer(comfyui, make_base(comfyui, workdir)) as server:
            schema = our_schema(ComfyClient(server.url).object_info())
        (DATA / "object_info-zimage-lab.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(schema)} node schemas")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stock_schema() -> int:
    """Write tests/data/object_info-<version>.json: the stock node schema of the ComfyUI at COMFYUI_PATH
    (no custom node, empty model folders), which the core tests check the shipped workflows against."""
    comfyui = find_comfyui()
    workdir = Path(tempfile.mkdtemp(prefix="zimage-lab-stock-schema-"))
    try:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (workdir / sub).mkdir()
        with ComfyServer(comfyui, workdir) as server:
            schema = ComfyClient(server.url).object_info()
        path = DATA / f"object_info-{comfyui_version(comfyui)}.json"
        path.write_text(json.dumps(schema) + "\n")
        print(f"wrote {len(schema)} node schemas of {describe(comfyui)} to {path.relative_to(REPO)}")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def stock_schema_versions() -> list[str]:
    """The ComfyUI versions whose stock node schema is in tests/data (object_info-<version>.json)."""
    names = (p.name[len("object_info-"):-len(".json")] for p in DATA.glob("object_info-*.json"))
    return sorted((n for n in names if n[:1].isdigit()), key=lambda v: tuple(int(x) for x in v.split(".")))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "demo":
        sys.exit(_demo(sys.argv[2] if len(sys.argv) > 2 else str(REPO / "out")))
    if command == "schema":
        sys.exit(_schema())
    if command == "stock-schema":
        sys.exit(_stock_schema())
    print("usage: python tests/harness.py demo [OUT_DIR] | schema | stock-schema", file=sys.stderr)
    sys.exit(2)
