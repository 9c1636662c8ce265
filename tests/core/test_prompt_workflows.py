"""The shipped prompt-side workflows: titles other tools rely on, identity defaults, prompt setting."""

import json

from zlab import workflow as wf


def load(repo, name):
    return json.loads((repo / "workflows" / "api" / f"{name}.json").read_text())


def test_prompt_lab_has_the_titles_and_inputs_sweeps_set(repo):
    api = load(repo, "zimage_prompt_lab")
    (fmt,) = wf.find_nodes(api, "Prompt Formatter")
    (enc,) = wf.find_nodes(api, "Qwen3 Encoder")
    assert api[fmt]["class_type"] == "ZImageLabPromptFormatter" and api[fmt]["inputs"]["think_mode"] == "none"
    assert api[enc]["class_type"] == "ZImageLabQwen3Encode" and api[enc]["inputs"]["layer"] == -2
    assert api[enc]["inputs"]["text"] == [fmt, 0] and api[enc]["inputs"]["long_prompt_mode"] == "none"
    swept = wf.set_input(wf.set_input(api, "Prompt Formatter.think_mode=empty"), "Qwen3 Encoder.layer=-5")
    assert swept[fmt]["inputs"]["think_mode"] == "empty" and swept[enc]["inputs"]["layer"] == -5
    assert wf.set_prompt(api, "a teapot")[fmt]["inputs"]["prompt"] == "a teapot"


def test_prompt_workflows_start_from_the_identity_settings(repo):
    for name in ("zimage_prompt_lab", "zimage_hidden_layer_sweep", "zimage_long_prompt"):
        api = load(repo, name)
        for node_id in wf.find_nodes(api, "ZImageLabPromptFormatter"):
            inputs = api[node_id]["inputs"]
            assert (inputs["system_prompt"], inputs["preset"], inputs["assistant_prefill"]) == ("", "none", "")
        assert wf.set_prompt(api, "x")  # one prompt node to set: the formatter titled Positive Prompt / Prompt Formatter


def test_layer_sweep_and_long_prompt_settings(repo):
    sweep = load(repo, "zimage_hidden_layer_sweep")
    encoders = [sweep[i]["inputs"] for i in wf.find_nodes(sweep, "ZImageLabQwen3Encode")]
    assert [e["layer"] for e in encoders] == [-2, -1, -4, -8]
    assert len({json.dumps(e["text"]) for e in encoders}) == 1          # one text: one encode for all layers
    long = load(repo, "zimage_long_prompt")
    modes = {long[i]["inputs"]["long_prompt_mode"]: long[i]["inputs"]["token_budget"]
             for i in wf.find_nodes(long, "ZImageLabQwen3Encode")}
    assert modes == {"none": 512, "attention_pool": 512}
    (fmt,) = wf.find_nodes(long, "Positive Prompt")
    assert len(long[fmt]["inputs"]["prompt"].split()) > 400           # well over 512 tokens with the template
