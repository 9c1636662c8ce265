"""The pack as an installable ComfyUI node pack: layout, metadata, import hygiene."""

import ast
import subprocess
import importlib.util
import sys
import tomllib

def test_root_imports_without_comfyui_and_loads_nothing_heavy(repo):
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('zimage_lab_root', {str(repo / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(repo)!r}])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert m.WEB_DIRECTORY == './js' and callable(m.comfy_entrypoint)\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'comfy', 'comfy_api', 'transformers', 'matplotlib'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_never_imports_comfy(repo):
    banned = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "node_helpers", "latent_preview")
    for path in sorted((repo / "core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_registry_metadata(repo):
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] == "zimage-lab"
    major, minor, patch = project["version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))
    assert project["license"] == {"file": "LICENSE"} and (repo / "LICENSE").is_file()
    assert project["requires-python"] and project["description"]
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] == "Z-Image Lab" and comfy["Icon"]
    assert comfy["requires-comfyui"]
    deps = {d.split(">")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert not deps & {"torch", "torchvision", "torchaudio", "comfyui"}, "torch comes with ComfyUI"
    assert {"transformers", "safetensors", "numpy"} <= deps
    req = {l.split(">")[0].split("=")[0].strip().lower() for l in (repo / "requirements.txt").read_text().splitlines()
           if l.strip() and not l.startswith("#")}
    assert req == deps, "requirements.txt (ComfyUI Manager) and pyproject dependencies must agree"


def test_layout(repo):
    for path in ("__init__.py", "core/__init__.py", "nodes/__init__.py", "js", "workflows/api", "tests",
                 "README.md", "LICENSE", "pyproject.toml", "requirements.txt", ".ci/run"):
        assert (repo / path).exists(), path


def test_nodes_and_core_mirror_each_other(repo):
    nodes = {p.stem for p in (repo / "nodes").glob("*.py") if not p.stem.startswith("_")}
    core = {p.stem for p in (repo / "core").glob("*.py") if not p.stem.startswith("_")}
    assert nodes <= core, f"node modules without a core module: {sorted(nodes - core)}"


def test_testing_pack_is_not_shipped(repo):
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    assert "tests" not in meta["tool"]["comfy"].get("includes", [])
    for path in (repo / "nodes").glob("*.py"):
        assert "ZImageLabTest" not in path.read_text()


def test_node_ids_are_unique_across_the_pack_and_the_test_pack(repo):
    import re

    seen = {}
    for path in sorted([*(repo / "nodes").glob("*.py"), *(repo / "tests" / "testing_pack").glob("*.py")]):
        for node_id in re.findall(r'node_id="([^"]+)"', path.read_text()):
            assert node_id not in seen, f"node id {node_id} is defined in both {seen[node_id]} and {path.name}"
            seen[node_id] = path.name
    assert all(k.startswith("ZImageLab") for k in seen)
