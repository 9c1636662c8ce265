"""Helpers of the sweep integration tests: the tiny workflow and spec files, the command line, the finished rows,
and a local Ray cluster for the ``--ray`` tests."""

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

import harness


def files(lab, tmp_path, spec, ui=False):
    api = lab.workflow("zimage_turbo_lab.json")
    if ui:
        from zlab import workflow as wf

        api = wf.api_to_ui(api, lab.client.object_info())
    workflow = tmp_path / ("tiny_ui.json" if ui else "tiny.json")
    workflow.write_text(json.dumps(api))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return workflow, spec_path


def command(spec_path, workflow, out, *servers, extra=()):
    args = [sys.executable, "-m", "zlab", "sweep", str(spec_path), "--workflow", str(workflow), "--out", str(out)]
    for url in servers:
        args += ["--server", url]
    return args + list(extra)


def ok_rows(out):
    path = out / "results.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if row.get("status") == "ok":
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def ray_cluster(comfyui_path):
    """A local Ray cluster on this CPU machine, with two placeholder GPU slots (one per worker actor)."""
    pytest.importorskip("ray")
    root = tempfile.mkdtemp(prefix="zr")  # short: Ray's socket paths must stay under 108 characters
    port = harness.free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port), "--num-cpus", "2",
           "--num-gpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", root,
           "--dashboard-agent-listen-port", str(harness.free_port())]
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path)}
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"address": f"127.0.0.1:{port}", "root": root}
    finally:
        end_processes_naming(root)


def end_processes_naming(text):
    """SIGKILL every process whose command line names text (the cluster's folder: its raylet, workers, servers)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def ray_command(spec_path, workflow, out, cluster, lab, comfyui_path, extra=()):
    """The sweep command on the cluster: workers start tiny-model CPU servers on the lab's models."""
    args = command(spec_path, workflow, out, extra=extra)
    return args + ["--ray", cluster["address"], "--comfyui", str(comfyui_path), "--base-directory", str(lab.base),
                   "--server-arg=--cpu", "--scratch", os.path.join(cluster["root"], "servers")]


SWEEP_CLIP_SEED = 7  # cos ~0.2 with the tiny models' images: CLIPScore clamps a negative cos to 0, which proves nothing


def sweep_clip(lab):
    """The tiny CLIP the sweep-scoring tests put in the lab server's models/metrics/clip/tiny-clip, written once:
    the server loads a metric model once per folder, so every test that scores through it must use the same weights."""
    from metric_fixtures import save_tiny_clip

    path = lab.base / "models" / "metrics" / "clip" / "tiny-clip"
    if not (path / "config.json").exists():
        save_tiny_clip(str(path), seed=SWEEP_CLIP_SEED)
    return path
