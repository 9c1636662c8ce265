"""Every import below ComfyUI's public node API lives in nodes/_internals/ (issue 14's grep criterion).

Scope: the code the pack runs (``__init__.py``, nodes/, core/, zlab/). bench/ and tests/ are harnesses that build
ComfyUI's own models in-process to measure or check them (as ComfyUI's own tests do); the pack never imports them,
which the last test checks, so their reach below the node API never runs inside a user's ComfyUI."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"comfy", "comfy_extras", "comfy_execution", "comfy_aimdo", "comfyui_version", "server", "nodes",
            "latent_preview", "execution", "app", "main", "cuda_malloc", "new_updater", "protocol", "utils"}
PUBLIC = {"comfy_api", "folder_paths", "node_helpers"}
SHIPPED = ["__init__.py", "nodes", "core", "zlab"]


def shipped_files():
    """The pack's Python files outside nodes/_internals/."""
    for entry in SHIPPED:
        path = ROOT / entry
        for file in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            if "_internals" not in file.relative_to(ROOT).parts:
                yield file


def absolute_imports(tree):
    """(line, module) of every absolute import in a module, at any depth, static or through import_module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield node.lineno, node.args[0].value


def violations(files, banned):
    """'file:line module' for each import whose top-level package is in banned."""
    found = []
    for file in files:
        for line, module in absolute_imports(ast.parse(file.read_text(), str(file))):
            if module.split(".")[0] in banned:
                found.append(f"{file.relative_to(ROOT)}:{line} {module}")
    return found


def test_scan_sees_the_pack_and_its_internals():
    files = list(shipped_files())
    assert sum(f.parent == ROOT / "nodes" for f in files) >= 10 and any(f.parent == ROOT / "core" for f in files)
    inside = sorted((ROOT / "nodes" / "_internals").rglob("*.py"))
    assert violations(inside, INTERNAL), "the scan finds no internal import even inside nodes/_internals/"


@pytest.mark.parametrize("source", [
    "import comfy.model_management", "from comfy_extras.nodes_model_advanced import X",
    "def f():\n    import server", "import importlib\nimportlib.import_module('latent_preview')",
    "from nodes import common_ksampler"])
def test_scan_catches_each_form(tmp_path, source):
    file = ROOT / "tests" / "core" / "_boundary_probe.py"
    try:
        file.write_text(source)
        assert violations([file], INTERNAL)
    finally:
        file.unlink()


def test_only_public_node_api_outside_internals():
    assert violations(shipped_files(), INTERNAL) == []


def test_core_never_imports_comfyui():
    assert violations((ROOT / "core").rglob("*.py"), INTERNAL | PUBLIC) == []


def test_the_pack_never_imports_its_harnesses():
    assert violations(shipped_files(), {"bench", "tests", "harness", "conftest"}) == []
