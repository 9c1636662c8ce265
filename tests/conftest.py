"""Test tiers: core tests run anywhere; ``integration`` tests need a real ComfyUI (see harness.py).

Without ComfyUI the integration tests are skipped and one line says how many and why; with it,
one session-wide server runs them all and the summary says how many ran.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import harness

COMFYUI = harness.find_comfyui()
# The accelerator switches compile_blocks off on a CPU server (minutes of compiling for little gain); the tests'
# servers inherit this and compile anyway, so the compiled maths is checked without a GPU. The bad-input sweep
# starts its own server without it, as users run.
os.environ.setdefault("ZLAB_ACCELERATE_CPU_COMPILE", "1")
_counts = {"integration_collected": 0, "browser_collected": 0, "browser_missing": None}


def pytest_report_header(config):
    return "integration tests against: " + (harness.describe(COMFYUI) if COMFYUI else "no ComfyUI found")


def pytest_collection_modifyitems(config, items):
    integration = [item for item in items if item.get_closest_marker("integration")]
    if COMFYUI is None:
        skip = pytest.mark.skip(reason="no ComfyUI found at $COMFYUI_PATH or ~/comfy/ComfyUI")
        for item in integration:
            item.add_marker(skip)
    in_browser = [item for item in items if item.get_closest_marker("browser")]
    if in_browser:
        import browser

        _counts["browser_missing"] = browser.missing_reason()
        if _counts["browser_missing"]:
            for item in in_browser:
                item.add_marker(pytest.mark.skip(reason=_counts["browser_missing"]))


def pytest_collection_finish(session):
    """Count what will run (after -m / -k deselection)."""
    _counts["integration_collected"] = sum(1 for item in session.items if item.get_closest_marker("integration"))
    _counts["browser_collected"] = sum(1 for item in session.items if item.get_closest_marker("browser"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = _counts["integration_collected"]
    if n == 0:
        return
    if COMFYUI is None:
        terminalreporter.write_line(
            f"integration: {n} tests SKIPPED because no ComfyUI was found at $COMFYUI_PATH or ~/comfy/ComfyUI "
            "(set COMFYUI_PATH to a ComfyUI 0.18.1 or 0.30.2 work tree to run them)")
        return
    if _counts["browser_missing"]:
        terminalreporter.write_line(f"browser: {_counts['browser_collected']} tests SKIPPED: {_counts['browser_missing']}")
    stats = terminalreporter.stats
    ran = [r for key in ("passed", "failed", "error") for r in stats.get(key, [])
           if getattr(r, "when", "call") == "call" and "integration" in getattr(r, "keywords", {})]
    terminalreporter.write_line(f"integration: {len(ran)} of {n} tests ran against {harness.describe(COMFYUI)}")


class Lab:
    """A running ComfyUI with this pack and the tiny models, plus helpers to read its outputs."""

    def __init__(self, server: harness.ComfyServer):
        self.server = server
        self.url = server.url
        self.client = harness.ComfyClient(server.url, timeout=120)
        self.base = server.base
        self.output = server.base / "output"

    def run(self, api: dict, timeout: float = 600.0):
        """Queue an API prompt and wait; returns the zlab RunResult (outputs per node)."""
        return self.client.run(api, timeout=timeout, progress=False)

    def file(self, record: dict) -> Path:
        """An output file of a finished prompt; one that Z-Image Save Image still writes is waited for."""
        path = self.output / record.get("subfolder", "") / record["filename"]
        if not path.exists() or path.with_name(path.name + ".part").exists():
            self.flush_saves()
        return path

    def flush_saves(self) -> dict:
        """Wait until Z-Image Save Image has written every queued image (POST /zimage_lab/save/flush)."""
        import urllib.request

        request = urllib.request.Request(self.url + "/zimage_lab/save/flush", data=b'{"timeout": 300}', method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=330) as response:
            return json.loads(response.read())

    def latents(self, result, node_id: str):
        """Tensors saved by a SaveLatent node of a finished prompt."""
        from safetensors.torch import load_file

        return [load_file(str(self.file(r)))["latent_tensor"] for r in result.outputs[node_id]["latents"]]

    def images(self, result, node_id: str):
        """uint8 arrays saved by a SaveImage node of a finished prompt."""
        import numpy as np
        from PIL import Image

        return [np.asarray(Image.open(self.file(r))) for r in result.outputs[node_id]["images"]]

    def workflow(self, name: str, image_size: int = 64) -> dict:
        """A shipped API workflow with the tiny models swapped in and small images."""
        api = json.loads((harness.REPO / "workflows" / "api" / name).read_text())
        return harness.shrink_images(harness.use_tiny_models(api), image_size)


@pytest.fixture(scope="session")
def lab():
    """One real ComfyUI server for the whole session, stopped whatever happens."""
    if COMFYUI is None:
        pytest.skip("no ComfyUI found at $COMFYUI_PATH or ~/comfy/ComfyUI")
    workdir = Path(tempfile.mkdtemp(prefix="zimage-lab-tests-"))
    server = harness.ComfyServer(COMFYUI, harness.make_base(COMFYUI, workdir / "base"))
    try:
        server.start()
        yield Lab(server)
    finally:
        server.stop()
        artifacts = os.environ.get("ZLAB_TEST_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(server.log_path, Path(artifacts) / "server.log")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def comfyui_path():
    if COMFYUI is None:
        pytest.skip("no ComfyUI found")
    return COMFYUI


@pytest.fixture(scope="session")
def repo():
    return harness.REPO


@pytest.fixture(scope="session", params=harness.stock_schema_versions())
def node_schema(request):
    """Stock node schema of each tested ComfyUI version (0.18.1, 0.30.2) plus this pack's, as shipped with the tests."""
    schema = json.loads((harness.DATA / f"object_info-{request.param}.json").read_text())
    schema.update(json.loads((harness.DATA / "object_info-zimage-lab.json").read_text()))
    return schema


@pytest.fixture(scope="session")
def python():
    return sys.executable


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium (tests/browser.py) for the session; skipped, saying why, where it cannot run."""
    import browser

    reason = browser.missing_reason()
    if reason:
        pytest.skip(reason)
    instance = browser.Chromium()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def comfy_page(lab, chromium):
    """A fresh ComfyUI tab (empty browser profile) on the session's test server, ready to use."""
    page = chromium.page(lab.url).open()
    try:
        yield page
    finally:
        page.close()
