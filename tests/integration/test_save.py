"""Z-Image Save Image on a real server: SaveImage's pixels, metadata and bytes; /view right after the
prompt; unique names under load; queued writes survive SIGTERM; execution time against SaveImage."""

import json
import os
import re
import statistics
import struct
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

import harness

pytestmark = pytest.mark.integration

WORKFLOW_EXTRA = {"extra_pnginfo": {"workflow": {"nodes": [{"id": 8, "type": "SaveImage"}], "version": 0.4},
                                    "note": "é ünïcode"}}


def lab_save(source, prefix, level=4, background=True):
    return {"class_type": "ZImageLabSaveImage", "inputs": {"images": source, "filename_prefix": prefix,
                                                            "compress_level": level, "background": background}}


def stock_save(source, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}}


def load_image(name):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def run(client, prompt, extra=None):
    prompt_id = client.queue(prompt, extra)
    return prompt_id, client.wait(prompt_id, timeout=600, progress=False)


def text_chunks(path):
    """(keyword, text) of every tEXt chunk, in file order, read from the bytes (not through PIL)."""
    data, pos, out = open(path, "rb").read(), 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"tEXt":
            key, text = data[pos + 8:pos + 8 + length].split(b"\0", 1)
            out.append((key.decode("latin-1"), text.decode("latin-1")))
        pos += 12 + length
    return out


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def realistic_image(size=1024):
    """A decoded-looking picture: a Flux output shipped with ComfyUI's templates, else a synthetic scene."""
    import importlib.util

    spec = importlib.util.find_spec("comfyui_workflow_templates_media_image")
    if spec is not None:
        path = os.path.join(os.path.dirname(spec.origin), "templates", "flux_schnell-1.webp")
        if os.path.exists(path):
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    y, x = np.mgrid[0:size, 0:size] / size
    scene = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y), np.sin(9 * x * y)], -1) * 0.4 + 0.5
    grain = np.random.default_rng(1).normal(0, 0.02, scene.shape)
    return (np.clip(scene + grain, 0, 1) * 255).astype(np.uint8)


def put_input(lab, name, array):
    Image.fromarray(array).save(lab.base / "input" / name)
    return name


def output_paths(base, entry, node_id):
    return [base / "output" / r["subfolder"] / r["filename"] for r in entry["outputs"][node_id]["images"]]


def test_same_pixels_metadata_and_bytes_as_saveimage(lab):
    api = lab.workflow("zimage_turbo_lab.json", image_size=96)
    decode = api["8"]["inputs"]["images"]
    api["8"] = stock_save(decode, "cmp/stock")
    api["20"] = lab_save(decode, "cmp/lab", level=4)
    api["21"] = lab_save(decode, "cmp/lab_fast", level=1)
    api["22"] = lab_save(decode, "cmp/lab_inline", level=4, background=False)
    _, entry = run(lab.client, api, WORKFLOW_EXTRA)
    lab.flush_saves()
    (stock,) = output_paths(lab.base, entry, "8")
    (lab4,), (lab1,), (inline,) = (output_paths(lab.base, entry, n) for n in ("20", "21", "22"))
    (listed,) = entry["outputs"]["20"]["images"]  # the shared server may hold earlier cmp/lab files: any counter
    assert re.fullmatch(r"lab_\d{5}_\.png", listed["filename"]) and (listed["subfolder"], listed["type"]) == ("cmp", "output")
    assert open(lab4, "rb").read() == open(stock, "rb").read() == open(inline, "rb").read()  # byte-identical at level 4
    assert np.array_equal(pixels(lab1), pixels(stock)) and pixels(stock).shape == (96, 96, 3)
    chunks = text_chunks(stock)
    assert [k for k, _ in chunks] == ["prompt", "workflow", "note"]
    assert json.loads(chunks[0][1]) == api and json.loads(chunks[1][1]) == WORKFLOW_EXTRA["extra_pnginfo"]["workflow"]
    assert text_chunks(lab1) == chunks
    assert not list((lab.base / "output" / "cmp").glob("*.part"))


def test_view_right_after_the_prompt_gets_the_whole_file(lab):
    noise = np.random.default_rng(3).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)  # slow to encode at level 9
    name = put_input(lab, "save_view_noise.png", noise)
    api = {"1": load_image(name), "2": lab_save(["1", 0], "view/slow", level=9)}
    _, entry = run(lab.client, api)
    (record,) = entry["outputs"]["2"]["images"]
    path = lab.base / "output" / "view" / record["filename"]
    pending_when_asked = not path.exists()
    for route in ("/view", "/api/view"):
        query = urllib.parse.urlencode(record)
        with urllib.request.urlopen(f"{lab.url}{route}?{query}", timeout=120) as response:
            assert response.status == 200
            body = response.read()
        assert body == path.read_bytes()
    assert pending_when_asked, "the file was written before /view was asked: the test did not exercise the wait"
    assert np.array_equal(pixels(path), noise) and not path.with_name(path.name + ".part").exists()


def test_many_prompts_in_a_row_land_with_unique_names(lab):
    ids = []
    for n in range(12):  # queued back to back; our node and stock SaveImage share one prefix and folder
        api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 2, "color": n * 1000}},
               "2": lab_save(["1", 0], "burst/img", level=1), "3": stock_save(["1", 0], "burst/img"),
               "4": lab_save(["1", 0], "burst/b%batch_num%", level=4)}
        ids.append((n, lab.client.queue(api)))
    entries = [(n, lab.client.wait(pid, timeout=600, progress=False)) for n, pid in ids]
    lab.flush_saves()
    names = []
    for n, entry in entries:
        colour = np.array([(n * 1000 >> 16) & 255, (n * 1000 >> 8) & 255, n * 1000 & 255])
        for node in ("2", "3", "4"):
            for path in output_paths(lab.base, entry, node):
                names.append(path.name)
                assert np.abs(pixels(path)[0, 0].astype(int) - colour).max() <= 1, (n, node, path.name)  # its own prompt's
    assert len(names) == 12 * 6 and len(set(names)) == len(names)
    folder = lab.base / "output" / "burst"
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # nothing else: no placeholders, no strays
    counters = sorted(int(n.split("_")[1]) for n in names if n.startswith("img_"))
    assert counters == list(range(1, 12 * 4 + 1))  # SaveImage's counter, shared by both nodes, no gaps


def test_execution_time_against_saveimage(lab, capsys):
    name = put_input(lab, "save_realistic.png", realistic_image())
    tiny = put_input(lab, "save_tiny.png", realistic_image()[:8, :8])
    for image in (name, tiny):
        run(lab.client, {"1": load_image(image), "2": stock_save(["1", 0], "timing/warm")})  # LoadImage cached from here
    cases = {"SaveImage": (name, lambda n: stock_save(["1", 0], f"timing/stock{n}")),
             "Z-Image Save Image": (name, lambda n: lab_save(["1", 0], f"timing/lab{n}")),
             "Z-Image Save Image (background off)": (name, lambda n: lab_save(["1", 0], f"timing/inline{n}", background=False)),
             "Z-Image Save Image, 8x8 image (the prompt's own overhead)": (tiny, lambda n: lab_save(["1", 0], f"timing/tiny{n}"))}
    seconds = {label: [] for label in cases}
    for n in range(3):
        for label, (image, node) in cases.items():
            _, entry = run(lab.client, {"1": load_image(image), "2": node(n)})
            stamps = {k: d["timestamp"] for k, d in entry["status"]["messages"] if "timestamp" in d}
            seconds[label].append((stamps["execution_success"] - stamps["execution_start"]) / 1000)
            lab.flush_saves()  # the next prompt starts with an idle writer: each row measures one save alone
    report = {k: round(statistics.median(v), 4) for k, v in seconds.items()}
    with capsys.disabled():
        print(f"\n1024x1024 save, prompt execution seconds on the server (median of 3): {report}")
    artifacts = os.environ.get("ZLAB_TEST_ARTIFACTS")
    if artifacts:
        harness.Path(artifacts).mkdir(parents=True, exist_ok=True)
        (harness.Path(artifacts) / "save_timing.json").write_text(json.dumps(seconds, indent=1))
    stock = pixels(lab.base / "output" / "timing" / "stock0_00001_.png")
    assert np.array_equal(pixels(lab.base / "output" / "timing" / "lab0_00001_.png"), stock)


@pytest.fixture
def quiet_server(lab, comfyui_path, tmp_path):
    """A second server started with --disable-metadata (stopped by the test itself, with SIGTERM)."""
    base = tmp_path / "base_meta"
    base.mkdir()
    (base / "models").symlink_to(lab.base / "models", target_is_directory=True)
    server = harness.ComfyServer(comfyui_path, harness.make_base(comfyui_path, base), extra_args=["--disable-metadata"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sigterm_finishes_queued_writes_and_disable_metadata_is_respected(quiet_server):
    client = harness.ComfyClient(quiet_server.url, timeout=120)
    noise = np.random.default_rng(4).integers(0, 256, (1536, 1536, 3), dtype=np.uint8)
    Image.fromarray(noise).save(quiet_server.base / "input" / "noise.png")
    ids = [client.queue({"1": load_image("noise.png"), "2": lab_save(["1", 0], f"shutdown/n{n}", level=9)})
           for n in range(3)]
    entries = [client.wait(pid, timeout=600, progress=False) for pid in ids]
    pending = client.get_json("/zimage_lab/save")["pending"]
    quiet_server.stop()  # SIGTERM, as service managers stop a server
    assert quiet_server.process.returncode == -15, quiet_server.log()[-2000:]  # it still dies of SIGTERM
    assert pending >= 1, "every write had finished before SIGTERM: the test did not exercise the flush"
    assert "queued image(s) before exiting" in quiet_server.log()
    for entry in entries:
        (path,) = output_paths(quiet_server.base, entry, "2")
        assert np.array_equal(pixels(path), noise) and text_chunks(path) == []
    assert not list((quiet_server.base / "output" / "shutdown").glob("*.part"))
