"""``python -m zlab sweep`` against real ComfyUI servers: one row per cell, resume after a kill, two servers."""

import csv
import json
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import harness
from zlab.api import ComfyClient
from sweep_fixtures import command, files, ok_rows

pytestmark = pytest.mark.integration

SPEC = {"name": "tiny_shift_steps", "mode": "grid",
        "params": {"Z-Image Sampler.shift": [1.0, 3.0], "Z-Image Sampler.steps": [2, 3]},
        "seeds": [1, 2], "reference": {"Z-Image Sampler.shift": 3.0, "Z-Image Sampler.steps": 3}}


@pytest.fixture
def second_server(lab, comfyui_path, tmp_path):
    base = tmp_path / "base2"
    base.mkdir()
    (base / "models").symlink_to(lab.base / "models", target_is_directory=True)  # the tiny models, already built
    server = harness.ComfyServer(comfyui_path, harness.make_base(comfyui_path, base))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fully_cached(url, prompt_id) -> bool:
    """True when the server ran none of the prompt's nodes (ComfyUI's cache: the same prompt ran just before)."""
    entry = ComfyClient(url).history(prompt_id)
    (nodes,) = [data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    return set(nodes) == set(entry["prompt"][2])


def test_sweep_resumes_after_a_kill_without_duplicates_on_two_servers(lab, second_server, tmp_path, repo):
    workflow, spec_path = files(lab, tmp_path, SPEC)
    out = tmp_path / "out"
    first = subprocess.Popen(command(spec_path, workflow, out, lab.url, extra=["--per-server", "1"]), cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(ok_rows(out)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.kill()  # SIGKILL: no clean-up code runs, as when a machine dies
    first.wait()
    before = {r["cell"]: r for r in ok_rows(out)}
    assert 3 <= len(before) < 8, first.stdout.read()

    second = subprocess.run(command(spec_path, workflow, out, lab.url, second_server.url, extra=["--per-server", "1"]),
                            cwd=repo, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"8 cells, {len(before)} already done, {8 - len(before)} to run on 2 server(s)" in second.stdout

    rows = ok_rows(out)
    cells = [r["cell"] for r in rows]
    assert len(cells) == 8 and len(set(cells)) == 8  # one row per cell, none redone
    for row in rows:
        if row["cell"] in before:
            assert row["prompt_id"] == before[row["cell"]]["prompt_id"]
    assert {r["server"] for r in rows if r["cell"] not in before} == {lab.url, second_server.url}

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert {(float(r["Z-Image Sampler.shift"]), int(r["Z-Image Sampler.steps"]), int(r["seed"])) for r in table} == {
        (s, n, seed) for s in (1.0, 3.0) for n in (2, 3) for seed in (1, 2)}
    cached = {r["cell"] for r in rows if fully_cached(r["server"], r["prompt_id"])}
    print(f"\nrows the server answered from its cache (the killed sweep's last prompt, queued again): {sorted(cached)}")
    assert len(cached) <= 1 and cached <= {r["cell"] for r in rows if r["cell"] not in before}
    for r in table:
        assert (out / r["image"]).is_file() and float(r["wall_seconds"]) > 0
        assert float(r["seconds"]) > 0 or r["cell"] in cached  # a cached prompt can run within 1 ms: 0.0 s
        assert float(r["sharpness"]) >= 0 and 0 <= float(r["edge_density"]) <= 1 and float(r["colourfulness"]) >= 0
        reference = next(c for c in table if c["seed"] == r["seed"] and c["Z-Image Sampler.shift"] == "3.0"
                         and c["Z-Image Sampler.steps"] == "3")
        assert r["reference_cell"] == reference["cell"]
        a = np.asarray(Image.open(out / r["image"])).astype(float) / 255
        b = np.asarray(Image.open(out / reference["image"])).astype(float) / 255
        assert float(r["pixel_rmse"]) == pytest.approx(np.sqrt(((a - b) ** 2).mean()), abs=1e-9)
    doc = json.loads((out / "results.json").read_text())
    assert doc["finished"] == 8 and len(doc["rows"]) == 8 and doc["spec"]["seeds"] == [1, 2]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 4 * 64 and sheet.height > 2 * 64

    # a cell's image is what the workflow gives with those settings when run directly
    row = next(r for r in table if r["Z-Image Sampler.shift"] == "1.0" and r["Z-Image Sampler.steps"] == "2" and r["seed"] == "2")
    api = lab.workflow("zimage_turbo_lab.json")
    api["6"]["inputs"].update({"shift": 1.0, "steps": 2, "seed": 2})
    (direct,) = lab.images(lab.run(api), "8")
    assert np.array_equal(np.asarray(Image.open(out / row["image"])), direct)

    # running it again does nothing and keeps the tables
    third = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "8 already done, 0 to run" in third.stdout
    assert len(ok_rows(out)) == 8


def test_the_next_prompt_is_always_queued_before_the_running_one_ends(lab, tmp_path, repo):
    spec = {"name": "pipelined", "params": {"Z-Image Sampler.steps": [2, 3]}, "seeds": "11-16"}
    workflow, spec_path = files(lab, tmp_path, spec)
    out = tmp_path / "pipelined"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = ok_rows(out)
    assert len(rows) == 12 and len({r["cell"] for r in rows}) == 12

    def stamps(prompt_id):  # the server's own clock (epoch ms), as it reports the prompt's run in /history
        messages = lab.client.history(prompt_id)["status"]["messages"]
        found = {kind: data["timestamp"] / 1000 for kind, data in messages if "timestamp" in data}
        return found["execution_start"], found["execution_success"]

    runs = sorted((*stamps(r["prompt_id"]), r["queued_at"]) for r in rows)
    gaps = [round(b[0] - a[1], 3) for a, b in zip(runs, runs[1:])]
    print(f"\nidle gaps between consecutive prompts on the server (s): {gaps}")
    for (_, end_before, _), (_, _, queued) in zip(runs, runs[1:]):
        assert queued < end_before  # submitted while the previous prompt still ran: the server never waited for us


def test_ui_format_workflow_is_converted_with_the_servers_schema(lab, tmp_path, repo):
    spec = {"params": {"Z-Image Sampler.steps": [2]}, "seeds": "5-6"}
    workflow, spec_path = files(lab, tmp_path, spec, ui=True)
    proc = subprocess.run(command(spec_path, workflow, tmp_path / "ui_out", lab.url), cwd=repo, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(ok_rows(tmp_path / "ui_out")) == 2


def test_clear_errors(lab, tmp_path, repo):
    workflow, _ = files(lab, tmp_path, SPEC)

    def run(spec, *servers, extra=()):
        path = tmp_path / "bad_spec.json"
        path.write_text(json.dumps(spec))
        return subprocess.run(command(path, workflow, tmp_path / "bad_out", *servers, extra=extra), cwd=repo,
                              capture_output=True, text=True, timeout=120)

    proc = run({**SPEC, "seeds": []}, lab.url)
    assert proc.returncode == 2 and "seeds is empty" in proc.stderr
    proc = run({**SPEC, "params": {"Z-Image Sampler.stepz": [2]}, "reference": None}, lab.url, extra=["--dry-run"])
    assert proc.returncode == 2 and "'Z-Image Sampler.stepz', which this workflow lacks" in proc.stderr
    proc = run({**SPEC, "params": {"Nowhere.steps": [2]}, "reference": None}, lab.url)
    assert proc.returncode == 2 and "no node with id, title or type 'Nowhere'" in proc.stderr
    dead = f"http://127.0.0.1:{harness.free_port()}"
    proc = run(SPEC, lab.url, dead)
    assert proc.returncode == 2 and f"cannot reach ComfyUI at {dead}" in proc.stderr
    assert not (tmp_path / "bad_out" / "results.jsonl").exists()
    proc = run(SPEC, lab.url, extra=["--dry-run"])
    assert proc.returncode == 0 and "8 cells" in proc.stdout
