"""The pack's frontend files, checked without ComfyUI: help pages for every node of the schema
snapshot, template-browser thumbnails for every workflow, and js that uses only public modules."""

import json
import re

from PIL import Image

PUBLIC_MODULES = {"../../scripts/app.js", "../../scripts/api.js"}


def our_nodes(repo):
    return json.loads((repo / "tests" / "data" / "object_info-zimage-lab.json").read_text())


def test_every_node_has_a_description_and_a_tooltip_on_every_input(repo):
    for node_id, spec in our_nodes(repo).items():
        assert spec.get("description", "").strip(), f"{node_id} has no description"
        for group in ("required", "optional"):
            for name, input_spec in spec["input"].get(group, {}).items():
                options = input_spec[1] if len(input_spec) > 1 else {}
                assert options.get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"


def test_every_node_has_a_help_page_with_a_title_and_its_inputs(repo):
    nodes = our_nodes(repo)
    assert nodes
    for node_id, spec in nodes.items():
        page = repo / "js" / "docs" / f"{node_id}.md"
        assert page.is_file(), f"no help page js/docs/{node_id}.md (ComfyUI's node-help panel shows it)"
        text = page.read_text()
        assert text.startswith("# "), f"{page.name} must start with a '# Title' heading"
        if any(spec["input"].get(group) for group in ("required", "optional")):
            assert re.search(r"^#+ .*\binputs?\b", text, flags=re.M | re.I), f"{page.name} has no Inputs section"


def test_help_pages_belong_to_nodes(repo):
    nodes = set(our_nodes(repo))
    pages = {p.stem for p in (repo / "js" / "docs").glob("*.md")}
    assert pages <= nodes, f"help pages for unknown nodes (renamed?): {sorted(pages - nodes)}"


def test_every_workflow_has_a_template_thumbnail(repo):
    # ComfyUI's template browser asks for workflows/<name>.jpg and logs a 404 without it.
    # Render them with: python tests/browser.py thumbnails
    for workflow in sorted((repo / "workflows").glob("*.json")):
        thumb = workflow.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing: run `python tests/browser.py thumbnails`"
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and min(image.size) >= 128


def test_js_imports_only_public_frontend_modules(repo):
    # Importing internal modules (scripts/widgets.js, ...) prints deprecation notices and breaks on updates.
    for path in sorted((repo / "js").rglob("*.js")):
        for module in re.findall(r"""^\s*import\s.*?from\s+["']([^"']+)["']""", path.read_text(), flags=re.M):
            assert module in PUBLIC_MODULES, f"{path.name} imports {module}"
