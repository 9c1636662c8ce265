"""zlab.workflow: UI <-> API conversion and input setting, on the shipped workflows."""

import json

import pytest

from zlab import workflow as wf


def shipped_pairs(repo):
    pairs = []
    for api_path in sorted((repo / "workflows" / "api").glob("*.json")):
        pairs.append((repo / "workflows" / api_path.name, api_path))
    return pairs


def test_every_api_workflow_has_a_ui_twin(repo):
    api_names = {p.name for p in (repo / "workflows" / "api").glob("*.json")}
    ui_names = {p.name for p in (repo / "workflows").glob("*.json")}
    assert api_names and api_names == ui_names


def test_ui_and_api_formats_describe_the_same_graph(repo, node_schema):
    for ui_path, api_path in shipped_pairs(repo):
        ui, api = json.loads(ui_path.read_text()), json.loads(api_path.read_text())
        assert wf.is_ui_format(ui) and not wf.is_ui_format(api)
        assert wf.ui_to_api(ui, node_schema) == api, ui_path.name


MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".gguf")


def _check_api_against_schema(api, schema, name):
    for nid, node in api.items():
        assert node["class_type"] in schema, f"{name}: node {nid} type {node['class_type']} unknown to ComfyUI 0.18.1 + Z-Image Lab"
        spec = schema[node["class_type"]]
        inputs = dict(wf.input_order(spec))
        for key, value in node["inputs"].items():
            assert key in inputs, f"{name}: node {nid} ({node['class_type']}) has no input {key!r}"
            kind = inputs[key][0]
            if isinstance(value, list):
                src, slot = value
                out_type = schema[api[src]["class_type"]]["output"][slot]
                assert kind == out_type or kind == "*", f"{name}: link {src}:{slot} ({out_type}) -> {nid}.{key} ({kind})"
            elif isinstance(kind, list) and kind:
                if isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES):
                    continue  # model file lists are empty in the stock snapshot; the files are the user's
                assert value in kind, f"{name}: node {nid}.{key} = {value!r} not in {kind}"
            elif kind == "COMBO" and inputs[key][1].get("options"):
                if isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES):
                    continue  # V3 file combos: the snapshot's lists are the test server's (nearly empty) folders
                assert value in inputs[key][1]["options"], f"{name}: node {nid}.{key} = {value!r}"
        required = spec["input"].get("required", {})
        for key in required:
            assert key in node["inputs"], f"{name}: node {nid} ({node['class_type']}) misses required input {key!r}"


def test_shipped_workflows_match_the_node_schema(repo, node_schema):
    for _, api_path in shipped_pairs(repo):
        _check_api_against_schema(json.loads(api_path.read_text()), node_schema, api_path.name)


def test_main_workflow_uses_the_official_turbo_settings(repo):
    api = json.loads((repo / "workflows/api/zimage_turbo_lab.json").read_text())
    by_type = {n["class_type"]: n["inputs"] for n in api.values()}
    assert by_type["UNETLoader"]["unet_name"] == "z_image_turbo_bf16.safetensors"
    assert by_type["CLIPLoader"] == {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}
    assert by_type["VAELoader"]["vae_name"] == "ae.safetensors"
    s = by_type["ZImageLabSampler"]
    assert (s["steps"], s["shift"], s["cfg"], s["sampler_name"], s["scheduler"], s["denoise"]) == (8, 3.0, 1.0, "res_multistep", "simple", 1.0)
    assert (by_type["EmptySD3LatentImage"]["width"], by_type["EmptySD3LatentImage"]["height"]) == (1024, 1024)


def test_a_mismatched_schema_is_caught(node_schema):
    api = {"1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "bogus": 1}}}
    with pytest.raises(AssertionError, match="bogus"):
        _check_api_against_schema(api, node_schema, "x")


def test_round_trip_keeps_seed_control_and_links(node_schema):
    api = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "2": {"class_type": "ZImageLabSampler", "inputs": {"model": ["3", 0], "positive": ["4", 0], "latent_image": ["1", 0],
              "seed": 7, "steps": 4, "shift": 2.0, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}},
        "3": {"class_type": "UNETLoader", "inputs": {"unet_name": "x.safetensors", "weight_dtype": "default"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "hi", "clip": ["5", 0]}},
        "5": {"class_type": "CLIPLoader", "inputs": {"clip_name": "q.safetensors", "type": "lumina2", "device": "default"}},
    }
    ui = wf.api_to_ui(api, node_schema)
    sampler = next(n for n in ui["nodes"] if n["type"] == "ZImageLabSampler")
    assert sampler["widgets_values"][:2] == [7, "fixed"]  # seed, then its control_after_generate value
    assert len(ui["links"]) == 4
    assert wf.ui_to_api(ui, node_schema) == api


def test_set_input_by_title_type_and_id():
    api = {"1": {"class_type": "ZImageLabSampler", "_meta": {"title": "Z-Image Sampler"}, "inputs": {"steps": 8, "shift": 3.0}},
           "2": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"}, "inputs": {"text": "a"}}}
    assert wf.set_input(api, "Z-Image Sampler.steps=12")["1"]["inputs"]["steps"] == 12
    assert wf.set_input(api, "ZImageLabSampler.shift=2.5")["1"]["inputs"]["shift"] == 2.5
    assert wf.set_input(api, "2.text=hello world")["2"]["inputs"]["text"] == "hello world"
    assert wf.set_prompt(api, "a cat")["2"]["inputs"]["text"] == "a cat"
    assert api["1"]["inputs"]["steps"] == 8  # the given workflow is not mutated
    with pytest.raises(wf.WorkflowError, match="no node"):
        wf.set_input(api, "Nope.steps=1")
    with pytest.raises(wf.WorkflowError, match="no input 'stepz'"):
        wf.set_input(api, "Z-Image Sampler.stepz=1")
    with pytest.raises(wf.WorkflowError, match="node_title.input=value"):
        wf.set_input(api, "steps 12")


def test_unknown_node_type_is_named(node_schema):
    with pytest.raises(wf.WorkflowError, match="NoSuchNode"):
        wf.api_to_ui({"1": {"class_type": "NoSuchNode", "inputs": {}}}, node_schema)


def test_seed_inputs_carry_a_control_value_as_the_frontend_adds_one():
    assert wf.has_control("seed", ["INT", {}]) and wf.has_control("noise_seed", ["INT", {"min": 0}])
    assert not wf.has_control("seed", ["INT", {"control_after_generate": False}])
    assert wf.has_control("count", ["INT", {"control_after_generate": True}])
    assert not wf.has_control("steps", ["INT", {}]) and not wf.has_control("seed", ["STRING", {}])



def test_every_shipped_workflow_takes_the_save_node(repo, node_schema):
    assert wf.SAVE_NODE in node_schema, "the schema snapshot lacks the save node: run `python tests/harness.py schema`"
    saving = 0
    for _, api_path in shipped_pairs(repo):
        api = json.loads(api_path.read_text())
        swapped, count = wf.use_save_node(api)
        _check_api_against_schema(swapped, node_schema, api_path.name)
        assert not wf.find_nodes(swapped, "SaveImage")
        saves = wf.find_nodes(swapped, wf.SAVE_NODE)
        assert len(saves) >= count and all(swapped[n]["inputs"]["images"] == (api[n]["inputs"]["images"]) for n in saves)
        assert {k: v for k, v in swapped.items() if k not in saves} == {k: v for k, v in api.items() if k not in saves}
        saving += bool(saves)
    assert saving == len(shipped_pairs(repo))  # every shipped workflow saves an image


def test_swap_sets_the_options_and_leaves_the_input_alone():
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "_meta": {"title": "Save"}, "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    swapped, count = wf.use_save_node(api, compress_level=1, background=False)
    assert count == 1 and api["2"]["class_type"] == "SaveImage"
    assert swapped["2"] == {"class_type": "ZImageLabSaveImage", "_meta": {"title": "Save"},
                            "inputs": {"images": ["1", 0], "filename_prefix": "x", "compress_level": 1, "background": False}}
