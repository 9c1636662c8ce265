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
- success, with finite results and every upstream object unchanged: the MODEL / CLIP / CONDITIONING /
  LATENT / IMAGE / VAE / steering vector of every upstream node, fingerprinted after the node ran
  (content hashes of tensors, patches, object patches, options, wrappers), or
- an execution error raised by the pack as a ValueError whose message names the input
  (its name, underscores or spaces) -- never a raw library error (torch, safetensors, KeyError...),
and within BOUND_S seconds of execution. At the end the server must still answer and run a clean prompt,
and the MODEL / CLIP weights (hashed as loaded, ignoring ComfyUI's own in-place patching of loaded clones)
must equal those of the start: no node changed a weight in place.

Speed: the sweep has its own server (the product's settings, not the test servers' opt-ins); every prompt
is queued at once and judged from /history at the end; the upstream loaders keep their node ids and
inputs, so the server runs them once; latents are 16-32 pixels; most bad values end at validation.
About 1,000 prompts in 5-6 minutes with the server start, on 2 busy cores (docs/compatibility.md).
ZLAB_BAD_INPUTS=0 skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid

import pytest

import harness
from bad_input_cases import LORA_FILE, Case, build_prompt, make_cases, options_of, reference_case, spec_of, write_lora

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("ZLAB_BAD_INPUTS") == "0", reason="bad-input sweep skipped (ZLAB_BAD_INPUTS=0)"),
]

BOUND_S = 60.0
"""Longest a single bad-input prompt may execute (the tiny models run every valid one in a few seconds
on 2 busy cores); one that runs longer is interrupted and counted as a hang."""
LONG_TEXT_FACTOR, LONG_BOUND_S = 3.0, 300.0
"""A 20,000-character text is valid input for a text encoder (ComfyUI sets no limit): such a case may run up to
LONG_TEXT_FACTOR times what stock CLIPTextEncode takes on the same text in the same sweep (measured as the first
prompt), and is interrupted at LONG_BOUND_S."""
RAW_ERRORS_OK = set()  # exception types other than ValueError that count as the pack's own clear errors


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
    case.ui = entry.get("outputs", {}).get("t", {})
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


def allow_long_texts(cases: list[Case], reference: Case) -> None:
    """A 20,000-character case judged slow is fine within LONG_TEXT_FACTOR x the stock encode of that text."""
    allowed = max(BOUND_S, LONG_TEXT_FACTOR * reference.seconds)
    for case in cases:
        if case.label == "20000 chars" and case.outcome == "slow" and case.seconds <= allowed:
            case.outcome = "ok-success"
            case.detail = f"{case.seconds:.1f} s, within {LONG_TEXT_FACTOR:g} x stock CLIPTextEncode ({reference.seconds:.1f} s)"


def _running_case(url: str, queued: dict) -> Case | None:
    _, queue = _post(url, "/queue")
    running = (queue or {}).get("queue_running") or []
    return queued.get(running[0][1]) if running else None


def _queue_remaining(url: str) -> int:
    _, body = _post(url, "/prompt")
    return body["exec_info"]["queue_remaining"]


def run_cases(url: str, cases: list[Case], baseline: dict, deadline_s: float) -> None:
    """Queue every case at once; interrupt a prompt that runs past BOUND_S; judge each from /history at the end.

    Only the queue length is polled while the server works (GET /prompt, a few bytes), so the polling costs the
    server nothing; a queue that stops shrinking for BOUND_S means the running prompt is past its bound."""
    queued = {}
    for case in cases:
        code, body = _post(url, "/prompt", {"prompt": case.prompt, "client_id": uuid.uuid4().hex})
        if code == 200:
            queued[body["prompt_id"]] = case
        elif code == 400 and body and (body.get("node_errors") or body.get("error")):
            case.outcome, case.detail = "ok-validation", json.dumps(body.get("error", {}))[:200]
        else:
            case.outcome, case.detail = "post-failed", f"HTTP {code}: {json.dumps(body)[:300]}"
    stop, last, changed = time.monotonic() + deadline_s, None, time.monotonic()
    while time.monotonic() < stop:
        remaining = _queue_remaining(url)
        if remaining == 0:
            break
        if remaining != last:
            last, changed = remaining, time.monotonic()
        elif time.monotonic() - changed > BOUND_S:
            running = _running_case(url, queued)
            bound = LONG_BOUND_S if running is not None and running.label == "20000 chars" else BOUND_S
            if time.monotonic() - changed > bound:
                _post(url, "/interrupt", {})
                changed = time.monotonic()
        time.sleep(0.5)
    _, history = _post(url, f"/history?max_items={len(queued) + 10}")
    for pid, case in queued.items():
        if history and pid in history and history[pid].get("status", {}).get("completed") is not None:
            judge(case, history[pid], baseline)
        else:
            case.outcome, case.detail = "hang", "never finished before the sweep's deadline"


def clean_run(url: str, ours: dict, node: str, weights: bool = False) -> dict:
    """Run one node with valid settings; return the guard's fingerprints (the baseline)."""
    prompt = build_prompt(node, ours[node])
    prompt["guard"]["inputs"]["weights"] = weights
    code, body = _post(url, "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
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


@pytest.fixture(scope="module")
def sweep_server(tmp_path_factory):
    """A server of its own, started as users start it: no test opt-ins (the accelerator's CPU compile) in its
    environment, and a LoRA file in its loras folder."""
    comfyui = harness.find_comfyui()
    if comfyui is None:
        pytest.skip("no ComfyUI found")
    base = harness.make_base(comfyui, tmp_path_factory.mktemp("bad_inputs") / "base")
    write_lora(base / "models" / "loras")
    server = harness.ComfyServer(comfyui, base)
    saved = os.environ.pop("ZLAB_ACCELERATE_CPU_COMPILE", None)
    try:
        server.start()
    finally:
        if saved is not None:
            os.environ["ZLAB_ACCELERATE_CPU_COMPILE"] = saved
    try:
        yield server
    finally:
        server.stop()
        artifacts = os.environ.get("ZLAB_TEST_ARTIFACTS")
        if artifacts:
            os.makedirs(artifacts, exist_ok=True)
            shutil.copy(server.log_path, os.path.join(artifacts, "server-bad-inputs.log"))


def _dump(cases: list[Case], elapsed: float) -> None:
    """Every case's outcome and time, as JSON, to $ZLAB_TEST_ARTIFACTS/bad_inputs.json when that is set."""
    folder = os.environ.get("ZLAB_TEST_ARTIFACTS")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    rows = [{"node": c.node, "input": c.input, "label": c.label, "outcome": c.outcome, "seconds": round(c.seconds, 3),
             "detail": c.detail[:300]} for c in cases]
    with open(os.path.join(folder, "bad_inputs.json"), "w") as f:
        json.dump({"elapsed_s": round(elapsed, 1), "cases": rows}, f, indent=1)


def test_every_bad_input_gets_a_validation_or_clear_error(sweep_server):
    url = sweep_server.url
    ours = {k: v for k, v in harness.ComfyClient(url, timeout=120).object_info().items()
            if k.startswith("ZImageLab") and "Test" not in k}
    assert len(ours) >= 27, sorted(ours)
    assert LORA_FILE in options_of(spec_of(ours["ZImageLabRefinerLoRALoader"], "lora_name"))
    baseline = clean_run(url, ours, "ZImageLabSteeringApply")
    weights = clean_run(url, ours, "ZImageLabSteeringApply", weights=True)
    assert {k for k, v in weights.items() if "weights" in v} == {"u_model", "u_clip", "u_hf_clip"}
    reference = reference_case()
    cases = [reference, *make_cases(ours)]
    started = time.monotonic()
    run_cases(url, cases, baseline, deadline_s=1200)
    elapsed = time.monotonic() - started
    assert reference.outcome in ("ok-success", "slow"), (reference.outcome, reference.detail)
    allow_long_texts(cases, reference)
    _dump(cases, elapsed)
    # The server survived: it answers and still runs a clean prompt with the upstream objects intact, and no
    # node changed a MODEL / CLIP weight in place.
    assert clean_run(url, ours, "ZImageLabSteeringApply") == baseline
    assert clean_run(url, ours, "ZImageLabSteeringApply", weights=True) == weights
    outcomes = {}
    for case in cases:
        outcomes.setdefault(case.outcome, []).append(case)
    summary = {k: len(v) for k, v in sorted(outcomes.items())}
    print(f"\n{len(cases)} bad-input prompts for {len(ours)} nodes in {elapsed:.0f} s: {summary}")
    failures = [c for c in cases if not c.outcome.startswith("ok-") and (c.node, c.input, c.label) not in KNOWN]
    lines = [f"{c.node}.{c.input} = {c.label}: {c.outcome} ({c.seconds:.1f} s) {c.detail}" for c in failures]
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs were not handled:\n" + "\n".join(lines)
    # Switched off with a message rather than minutes of compiling on a CPU server.
    compile_case = next(c for c in cases if (c.node, c.input, c.label) == ("ZImageLabAccelerate", "compile_blocks",
                                                                             "not the default"))
    assert "compile_blocks switched off" in " ".join(compile_case.ui.get("text", [])), compile_case.ui


KNOWN: dict[tuple[str, str, str], str] = {}
"""(node, input, value label) -> why a failure is tolerated, for a failure that is not the pack's to fix. Empty: the
last entries (unbounded work, messages that did not name the input, baselines that could not run here) are fixed,
in the nodes or in this test's setup."""
