"""Bad input through POST /prompt, for every input of every node of the pack, on a real server.

For each node in the live /object_info and each of its inputs, one prompt per bad value: the node
with valid tiny settings, that one input replaced. Widgets get what a user can type (empty,
whitespace, 20,000 characters, control characters, format braces, paths, NaN / inf, out-of-range
and edge numbers, near-miss enum strings, every option of the pack's own short menus and file
lists); sockets get what a user can wire (a wrong type, a valid type with the wrong content: an
SD latent, a batch, a 1-pixel image, zeroed or combined conditioning, a refined-space vector).
Outputs are exercised downstream (a MODEL samples a step, a CLIP encodes, a CONDITIONING samples),
so errors a node defers to sampling time are found too.

Every prompt must end in one of:
- a validation error (HTTP 400 from /prompt), or
- success, with finite results and every upstream MODEL / CLIP / CONDITIONING / LATENT / IMAGE /
  steering vector fingerprint (content hashes, patches, options) unchanged, or
- an execution error raised by the pack as a ValueError whose message names the input
  (its name, underscores or spaces) -- never a raw library error (torch, safetensors, KeyError...),
and within BOUND_S seconds of execution; the server must still answer and run a clean prompt at
the end. All prompts are queued at once on the session server (upstream nodes stay cached), so the
whole sweep takes a few minutes on 2 cores.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

pytestmark = [
    pytest.mark.integration,
    # Opt-in until it has a green run: about 750 prompts (25 min on 2 busy cores), and the cases in KNOWN
    # still wait for their owners' fixes. Run it with ZLAB_BAD_INPUTS=1.
    pytest.mark.skipif(os.environ.get("ZLAB_BAD_INPUTS") != "1",
                       reason="bad-input sweep is opt-in (ZLAB_BAD_INPUTS=1): ~750 prompts, not yet green"),
]

BOUND_S = 60.0
"""Longest a single bad-input prompt may execute (the tiny models run every valid one in a few seconds
on 2 busy cores); one that runs longer is interrupted and counted as a hang."""
LONG = "word " * 4000  # 20,000 characters
CONTROL = "a\x00b\x01c\x07d\x1b[31me\x7f\u202e\ufeff"
STRING_VALUES = {"empty": "", "whitespace": " \t\n  ", "20000 chars": LONG, "control chars": CONTROL,
                 "braces and path": "{} {0} {x} {{ ../../../../etc/passwd \U0001F98A"}
FLOAT_VALUES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "text": "abc"}
INT_VALUES = {"text": "abc", "float text": "1.5", "huge": 2**70}
WORK_INTS = {"steps", "batch_size", "rank", "repeats", "window", "token_budget", "every", "overlap", "end_step",
             "start_step", "trained_length"}
"""Integers whose maximum is valid but means long work (not a bad value); only min and out-of-range there."""
CHEAP = {  # valid settings that keep each node to a blink on the tiny models
    "steps": 1, "batch_size": 1, "seeds": "1, 2", "prompts": "a lighthouse", "preserve_prompts": "a cat",
    "prompt": "a red fox", "text": "a red fox in the snow", "rank": 2, "window": 16, "overlap": 4,
    "prompts_a": "an oil painting of a harbour", "prompts_b": "a photo of a harbour",
}
NODE_CHEAP = {"ZImageLabRefinerLoRATrain": {"steps": 1}, "ZImageLabChunkedEncode": {"window": 16, "overlap": 4}}

UPSTREAM = {
    "u_model": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": "tiny_zimage.safetensors"}},
    "u_clip": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": "tiny_qwen3.safetensors"}},
    "u_vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_flux_taesd.safetensors"}},
    "u_cond": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["u_clip", 0], "text": "a red fox"}},
    "u_latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    "u_small": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
    "u_image": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 4243520}},
    "u_vector": {"class_type": "ZImageLabSteeringVectorBuild",
                 "inputs": {"clip": ["u_clip", 0], "prompts_a": "an oil painting", "prompts_b": "a photo", "layer": -2,
                            "template": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                            "normalize": False, "space": "embedding"}},
}
SOURCE = {"MODEL": "u_model", "CLIP": "u_clip", "VAE": "u_vae", "CONDITIONING": "u_cond", "LATENT": "u_latent",
          "IMAGE": "u_image", "ZIMAGE_STEERING_VECTOR": "u_vector"}
GUARDED = {"model": "u_model", "clip": "u_clip", "conditioning": "u_cond", "latent": "u_latent", "image": "u_image",
           "vector": "u_vector"}
WIRED = {  # a valid type with the wrong content: (extra nodes, source)
    "LATENT": {
        "SD 4-channel latent": {"w": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}},
        "batch of 3": {"w": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 3}}},
        "16 pixels": {"w": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}},
    },
    "IMAGE": {"1 pixel": {"w": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": 0}}}},
    "CONDITIONING": {
        "zeroed": {"w": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["u_cond", 0]}}},
        "two entries": {"w": {"class_type": "ConditioningCombine",
                              "inputs": {"conditioning_1": ["u_cond", 0], "conditioning_2": ["u_cond", 0]}}},
    },
    "ZIMAGE_STEERING_VECTOR": {
        "refined space": {"w": {"class_type": "ZImageLabSteeringVectorBuild",
                                "inputs": {**UPSTREAM["u_vector"]["inputs"], "space": "refined", "model": ["u_model", 0]}}},
    },
}
RAW_ERRORS_OK = set()  # exception types other than ValueError that count as the pack's own clear errors


@dataclass
class Case:
    node: str
    input: str
    label: str
    prompt: dict
    outcome: str = "pending"
    detail: str = ""
    seconds: float = 0.0
    guard: dict = field(default_factory=dict)


def _spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    raise KeyError(name)


def _type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) or spec[0] == "COMBO" else spec[0]


def _options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def _valid(node: str, name: str, spec):
    kind, extra = _type(spec), (spec[1] if len(spec) > 1 else {})
    if kind in SOURCE:
        return [SOURCE[kind], 0]
    if name in NODE_CHEAP.get(node, {}):
        return NODE_CHEAP[node][name]
    if name in CHEAP and kind in ("STRING", "INT"):
        value = CHEAP[name]
        return max(value, extra.get("min", value)) if kind == "INT" else value
    if kind == "COMBO":
        options = _options(spec)
        return extra.get("default", options[0] if options else "")
    return extra.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": "a"}.get(kind))


def _bad_values(node: str, name: str, spec, sockets_of: dict) -> dict:
    kind, extra = _type(spec), (spec[1] if len(spec) > 1 else {})
    if kind == "STRING":
        return dict(STRING_VALUES)
    if kind == "FLOAT":
        values = dict(FLOAT_VALUES)
        if "min" in extra:
            values.update({"min": extra["min"], "below min": extra["min"] - 1})
        if "max" in extra:
            values["above max"] = extra["max"] + 1
        return values
    if kind == "INT":
        values = dict(INT_VALUES)
        if "min" in extra:
            values.update({"min": extra["min"], "below min": extra["min"] - 1})
        if "max" in extra:
            values["above max"] = extra["max"] + 1
            if name not in WORK_INTS:
                values["max"] = extra["max"]
        return values
    if kind == "BOOLEAN":
        return {"not the default": not extra.get("default", False)}
    if kind == "COMBO":
        options = _options(spec)
        values = {"empty": "", "near miss": (str(options[0]).upper() + " ") if options else "x", "number": 3}
        if "default" not in extra:  # a file list: every file (the test models include wrong ones)
            values.update({f"file {o!r}": o for o in options})
        return values
    # a socket: the wrong type, and the right type with the wrong content
    wrong = "u_image" if kind != "IMAGE" else "u_latent"
    values = {"wrong type": ([wrong, 0], {})}
    for label, nodes in WIRED.get(kind, {}).items():
        values[label] = (["w", 0], nodes)
    return values


def _exercise(node: str, info: dict, downstream: bool) -> dict:
    """Nodes that use the node's outputs, so errors deferred to sampling or encoding show up.

    Only for numbers, switches, files and sockets (strings are parsed when the node runs)."""
    extra, results = {}, {}
    for i, out in enumerate(info["output"]):
        if not downstream and i < 6:
            results[f"result_{i}"] = ["t", i]
        elif out == "MODEL":
            extra[f"x{i}"] = {"class_type": "KSampler", "inputs": {
                "model": ["t", i], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["u_cond", 0], "negative": ["u_cond", 0], "latent_image": ["u_small", 0], "denoise": 1.0}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif out == "CLIP":
            extra[f"x{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t", i], "text": "a red fox"}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif out == "CONDITIONING":
            extra[f"x{i}"] = {"class_type": "KSampler", "inputs": {
                "model": ["u_model", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["t", i], "negative": ["t", i], "latent_image": ["u_small", 0], "denoise": 1.0}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif i < 6:
            results[f"result_{i}"] = ["t", i]
    return extra, results


def build_prompt(node: str, info: dict, override: dict | None = None, wired: dict | None = None,
                 downstream: bool = True) -> dict:
    inputs = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            if section == "optional" and _type(spec) not in ("STRING", "INT", "FLOAT", "BOOLEAN", "COMBO") \
                    and _type(spec) not in SOURCE:
                continue  # optional sockets of types we cannot make (LORA_MODEL, ZIMAGE_CHAT) stay empty
            inputs[name] = _valid(node, name, spec)
    inputs.update(override or {})
    prompt = copy.deepcopy(UPSTREAM)
    prompt.update(copy.deepcopy(wired or {}))
    prompt["t"] = {"class_type": node, "inputs": inputs}
    extra, results = _exercise(node, info, downstream)
    prompt.update(extra)
    prompt["guard"] = {"class_type": "ZImageLabTestInputGuard",
                       "inputs": {**{k: [v, 0] for k, v in GUARDED.items()}, **results}}
    return prompt


def make_cases(ours: dict) -> list[Case]:
    cases = []
    for node, info in sorted(ours.items()):
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                for label, value in _bad_values(node, name, spec, SOURCE).items():
                    wired = None
                    if isinstance(value, tuple):
                        value, wired = value
                    downstream = _type(spec) != "STRING"
                    cases.append(Case(node, name, label, build_prompt(node, info, {name: value}, wired, downstream)))
    return cases


def _post(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def names_input(message: str, name: str) -> bool:
    text = message.lower()
    return name.lower() in text or name.replace("_", " ").lower() in text


def judge(case: Case, entry: dict, baseline: dict) -> None:
    """Fill case.outcome: ok-validation / ok-success / ok-clear-error, or a failure kind."""
    status = entry.get("status", {})
    messages = {kind: data for kind, data in status.get("messages", [])}
    start = messages.get("execution_start", {}).get("timestamp")
    end = (messages.get("execution_success") or messages.get("execution_error")
           or messages.get("execution_interrupted") or {}).get("timestamp")
    if start and end:
        case.seconds = (end - start) / 1000.0
    if "execution_interrupted" in messages:
        case.outcome, case.detail = "hang", f"ran past {BOUND_S:.0f} s and was interrupted"
        return
    if "execution_error" in messages:
        err = messages["execution_error"]
        message, kind = err.get("exception_message", ""), err.get("exception_type", "")
        where = err.get("node_type", "?")
        if kind.split(".")[-1] in ("ValueError", *RAW_ERRORS_OK) and names_input(message, case.input):
            case.outcome = "ok-clear-error"
        else:
            case.outcome = "raw-error" if kind.split(".")[-1] != "ValueError" else "unclear-error"
        case.detail = f"{kind} in {where}: {message.strip()[:300]}"
        return
    guard = next((o["guard"] for o in entry.get("outputs", {}).values() if "guard" in o), None)
    if guard is None:
        case.outcome, case.detail = "no-result", json.dumps(status)[:300]
        return
    case.guard = json.loads(guard[0])
    changed = sorted(k for k, v in case.guard["fingerprints"].items() if v != baseline.get(k))
    if changed:
        case.outcome, case.detail = "changed-upstream", ", ".join(changed)
    elif not case.guard["finite"]:
        case.outcome, case.detail = "non-finite-result", "accepted the value and returned NaN/inf"
    elif case.seconds > BOUND_S:
        case.outcome, case.detail = "slow", f"{case.seconds:.1f} s"
    else:
        case.outcome = "ok-success"


def run_cases(url: str, cases: list[Case], baseline: dict, deadline_s: float) -> None:
    """Queue every case at once, interrupt any that runs past BOUND_S, judge each from /history."""
    queued = {}
    for case in cases:
        code, body = _post(url, "/prompt", {"prompt": case.prompt, "client_id": uuid.uuid4().hex})
        if code == 200:
            queued[body["prompt_id"]] = case
        elif code == 400 and body and (body.get("node_errors") or body.get("error")):
            case.outcome, case.detail = "ok-validation", json.dumps(body.get("error", {}))[:200]
        else:
            case.outcome, case.detail = "post-failed", f"HTTP {code}: {json.dumps(body)[:300]}"
    pending, running_since, stop = set(queued), {}, time.monotonic() + deadline_s
    while pending and time.monotonic() < stop:
        time.sleep(1.0)
        _, queue = _post(url, "/queue")
        for item in queue.get("queue_running", []):
            pid = item[1]
            running_since.setdefault(pid, time.monotonic())
            if time.monotonic() - running_since[pid] > BOUND_S:
                _post(url, "/interrupt", {})
                running_since[pid] = math.inf
        _, history = _post(url, "/history")
        for pid in list(pending):
            if history and pid in history and history[pid].get("status", {}).get("completed") is not None:
                judge(queued[pid], history[pid], baseline)
                pending.discard(pid)
    for pid in pending:
        queued[pid].outcome, queued[pid].detail = "hang", "never finished before the sweep's deadline"


def clean_run(url: str, ours: dict, node: str) -> dict:
    """Run one node with valid settings; return the guard's fingerprints (the baseline)."""
    code, body = _post(url, "/prompt", {"prompt": build_prompt(node, ours[node]), "client_id": uuid.uuid4().hex})
    assert code == 200, body
    pid, stop = body["prompt_id"], time.monotonic() + 300
    while time.monotonic() < stop:
        _, history = _post(url, f"/history/{pid}")
        if history and pid in history and history[pid].get("status", {}).get("completed") is not None:
            entry = history[pid]
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
            guard = next(o["guard"] for o in entry["outputs"].values() if "guard" in o)
            return json.loads(guard[0])["fingerprints"]
        time.sleep(0.5)
    raise AssertionError(f"the clean {node} prompt did not finish in 300 s")


def test_every_bad_input_gets_a_validation_or_clear_error(lab):
    ours = {k: v for k, v in lab.client.object_info().items() if k.startswith("ZImageLab") and "Test" not in k}
    assert len(ours) >= 27, sorted(ours)
    baseline = clean_run(lab.url, ours, "ZImageLabSteeringApply")
    cases = make_cases(ours)
    started = time.monotonic()
    run_cases(lab.url, cases, baseline, deadline_s=1800)
    elapsed = time.monotonic() - started
    # The server survived: it answers and still runs a clean prompt with the upstream objects intact.
    assert clean_run(lab.url, ours, "ZImageLabSteeringApply") == baseline
    outcomes = {}
    for case in cases:
        outcomes.setdefault(case.outcome, []).append(case)
    summary = {k: len(v) for k, v in sorted(outcomes.items())}
    print(f"\n{len(cases)} bad-input prompts for {len(ours)} nodes in {elapsed:.0f} s: {summary}")
    failures = [c for c in cases if not c.outcome.startswith("ok-") and (c.node, c.input, c.label) not in KNOWN]
    lines = [f"{c.node}.{c.input} = {c.label}: {c.outcome} ({c.seconds:.1f} s) {c.detail}" for c in failures]
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs were not handled:\n" + "\n".join(lines)


KNOWN: dict[tuple[str, str, str], str] = {
    # owned by "gpu" (nodes/accelerate.py): torch.compile of the blocks on a CPU server runs for minutes
    ("ZImageLabAccelerate", "compile_blocks", "not the default"): "gpu: refuse compile_blocks without CUDA",
    # owned by "models"/"gpu" (refiner_lora_train): call core.validation before training
    **{("ZImageLabRefinerLoRATrain", name, "20000 chars"): "models: validation.bounded_text(" + name + ", ...)"
       for name in ("prompts", "style", "preserve_prompts")},
    ("ZImageLabRefinerLoRATrain", "lora_name", "20000 chars"): "models: validation.filename_prefix(lora_name, 'lora_name')",
    ("ZImageLabRefinerLoRATrain", "lora_name", "control chars"): "models: validation.filename_prefix(lora_name, 'lora_name')",
    # test-setup limits: the valid baseline of these nodes cannot run here (no LoRA file, no HF clip
    # wired, embedding-space upstream vector), so their error names the missing piece, not the input
    **{("ZImageLabRefinerLoRALoader", name, label): "baseline needs a LoRA file"
       for name, labels in (("strength", ("nan", "min")), ("block_strengths", tuple(STRING_VALUES)))
       for label in labels},
    **{("ZImageLabProjectorLoader", "projector_name", f"file {f!r}"): "baseline needs a Load HF Qwen3 clip"
       for f in ("tiny_fitted.safetensors", "tiny_small_to_tiny.safetensors", "tiny_wrong_width.safetensors")},
    ("ZImageLabRefinedSteering", "alpha", "nan"): "baseline vector is embedding-space",
    ("ZImageLabRefinedSteering", "alpha", "min"): "baseline vector is embedding-space",
    ("ZImageLabSteeringApply", "vector_2", "refined space"): "message names 'vector', not vector_2",
    ("ZImageLabSteeringApply", "vector_3", "refined space"): "message names 'vector', not vector_3",
    # not yet fixed (found in the last full run, before the fixes of this branch were loaded)
    ("ZImageLabChunkedEncode", "text", "20000 chars"): "bound the windows (validation.bounded_count)",
    ("ZImageLabEmbeddingNegative", "strength", "nan"): "validation.finite(strength, 'strength')",
    **{(node, "seed", "max"): "seed 2**64-1 overflows comfy.sample.prepare_noise (stock KSampler does too)"
       for node in ("ZImageLabSampler", "ZImageLabTokenAttribution", "ZImageLabTrajectory")},
    ("ZImageLabImageMetrics", "image", "1 pixel"): "message names 'the input', not image",
    ("ZImageLabImageMetrics", "reference", "1 pixel"): "message does not name reference",
    ("ZImageLabImageMetrics", "reference_latent", "SD 4-channel latent"): "message does not name reference_latent",
    ("ZImageLabImageMetrics", "reference_latent", "16 pixels"): "message does not name reference_latent",
}
"""(node, input, value label) -> why a failure is tolerated for now, and the fix that is due."""
