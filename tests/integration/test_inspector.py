"""The live prompt inspector against the real thing: its count equals the caption length ComfyUI's
encoder produces (tiny Qwen3, real tokenizer), its ids equal ComfyUI's ZImageTokenizer's, and in the
browser typing into a node updates it."""

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

import prompt_graphs as graphs
from core import formatter

pytestmark = pytest.mark.integration

PROMPTS = [
    "a red fox sitting in fresh snow at golden hour",
    "a \\(red\\) fox, (detailed:1.3) fur, [soft] light",
    "embedding:not_installed a cat on a mat",
    "multi\nline\n\nprompt   with  spaces\tand tabs",
    "猫と犬 🐱 café naïve — “quotes”",
    "",
    " ".join(["lighthouse"] * 600),
]
CHAT = [
    {"system_prompt": "You are an illustrator.", "think_mode": "empty"},
    {"think_mode": "with content", "thinking": "warm light, low sun", "assistant_prefill": "Sure:"},
]


def inspect(lab, payload):
    request = urllib.request.Request(lab.url + "/zimage_lab/inspect", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def encoder_lengths(lab, texts, raw):
    """(tokens, attended tokens) of each text's conditioning from the tiny Qwen3: CLIPTextEncode
    (template added) or the test-only raw encoder (ComfyUI's CLIP with template '{}', text as is)."""
    nodes = {"clip": graphs.CLIP}
    for i, text in enumerate(texts):
        encode = "ZImageLabTestRawEncode" if raw else "CLIPTextEncode"
        nodes[f"enc{i}"] = {"class_type": encode, "inputs": {"text": text, "clip": ["clip", 0]}}
        nodes[f"probe_enc{i}"] = graphs.probe(f"enc{i}", f"inspector_{i}")
    result = lab.run(nodes)
    lengths = []
    for i in range(len(texts)):
        tokens, mask, _ = graphs.read_probe(lab, result, f"enc{i}")
        lengths.append((tokens.shape[1], int(mask.sum()) if mask is not None else tokens.shape[1]))
    return lengths


def test_count_equals_the_caption_length_clip_text_encode_produces(lab):
    results = [inspect(lab, {"prompt": p}) for p in PROMPTS]
    assert all(status == 200 for status, _ in results), results
    lengths = encoder_lengths(lab, PROMPTS, raw=False)
    for prompt, (_, result), (tokens, attended) in zip(PROMPTS, results, lengths):
        assert result["count"] == tokens == attended, (prompt[:40], result["count"], tokens, attended)
        assert result["text"] == formatter.format_prompt(prompt)
    long = results[-1][1]
    assert long["count"] > 600 and long["over_budget"] and long["level"] == "warn" and long["over_limits"] == ["trained"]
    assert results[0][1]["level"] == "ok" and not results[0][1]["rewritten"]
    assert results[1][1]["rewritten"] and "(red)" in results[1][1]["encoder_text"]  # ComfyUI un-escapes \( \)
    assert "embedding:" not in results[2][1]["encoder_text"]  # ComfyUI drops an embedding it cannot find


def test_count_equals_the_encoder_for_chat_formatted_text(lab):
    cases = [dict(settings, prompt=p) for settings in CHAT for p in PROMPTS[:3]]
    results = [inspect(lab, case)[1] for case in cases]
    lengths = encoder_lengths(lab, [r["text"] for r in results], raw=True)
    for case, result, (tokens, attended) in zip(cases, results, lengths):
        expected = formatter.format_prompt(case["prompt"], case.get("system_prompt", ""), case["think_mode"],
                                           case.get("thinking", ""), case.get("assistant_prefill", ""))
        assert result["text"] == expected
        assert result["count"] == tokens == attended, case
        start, end = result["prompt_span"]
        assert result["text"][start:end] == case["prompt"]
    # raw text goes through untouched, and "auto" recognises chat markup
    raw = inspect(lab, {"prompt": results[0]["text"], "raw": "auto"})[1]
    assert raw["text"] == results[0]["text"] and raw["ids"] == results[0]["ids"]


def test_ids_equal_comfyuis_zimage_tokenizer(lab, comfyui_path):
    code = textwrap.dedent("""
        import json, sys
        sys.argv = [sys.argv[0], "--cpu"]
        import comfy.options; comfy.options.enable_args_parsing()
        from comfy.text_encoders.z_image import ZImageTokenizer
        tokenizer = ZImageTokenizer(embedding_directory=[])
        prompts = json.loads(sys.stdin.read())
        print(json.dumps([[t for t, _ in tokenizer.tokenize_with_weights(p)["qwen3_4b"][0]] for p in prompts]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(PROMPTS), cwd=comfyui_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = json.loads(proc.stdout.strip().splitlines()[-1])
    for prompt, ids in zip(PROMPTS, expected):
        assert inspect(lab, {"prompt": prompt})[1]["ids"] == ids, prompt[:40]


def test_count_equals_the_formatter_and_encoder_nodes_with_a_preset(lab, repo):
    preset = sorted(p.stem for p in (repo / "presets" / "system_prompts").glob("*.txt"))[0]
    settings = {"prompt": "a fox in \\(deep\\) snow", "system_prompt": "Warm light.", "preset": preset,
                "think_mode": "with content", "thinking": "low sun", "assistant_prefill": "Sure:"}
    shown = inspect(lab, settings)[1]
    nodes = {"fmt": graphs.formatter(**settings), "enc": graphs.encoder(["fmt", 0])}
    result = lab.run(graphs.with_probes(nodes, "inspector_nodes"))
    assert result.outputs["fmt"]["formatted_text"] == [shown["text"]]
    assert result.outputs["fmt"]["token_count"] == [shown["count"]]
    tokens, mask, record = graphs.read_probe(lab, result, "enc")
    assert tokens.shape[1] == int(mask.sum()) == record["token_count"] == shown["count"]
    preset_text = (repo / "presets" / "system_prompts" / f"{preset}.txt").read_text().strip("\n")
    assert shown["text"].startswith(f"<|im_start|>system\n{preset_text}\nWarm light.<|im_end|>")
    assert inspect(lab, {"prompt": "a", "preset": "no_such_preset"}) [0] == 400


@pytest.mark.parametrize("payload, status, words", [
    ({"prompt": 5}, 400, "'prompt' must be a string"),
    ({"prompt": "a", "think_mode": "deep"}, 400, "'think_mode' is 'deep'"),
    ({"text": "a"}, 400, "'prompt' is missing"),
])
def test_bad_requests_get_a_clear_400(lab, payload, status, words):
    got, body = inspect(lab, payload)
    assert got == status and words in body["error"]


def _inspector(page, node_id):
    return page.evaluate(f"""(() => {{
      const e = app.graph.getNodeById({node_id}).widgets.find((w) => w.name === 'zimage_lab_inspector').element;
      return {{state: e.dataset.state, count: Number(e.dataset.count), level: e.dataset.level, text: e.querySelector('pre').innerText,
               colour: getComputedStyle(e.querySelector('.zimage-lab-inspector-count')).color}};
    }})()""")


def _wait_for(page, node_id, predicate_js, timeout_ms=60_000):
    page.page.wait_for_function(f"""(() => {{
      const e = app.graph.getNodeById({node_id}).widgets.find((w) => w.name === 'zimage_lab_inspector').element;
      return e.dataset.state === 'ready' && ({predicate_js});
    }})""", timeout=timeout_ms)


@pytest.mark.browser
def test_typing_in_a_node_updates_the_inspector(lab, comfy_page):
    page = comfy_page
    page.mark("inspector")
    node_id = page.evaluate("""() => {
      const n = LiteGraph.createNode('ZImageLabTestPromptProbe'); n.pos = [200, 150]; app.graph.add(n);
      app.canvas.centerOnNode(n); app.canvas.setDirty(true, true); return n.id;
    }""")
    _wait_for(page, node_id, "true")
    empty = _inspector(page, node_id)
    assert empty["count"] == inspect(lab, {"prompt": ""})[1]["count"]

    prompt = "a \\(red\\) fox in the snow"
    box = page.page.evaluate_handle(f"app.graph.getNodeById({node_id}).widgets.find((w) => w.name === 'prompt').element")
    box.as_element().click()
    page.page.keyboard.type(prompt, delay=20)  # real key presses: the inspector follows the typing
    _wait_for(page, node_id, f"e.querySelector('pre').innerText.includes({json.dumps(prompt)})")
    typed = _inspector(page, node_id)
    expected = inspect(lab, {"prompt": prompt})[1]
    (encoded, _), = encoder_lengths(lab, [prompt], raw=False)
    assert typed["text"] == formatter.format_prompt(prompt)
    assert typed["count"] == expected["count"] == encoded and typed["level"] == "ok"
    page.screenshot("inspector-typed")

    page.evaluate(f"""() => {{
      const n = app.graph.getNodeById({node_id});
      const set = (name, v) => {{ const w = n.widgets.find((w) => w.name === name); w.value = v; w.callback?.(v); }};
      set('think_mode', 'empty');
    }}""")
    _wait_for(page, node_id, "e.querySelector('pre').innerText.includes('</think>')")
    system = page.page.evaluate_handle(f"app.graph.getNodeById({node_id}).widgets.find((w) => w.name === 'system_prompt').element")
    system.as_element().click()
    page.page.keyboard.type("You paint.", delay=20)
    _wait_for(page, node_id, "e.querySelector('pre').innerText.startsWith('<|im_start|>system')")
    chat = _inspector(page, node_id)
    text = formatter.format_prompt(prompt, "You paint.", "empty")
    (encoded, _), = encoder_lengths(lab, [text], raw=True)
    assert chat["text"] == text and chat["count"] == encoded

    long = " ".join(["lighthouse"] * 600)
    box.as_element().fill(long)  # like a paste: one input event with the whole text
    _wait_for(page, node_id, "e.dataset.level === 'warn'")
    warned = _inspector(page, node_id)
    assert warned["count"] == inspect(lab, {"prompt": long, "system_prompt": "You paint.", "think_mode": "empty"})[1]["count"]
    assert warned["count"] > 512 and warned["colour"] != typed["colour"]
    page.screenshot("inspector-over-512")
    assert page.errors() == []


@pytest.mark.browser
def test_every_node_type_with_the_inspector_counts_like_the_encoder(lab, comfy_page):
    """Covers whatever carries the inspector: the test probe (tagged inputs) and, once merged, the
    formatter and encoder nodes listed in js/inspector.js."""
    page = comfy_page
    object_info = lab.client.object_info()
    listed = page.evaluate("app.extensions.find((e) => e.name === 'ZImageLab.PromptInspector').inspectedNodes")
    fields_of = page.evaluate("""(info) => {
      const inspector = app.extensions.find((e) => e.name === 'ZImageLab.PromptInspector');
      return Object.fromEntries(Object.entries(info).map(([name, spec]) => [name, inspector.inspectedFields(spec)])
                                .filter(([, fields]) => fields));
    }""", {name: {"name": name, "input": spec["input"]} for name, spec in object_info.items()})
    assert "ZImageLabTestPromptProbe" in fields_of
    assert set(listed) & set(object_info) <= set(fields_of)
    prompt = "a \\(tiny\\) lighthouse on a cliff"
    for node_type, fields in sorted(fields_of.items()):
        main = fields.get("prompt") or fields["text"]
        node_id = page.evaluate("""([type, main, prompt]) => {
          const n = LiteGraph.createNode(type); n.pos = [100, 100]; app.graph.add(n);
          const w = n.widgets.find((w) => w.name === main); w.value = prompt; w.callback?.(prompt);
          return n.id;
        }""", [node_type, main, prompt])
        _wait_for(page, node_id, f"e.querySelector('pre').innerText.includes({json.dumps(prompt)})")
        shown = _inspector(page, node_id)
        expected = inspect(lab, {"prompt": prompt, "raw": False if "prompt" in fields else "auto"})[1]
        (encoded, _), = encoder_lengths(lab, [prompt], raw=False)
        assert shown["count"] == expected["count"] == encoded, node_type
    assert page.errors() == []
