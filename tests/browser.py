"""Drive the real ComfyUI frontend in headless Chromium, for the browser tests.

Chromium is Debian's package (/usr/bin/chromium, or $ZLAB_CHROMIUM), driven by Playwright's Python
client through ``executable_path`` (Playwright's own browser download is not used). ``ComfyPage``
wraps one tab on a ComfyUI server: it drops workflow files the way a user does, reads the
frontend's own stores (missing nodes and models, error overlay, dialogs, help panel), swaps in the
tiny test models like harness.use_tiny_models, queues with the Run button, and records every
console error and failed request so a test can insist there are none.

Also a command: ``python tests/browser.py thumbnails`` renders workflows/<name>.jpg, the picture
ComfyUI's template browser shows for each shipped workflow (it asks for that file and logs a 404
without it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
import urllib.request
from urllib.parse import urlparse

import harness

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
STORES = "document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia._s"

# Requests the frontend makes on its own and expects to fail on a fresh install: optional user
# files and unset settings (404), the help panel's localised page tried before <node>.md, and
# anything off this machine (the tests run without internet).
OPTIONAL_PATHS = [re.compile(p) for p in (
    r"^/user\.css$", r"^/api/userdata(/|$)", r"^/api/settings/",
    r"^/extensions/[^/]+/docs/[^/]+/[a-z]{2}(-[A-Za-z]+)?\.md$",
)]

# Console errors the stock frontend logs by itself at start-up, with no custom node installed (checked by
# tests/integration/test_browser.py with this pack's JavaScript stubbed out): ignored in the start-up phase only.
STOCK_STARTUP_ERRORS = {
    # frontend 1.47 (ComfyUI 0.30): src/stores/appModeStore.ts reads app.rootGraph when the store is created,
    # before the first graph exists; frontend 1.42 (ComfyUI 0.18) logs nothing
    "ComfyApp graph accessed before initialization",
}
OUR_EXTENSION_JS = re.compile(r"/extensions/" + re.escape(harness.PACK_FOLDER) + r"/.*\.js$")

# The page-side half of harness.use_tiny_models / shrink_images: replace stock Z-Image loaders by
# the test-only tiny loaders (rewiring their links), point file widgets at the tiny files, make
# empty latents small, and give LoadImage nodes their file names back.
TINY_SWAP_JS = """([loaders, files, size]) => {
  const graph = app.graph;
  const linkOf = (id) => graph.links.get ? graph.links.get(id) : graph.links[id];
  const swapped = [];
  for (const node of [...graph.nodes]) {
    if (loaders[node.type]) {
      const tiny = LiteGraph.createNode(loaders[node.type]);
      tiny.pos = [node.pos[0], node.pos[1]];
      tiny.title = node.title + ' (tiny)';
      graph.add(tiny);
      node.outputs.forEach((out, slot) => {
        for (const id of [...(out.links ?? [])]) {
          const link = linkOf(id);
          tiny.connect(slot, graph.getNodeById(link.target_id), link.target_slot);
        }
      });
      graph.remove(node);
      for (const w of tiny.widgets ?? []) if (files[w.name]) w.value = files[w.name];
      swapped.push(node.type);
    } else if (node.type === 'VAELoader') {
      node.widgets.find((w) => w.name === 'vae_name').value = files.vae_name;
    } else if (node.type === 'EmptySD3LatentImage' || node.type === 'EmptyLatentImage') {
      for (const w of node.widgets) if (w.name === 'width' || w.name === 'height') w.value = size;
    }
  }
  graph.setDirtyCanvas(true, true);
  return swapped;
}"""

EVENTS_JS = """() => {
  const ev = window.__zlab = {done: null, error: null, interrupted: null, previews: {}, legacyPreviews: 0, promptId: null};
  ev.cached = [];
  app.api.addEventListener('execution_start', (e) => { ev.promptId = e.detail.prompt_id; });
  app.api.addEventListener('execution_cached', (e) => { ev.cached.push(...(e.detail.nodes ?? []).map(String)); });
  app.api.addEventListener('execution_success', (e) => { ev.done = e.detail; });
  app.api.addEventListener('execution_error', (e) => { ev.error = e.detail; });
  app.api.addEventListener('execution_interrupted', (e) => { ev.interrupted = e.detail; });
  app.api.addEventListener('b_preview', () => { ev.legacyPreviews++; });
  app.api.addEventListener('b_preview_with_metadata', (e) => {
    const id = String(e.detail.nodeId ?? e.detail.displayNodeId);
    ev.previews[id] = (ev.previews[id] ?? 0) + 1;
  });
}"""

# Scroll the template dialog to its end: every scrolling box around the card grid to the bottom, then the
# load trigger (the element after the grid's wrapper) into view, so its IntersectionObserver fires.
SCROLL_TEMPLATES_JS = """() => {
  const grid = document.querySelector('[data-testid="template-workflows-content"]');
  if (!grid) return false;
  for (let e = grid.parentElement; e; e = e.parentElement) if (e.scrollHeight > e.clientHeight) e.scrollTop = e.scrollHeight;
  grid.parentElement?.nextElementSibling?.scrollIntoView({block: 'center'});
  return true;
}"""


def chromium_path() -> str | None:
    """The Chromium binary to drive: $ZLAB_CHROMIUM, else Debian's /usr/bin/chromium."""
    for path in (os.environ.get("ZLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests need Playwright's Python client: pip install playwright (see requirements-dev.txt)"
    if chromium_path() is None:
        return ("browser tests need Chromium: apt-get install chromium (Debian), or set ZLAB_CHROMIUM "
                "to a Chromium binary (scripts/env.sh installs it when run as root)")
    return None


def artifacts_dir() -> Path:
    """Where screenshots go: $ZLAB_TEST_ARTIFACTS/browser, else test-artifacts/browser (git-ignored)."""
    root = Path(os.environ.get("ZLAB_TEST_ARTIFACTS") or harness.REPO / "test-artifacts")
    path = root / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ui_workflows() -> list[Path]:
    """Every UI-format workflow shipped in workflows/ (the files a user drops on the canvas)."""
    return sorted((harness.REPO / "workflows").glob("*.json"))


class Chromium:
    """One headless Chromium for a test session; each ComfyPage gets a fresh, empty profile."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                                        args=CHROMIUM_ARGS)

    def page(self, url: str, viewport: dict = VIEWPORT, without_our_js: bool = False) -> "ComfyPage":
        """A tab with a fresh profile; ``without_our_js`` serves this pack's scripts as empty modules (the
        stock frontend with our nodes, to tell the frontend's own messages from ours)."""
        context = self.browser.new_context(viewport=viewport)
        if without_our_js:
            context.route(OUR_EXTENSION_JS, lambda route: route.fulfill(
                status=200, content_type="text/javascript", body="export {};"))
        return ComfyPage(context, url)

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


class ComfyPage:
    """One ComfyUI tab. ``console`` and ``network`` record what went wrong, with a phase label."""

    def __init__(self, context, url: str):
        self.context, self.url = context, url.rstrip("/")
        self.page = context.new_page()
        self.phase = "startup"
        self.console, self.network = [], []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.console.append((self.phase, "pageerror", str(e))))
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_request_failed)

    def _on_console(self, message):
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.console.append((self.phase, "console.error", message.text))  # resources: see self.network

    def _on_request_failed(self, request):
        if request.failure != "net::ERR_ABORTED":  # cancelled by the page (navigation, reload), not failed
            self.network.append((self.phase, request.url, request.failure or "failed"))

    def _on_response(self, response):
        if response.status >= 400:
            self.network.append((self.phase, response.url, f"HTTP {response.status}"))

    # --- page life -------------------------------------------------------------------------
    def open(self, timeout_ms: int = 120_000) -> "ComfyPage":
        """Load the frontend and wait until node definitions and extensions are in."""
        self.phase = "startup"
        self.skip_onboarding()
        self.page.goto(self.url + "/")
        self.page.wait_for_function("window.app && app.vueAppReady && app.graph && "
                                    "window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 100",
                                    timeout=timeout_ms)
        self.page.wait_for_timeout(500)
        self.close_dialogs()
        # the startup graph (the default workflow) gets its own missing-model scan; let it finish here,
        # or it can land in the error store after the workflow a test drops in next
        self.settle()
        self.close_dialogs()
        self.set_setting("LiteGraph.Canvas.MinFontSizeForLOD", 0)  # screenshots show text at any zoom
        return self

    def skip_onboarding(self) -> None:
        """Tell the server's user settings the tour is done, as for a returning user: otherwise a fresh
        server pops the template browser up at some point after the first page load."""
        request = urllib.request.Request(self.url + "/settings/Comfy.TutorialCompleted", data=b"true",
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def reload(self) -> "ComfyPage":
        self.page.reload()
        return self.open()

    def mark(self, phase: str) -> None:
        """Start a new phase: errors recorded from now on carry this label."""
        self.phase = phase

    def close(self) -> None:
        self.context.close()

    def evaluate(self, js: str, arg=None):
        return self.page.evaluate(js, arg)

    def store(self, name: str, expression: str):
        """Evaluate ``expression`` with ``s`` bound to one of the frontend's Pinia stores."""
        return self.page.evaluate(f"(() => {{ const s = {STORES}.get({json.dumps(name)}); return {expression}; }})()")

    def command(self, command_id: str) -> None:
        self.page.evaluate(f"{STORES}.get('command').execute({json.dumps(command_id)})")

    def close_dialogs(self) -> list[str]:
        """Close dialogs the frontend opened by itself (the template browser on a first start)."""
        keys = self.store("dialog", "s.dialogStack.map((d) => d.key)")
        for key in keys:
            self.store("dialog", f"s.closeDialog({{key: {json.dumps(key)}}})")
        return keys

    # --- errors ---------------------------------------------------------------------------
    def errors(self, phase: str | None = None) -> list[tuple]:
        """Console errors, page errors and failed requests (optional frontend lookups and the stock
        frontend's own start-up messages excepted)."""
        bad = [e for e in self.console if phase in (None, e[0])
               and not (e[0] == "startup" and e[2] in STOCK_STARTUP_ERRORS)]
        for p, url, why in self.network:
            if phase not in (None, p):
                continue
            parsed = urlparse(url)
            if parsed.hostname not in ("127.0.0.1", "localhost"):
                continue  # off-machine requests (release notes, registry) fail offline; not ours
            if any(pattern.search(parsed.path) for pattern in OPTIONAL_PATHS):
                continue
            bad.append((p, url, why))
        return bad

    def problems(self) -> dict:
        """What the frontend flags on the current graph: missing nodes/models, errors, dialogs."""
        state = json.loads(self.page.evaluate(f"""(() => {{
          const s = {STORES};
          const errors = s.get('executionError'), models = s.get('missingModel');
          // frontend 1.42 keeps missing nodes in the executionError store, later ones in their own store
          const missingNodes = s.get('missingNodesError') ?? errors;
          const media = s.get('missingMedia');  // frontend >= 1.47: LoadImage files the server lacks
          const unregistered = app.graph.nodes.filter((n) => !(n.type in LiteGraph.registered_node_types)).map((n) => n.type);
          // a late scan of the previous graph (the default one after a reload) can leave its candidates behind
          const onThisGraph = (m) => m.nodeId == null || app.graph.nodes.some(
            (n) => String(n.id) === String(m.nodeId) && n.type === m.nodeType);
          return JSON.stringify({{
            unregistered_types: unregistered,
            missing_nodes: missingNodes.missingNodesError ?? null,
            missing_media: (media?.missingMediaCandidates ?? []).filter((m) => m.isMissing !== false && onThisGraph(m)),
            missing_models: (models.missingModelCandidates ?? []).filter((m) => m.isMissing !== false && onThisGraph(m)),
            error_count: errors.totalErrorCount,
            error_overlay: errors.isErrorOverlayOpen,
            dialogs: s.get('dialog').dialogStack.map((d) => d.key),
            pending_warnings: s.get('workflow').activeWorkflow?.pendingWarnings ?? null,
          }});
        }})()"""))
        state["error_toasts"] = self.page.locator(".p-toast-message-error").all_inner_texts()
        return state

    # --- workflows ------------------------------------------------------------------------
    def drop_file(self, path: Path, text: str | None = None) -> None:
        """Drop a file on the canvas exactly as dragging it from the desktop does."""
        text = path.read_text() if text is None else text
        self.page.evaluate("""([text, name]) => {
          const data = new DataTransfer();
          data.items.add(new File([text], name, {type: 'application/json'}));
          document.querySelector('#graph-canvas').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }""", [text, path.name])

    def drop_workflow(self, path: Path, timeout_ms: int = 60_000) -> None:
        """Drop a UI workflow and wait until the graph holds exactly its nodes."""
        workflow = json.loads(path.read_text())
        ids = sorted(str(n["id"]) for n in workflow["nodes"])
        self.drop_file(path)
        self.page.wait_for_function("(ids) => JSON.stringify(app.graph.nodes.map((n) => String(n.id)).sort()) "
                                    "=== JSON.stringify(ids)", arg=ids, timeout=timeout_ms)
        self.settle()  # the missing-model scan runs after the graph is configured

    def settle(self, quiet_ms: int = 1000, timeout_ms: int = 20_000) -> dict:
        """Wait until what the frontend flags stops changing for quiet_ms; return it."""
        last, stable_since, waited = None, 0, 0
        while waited < timeout_ms:
            state = self.problems()
            if state == last:
                if waited - stable_since >= quiet_ms:
                    return state
            else:
                last, stable_since = state, waited
            self.page.wait_for_timeout(250)
            waited += 250
        return last

    def use_tiny_models(self, size: int = 64) -> list[str]:
        return self.page.evaluate(TINY_SWAP_JS, [harness.TINY_LOADERS, harness.TINY_FILES, size])

    def set_setting(self, setting_id: str, value) -> None:
        self.page.evaluate("([k, v]) => app.extensionManager.setting.set(k, v)", [setting_id, value])

    def queue_and_wait(self, timeout_s: float = 600.0) -> dict:
        """Press Run and wait for the prompt to finish; returns what the websocket reported."""
        self.page.evaluate(EVENTS_JS)
        self.page.get_by_test_id("queue-button").click()
        self.page.wait_for_function(
            f"""() => window.__zlab.done || window.__zlab.error || window.__zlab.interrupted ||
                  {STORES}.get('executionError').lastPromptError ||
                  Object.keys({STORES}.get('executionError').lastNodeErrors ?? {{}}).length > 0""",
            timeout=timeout_s * 1000, polling=250)
        events = self.page.evaluate("JSON.parse(JSON.stringify(window.__zlab))")
        events["prompt_error"] = self.store("executionError", "JSON.parse(JSON.stringify(s.lastPromptError))")
        events["node_errors"] = self.store("executionError", "JSON.parse(JSON.stringify(s.lastNodeErrors ?? {}))")
        return events

    def fit_view(self) -> None:
        self.command("Comfy.Canvas.FitView")
        self.page.wait_for_timeout(300)

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def graph_screenshot(self, path: Path, margin: int = 24) -> Path:
        """A picture of the graph alone: the frontend's panels hidden, cropped to the nodes."""
        self.page.add_style_tag(content="* { visibility: hidden !important; } #graph-canvas, .dom-widget, "
                                        ".dom-widget * { visibility: visible !important; }")
        self.page.wait_for_timeout(300)
        box = self.page.evaluate("""() => {
          const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
          const xs = [], ys = [];
          for (const n of app.graph.nodes) {
            const [x, y, w, h] = n.boundingRect;
            xs.push((x + ds.offset[0]) * ds.scale, (x + w + ds.offset[0]) * ds.scale);
            ys.push((y + ds.offset[1]) * ds.scale, (y + h + ds.offset[1]) * ds.scale);
          }
          return {x: rect.left + Math.min(...xs), y: rect.top + Math.min(...ys),
                  width: Math.max(...xs) - Math.min(...xs), height: Math.max(...ys) - Math.min(...ys)};
        }""")
        clip = {"x": max(0, box["x"] - margin), "y": max(0, box["y"] - margin),
                "width": box["width"] + 2 * margin, "height": box["height"] + 2 * margin}
        size = self.page.viewport_size
        clip["width"] = min(clip["width"], size["width"] - clip["x"])
        clip["height"] = min(clip["height"], size["height"] - clip["y"])
        self.page.screenshot(path=str(path), clip=clip)
        return path

    def wait_for_node_images(self, node_ids: list[str], timeout_ms: int = 30_000) -> None:
        """Wait until each node shows an image on the canvas (``node.imgs``, loaded asynchronously after the
        run; frontend 1.47 loads them only once the node is drawn); raise naming those that show none."""
        js = "(ids) => ids.filter((id) => !(app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id))?.imgs?.length)"
        try:
            self.page.wait_for_function(f"(ids) => ({js})(ids).length === 0", arg=node_ids, timeout=timeout_ms)
        except Exception as error:  # playwright's TimeoutError
            raise AssertionError(f"our output nodes with an IMAGE must show it on the node; none shown on "
                                 f"{self.evaluate(js, node_ids)} after {timeout_ms} ms") from error

    def template_cards(self, names: list[str], timeout_ms: int = 60_000) -> None:
        """Wait until the template dialog shows a card for each name, scrolling down as a user does: the
        dialog (frontend 1.42 and 1.47, WorkflowTemplateSelectorDialog.vue) renders 24 cards per page and
        loads the next page only when its load trigger, below the last card, scrolls into view."""
        waited = 0
        while True:
            shown = self.page.evaluate("(names) => names.filter((n) => document.querySelector("
                                       "`[data-testid=\"template-workflow-${n}\"]`))", names)
            if len(shown) == len(names):
                return
            if waited >= timeout_ms:
                raise TimeoutError(f"template dialog shows {len(shown)} of {len(names)} cards after {waited} ms; "
                                   f"missing: {sorted(set(names) - set(shown))}")
            self.page.evaluate(SCROLL_TEMPLATES_JS)
            self.page.wait_for_timeout(250)
            waited += 250

    def node(self, predicate_js: str, expression: str):
        """Evaluate ``expression`` with ``n`` bound to the first graph node matching ``predicate_js``."""
        return self.page.evaluate(f"(() => {{ const n = app.graph.nodes.find((n) => {predicate_js}); "
                                  f"return n ? ({expression}) : undefined; }})()")


OUR_MODEL_FOLDERS = {"lora_name": "loras", "vector_name": "steering_vectors", "projector_name": "projectors"}


def create_placeholder_models(base: Path, missing: list[dict]) -> list[Path]:
    """Empty files with the names a workflow's loaders use, so the frontend finds them (never loaded:
    the tests swap in the tiny loaders before queueing)."""
    made = []
    for model in missing:
        # the frontend knows the folder of stock loaders only; ours are named by their widget
        directory = model.get("directory") or OUR_MODEL_FOLDERS.get(model.get("widgetName"))
        if directory is None:
            raise KeyError(f"missing-model entry with no known folder: {model}")
        path = base / "models" / directory / model["name"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            made.append(path)
    return made


def input_images_named_in(workflow: dict) -> set[str]:
    """The files a UI workflow's LoadImage nodes name."""
    return {str(n["widgets_values"][0]) for n in workflow["nodes"] if n["type"] == "LoadImage" and n.get("widgets_values")}


def provide_input_images(base: Path, workflow: dict, size: int = 64) -> list[Path]:
    """Small gradient PNGs for the files a workflow's LoadImage nodes name, when the server lacks them."""
    import numpy as np
    from PIL import Image

    made = []
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage" and node.get("widgets_values"):
            path = base / "input" / str(node["widgets_values"][0])
            if not path.exists():
                ramp = np.linspace(0, 255, size, dtype=np.uint8)
                Image.fromarray(np.stack([np.add.outer(ramp, ramp) // 2] * 3, axis=-1).astype(np.uint8)).save(path)
                made.append(path)
    return made


# --- thumbnails command ------------------------------------------------------------------
def make_thumbnails(size: int = 512) -> int:
    """Render workflows/<name>.jpg for every shipped UI workflow: its graph as the frontend draws it."""
    from PIL import Image

    reason = missing_reason()
    comfyui = harness.find_comfyui()
    if reason or comfyui is None:
        print(reason or "no ComfyUI found: set COMFYUI_PATH", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="zimage-lab-thumbs-"))
    browser = Chromium()
    try:
        base = harness.make_base(comfyui, workdir / "base")
        with harness.ComfyServer(comfyui, base) as server:
            for path in ui_workflows():
                page = browser.page(server.url, viewport={"width": 2400, "height": 1500}).open()
                page.drop_workflow(path)
                if create_placeholder_models(base, page.problems()["missing_models"]):
                    page.reload()
                    page.drop_workflow(path)
                page.fit_view()
                shot = workdir / f"{path.stem}.png"
                page.graph_screenshot(shot)
                page.close()
                image = Image.open(shot).convert("RGB")
                image.thumbnail((size, size), Image.LANCZOS)
                square = Image.new("RGB", (size, size), image.getpixel((0, 0)))
                square.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
                square.save(path.with_suffix(".jpg"), quality=85)
                print(f"wrote {path.with_suffix('.jpg').relative_to(harness.REPO)}")
        return 0
    finally:
        browser.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["thumbnails"]:
        started = time.monotonic()
        code = make_thumbnails()
        print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
        sys.exit(code)
    print("usage: python tests/browser.py thumbnails", file=sys.stderr)
    sys.exit(2)
