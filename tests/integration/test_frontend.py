"""What the pack serves to ComfyUI's frontend, checked over HTTP and the websocket on a real server:
our workflows in the template listing, a help page and tooltips for every node in /object_info, and
sampler step previews identical to KSampler's."""

import io
import json
import urllib.request
import uuid
from collections import defaultdict

import pytest
from PIL import Image

import harness

pytestmark = pytest.mark.integration

PREVIEW_IMAGE = 1  # server.BinaryEventTypes.PREVIEW_IMAGE: [event u32][image type u32][JPEG bytes]


def fetch(lab, path):
    with urllib.request.urlopen(lab.url + path, timeout=30) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_template_listing_has_every_shipped_workflow(lab, repo):
    listing = lab.client.get_json("/workflow_templates")
    shipped = sorted(p.stem for p in (repo / "workflows").glob("*.json"))
    assert shipped and sorted(listing.get(harness.PACK_FOLDER, [])) == shipped, listing
    for name in shipped:
        status, _, body = fetch(lab, f"/api/workflow_templates/{harness.PACK_FOLDER}/{name}.json")
        assert status == 200 and json.loads(body) == json.loads((repo / "workflows" / f"{name}.json").read_text())
        status, kind, body = fetch(lab, f"/api/workflow_templates/{harness.PACK_FOLDER}/{name}.jpg")
        assert status == 200 and kind == "image/jpeg" and Image.open(io.BytesIO(body)).format == "JPEG"


def test_every_node_in_object_info_has_description_tooltips_and_a_served_help_page(lab, repo):
    ours = harness.our_schema(lab.client.object_info())
    assert "ZImageLabSampler" in ours
    for node_id, spec in ours.items():
        assert spec["description"].strip(), node_id
        for group in ("required", "optional"):
            for name, input_spec in spec["input"].get(group, {}).items():
                assert input_spec[1].get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"
        # the path ComfyUI's node-help panel fetches for a custom node (after trying <node_id>/<locale>.md)
        status, _, body = fetch(lab, f"/extensions/{harness.PACK_FOLDER}/docs/{node_id}.md")
        assert status == 200 and body.decode() == (repo / "js" / "docs" / f"{node_id}.md").read_text()


def _sampler_pair(steps):
    """Stock ModelSamplingAuraFlow -> KSampler beside the Z-Image Sampler on the same inputs."""
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": harness.TINY_FILES["unet_name"]}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 11, "steps": steps, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0],
              "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "ZImageLabSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "latent_image": ["5", 0],
              "seed": 11, "steps": steps, "shift": 3.0, "sampler_name": "euler", "scheduler": "simple",
              "cfg": 1.0, "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "previews/stock"}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "previews/lab"}},
    }


def previews_per_node(lab, api, preview_method, timeout=300):
    """Queue a prompt with this live-preview method (as the frontend's setting sends it) and collect
    the preview JPEGs the websocket delivers, by the node executing at the time."""
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(lab.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=timeout)
    try:
        body = json.dumps({"prompt": api, "client_id": client_id, "extra_data": {"preview_method": preview_method}})
        request = urllib.request.Request(lab.url + "/prompt", data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        previews, node = defaultdict(list), None
        while True:
            message = ws.recv()
            if isinstance(message, bytes):
                if int.from_bytes(message[:4], "big") == PREVIEW_IMAGE:
                    previews[node].append(message[8:])
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "execution_error":
                pytest.fail(f"prompt failed: {data.get('exception_message')}")
            if event["type"] == "executing":
                node = data.get("node")
                if node is None:
                    return dict(previews)
    finally:
        ws.close()


def test_sampler_sends_the_same_step_previews_as_ksampler(lab):
    steps = 5
    previews = previews_per_node(lab, _sampler_pair(steps), "latent2rgb")
    stock, ours = previews.get("7", []), previews.get("8", [])
    assert len(ours) == steps, {k: len(v) for k, v in previews.items()}
    assert ours == stock  # same latents at every step, so the same preview images byte for byte
    images = [Image.open(io.BytesIO(jpeg)) for jpeg in ours]
    assert all(im.format == "JPEG" and im.size[0] == im.size[1] > 0 for im in images)
    assert len(set(ours)) == steps  # each step shows a new picture


def test_no_previews_when_the_method_is_none(lab):
    previews = previews_per_node(lab, _sampler_pair(2), "none")
    assert not previews.get("8") and not previews.get("7")
