"""``zlab sweep`` when things go wrong, over HTTP and on a local Ray cluster: a server killed mid-sweep, a server
that stops answering and comes back, a cell that fails on two servers, Ctrl-C. Real ComfyUI servers throughout."""

import json
import os
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

import harness
from sweep_fixtures import command, files, ok_rows, ray_cluster, ray_command  # noqa: F401 (ray_cluster: a fixture)

pytestmark = pytest.mark.integration

KILL_SPEC = {"name": "tiny_kill", "params": {"Z-Image Sampler.shift": [1.0, 3.0], "Z-Image Sampler.steps": [2, 3]},
             "seeds": [1, 2]}
LOST = re.compile(r"stopped answering.*?: ((?:[0-9a-f]{12} ?)+)$|cell ([0-9a-f]{12}) .*(?:did not answer for its files|lost on worker)")


class Sweep:
    """``python -m zlab sweep`` in the background, its output read line by line as it comes."""

    def __init__(self, args, repo):
        self.lines = []
        # SIGINT back to its default: a test run started in the background by a non-interactive shell inherits it
        # ignored, and Python then installs no KeyboardInterrupt handler (the Ctrl-C test would see a sweep that
        # never stops); a user's terminal always delivers it
        self.proc = subprocess.Popen(args, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def wait_for(self, found, timeout=600):
        """Wait until found() is true; fail with the output when the sweep ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while not found():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.1)

    def finish(self, timeout=900):
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        time.sleep(0.2)  # the reader thread takes the last lines
        return self.proc.returncode

    def text(self):
        return "".join(self.lines)

    def lost_cells(self):
        """Ids of the cells the sweep said it took back from a dead server or worker."""
        ids = set()
        for line in self.lines:
            m = LOST.search(line.strip())
            if m:
                ids.update((m.group(1) or m.group(2)).split())
        return ids


def check_one_row_per_cell(out, cells=8):
    rows = ok_rows(out)
    assert len(rows) == cells and len({r["cell"] for r in rows}) == cells, [r["cell"] for r in rows]
    table = (out / "results.csv").read_text().splitlines()
    assert len(table) == cells + 1
    return {r["cell"]: r for r in rows}


def pixels(out, row):
    return np.asarray(Image.open(out / row["image"]))


def server(comfyui_path, lab, root):
    """A second tiny-model ComfyUI server (sharing the lab's tiny models)."""
    root.mkdir(parents=True)
    (root / "models").symlink_to(lab.base / "models", target_is_directory=True)
    return harness.ComfyServer(comfyui_path, harness.make_base(comfyui_path, root)).start()


@pytest.fixture(scope="module")
def spare(lab, comfyui_path, tmp_path_factory):
    """A second server for the whole module (paused and resumed, never killed)."""
    s = server(comfyui_path, lab, tmp_path_factory.mktemp("spare") / "base")
    try:
        yield s
    finally:
        os.kill(s.process.pid, signal.SIGCONT)
        s.stop()


@pytest.fixture(scope="module")
def http_kill_run(lab, comfyui_path, tmp_path_factory, repo):
    """The kill test over HTTP: two servers, one killed (SIGKILL) after two cells finished."""
    tmp = tmp_path_factory.mktemp("http_kill")
    doomed = server(comfyui_path, lab, tmp / "base")
    try:
        workflow, spec_path = files(lab, tmp, KILL_SPEC)
        out = tmp / "out"
        sweep = Sweep(command(spec_path, workflow, out, lab.url, doomed.url,
                              extra=["--per-server", "2", "--server-timeout", "10"]), repo)
        sweep.wait_for(lambda: len(ok_rows(out)) >= 2)
        os.killpg(doomed.process.pid, signal.SIGKILL)
        killed_at = time.time()
        assert sweep.finish() == 0, sweep.text()
    finally:
        doomed.stop()
    return {"out": out, "sweep": sweep, "killed": doomed.url, "killed_at": killed_at, "survivor": lab.url,
            "workflow": workflow, "spec": spec_path}


def test_http_a_server_killed_mid_sweep_has_its_cells_redone_on_the_other(http_kill_run):
    run = http_kill_run
    rows = check_one_row_per_cell(run["out"])
    lost = run["sweep"].lost_cells()
    assert lost, run["sweep"].text()  # the killed server had cells in flight
    for cell in lost:
        assert rows[cell]["server"] == run["survivor"]
    assert all(r["server"] == run["survivor"] for r in rows.values() if r["queued_at"] > run["killed_at"])
    assert f"server {run['killed']} stopped answering" in run["sweep"].text()


def test_http_a_cell_that_fails_on_two_servers_is_recorded_failed(lab, spare, tmp_path, repo):
    spec = {"name": "one_bad", "params": {"Z-Image Sampler.steps": [2, "x"]}, "seeds": [1]}
    workflow, spec_path = files(lab, tmp_path, spec)
    out = tmp_path / "out"
    proc = subprocess.run(command(spec_path, workflow, out, lab.url, spare.url), cwd=repo, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["params"]["Z-Image Sampler.steps"] for r in lines if r["status"] == "ok"] == [2]
    (bad,) = [r for r in lines if r["status"] == "error"]
    assert bad["params"]["Z-Image Sampler.steps"] == "x"
    assert lab.url in bad["error"] and spare.url in bad["error"]  # tried once on each server, then given up
    assert "trying it on another server" in proc.stdout and "1 cells failed" in proc.stderr


def test_http_a_server_that_stops_answering_comes_back_into_rotation(lab, spare, tmp_path, repo):
    spec = {"name": "pause", "params": {"Z-Image Sampler.steps": [2, 3]}, "seeds": "21-24"}
    workflow, spec_path = files(lab, tmp_path, spec)
    out = tmp_path / "out"
    sweep = Sweep(command(spec_path, workflow, out, lab.url, spare.url,
                          extra=["--per-server", "1", "--server-timeout", "5"]), repo)
    try:
        sweep.wait_for(lambda: len(ok_rows(out)) >= 1)
        for s in (spare.process.pid, lab.server.process.pid):
            os.kill(s, signal.SIGSTOP)  # alive but silent, as hung servers
        sweep.wait_for(lambda: all(f"server {u} stopped answering" in sweep.text() for u in (lab.url, spare.url)))
        done_before = len(ok_rows(out))
        os.kill(spare.process.pid, signal.SIGCONT)  # the spare recovers first: the cells left can only go to it
        resumed = time.time()
        sweep.wait_for(lambda: any(r["server"] == spare.url and r["queued_at"] > resumed for r in ok_rows(out)))
    finally:
        os.kill(spare.process.pid, signal.SIGCONT)
        os.kill(lab.server.process.pid, signal.SIGCONT)
    assert sweep.finish() == 0, sweep.text()
    rows = check_one_row_per_cell(out)
    assert f"server {spare.url} answers again: back in rotation" in sweep.text()
    assert done_before < 8 and any(r["server"] == spare.url and r["queued_at"] > resumed for r in rows.values())


def test_ctrl_c_leaves_a_resumable_folder(lab, tmp_path, repo):
    # cells of 8-10 steps (~1 s each on the tiny model), so the Ctrl-C sent after the first row meets a running sweep
    spec = {"name": "ctrl_c", "params": {"Z-Image Sampler.steps": [8, 10]}, "seeds": "31-33"}
    workflow, spec_path = files(lab, tmp_path, spec)
    out = tmp_path / "out"
    sweep = Sweep(command(spec_path, workflow, out, lab.url, extra=["--per-server", "1"]), repo)
    sweep.wait_for(lambda: len(ok_rows(out)) >= 1)
    os.kill(sweep.proc.pid, signal.SIGINT)
    assert sweep.finish(timeout=120) == 130, sweep.text()
    assert "interrupted" in sweep.text()
    before = {r["cell"]: r for r in ok_rows(out)}
    assert 1 <= len(before) < 6
    assert len((out / "results.csv").read_text().splitlines()) == len(before) + 1  # tables written on the way out
    again = subprocess.run(command(spec_path, workflow, out, lab.url), cwd=repo, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"6 cells, {len(before)} already done, {6 - len(before)} to run" in again.stdout
    rows = check_one_row_per_cell(out, 6)
    assert all(rows[c]["prompt_id"] == before[c]["prompt_id"] for c in before)


# ------------------------------------------------------------------------------------------------ Ray


def test_ray_a_worker_whose_server_is_killed_has_its_cells_redone_elsewhere(ray_cluster, http_kill_run, lab,
                                                                            comfyui_path, tmp_path, repo):
    out = tmp_path / "out"
    sweep = Sweep(ray_command(http_kill_run["spec"], http_kill_run["workflow"], out, ray_cluster, lab, comfyui_path,
                              extra=["--per-server", "2", "--server-timeout", "10"]), repo)
    started = re.compile(r"worker (w\d) on node .*: ComfyUI (\S+) \(pid (\d+)\)")
    sweep.wait_for(lambda: len({m.group(1) for m in map(started.search, sweep.lines) if m}) == 2 and len(ok_rows(out)) >= 2)
    workers = {m.group(1): (m.group(2), int(m.group(3))) for m in map(started.search, sweep.lines) if m}
    os.kill(workers["w1"][1], signal.SIGKILL)  # the ComfyUI server that Ray worker w1 owns
    killed_at = time.time()
    assert sweep.finish() == 0, sweep.text()
    rows = check_one_row_per_cell(out)
    lost = sweep.lost_cells()
    assert lost, sweep.text()  # w1 had cells in flight; each was run again by the other worker
    for cell in lost:
        assert rows[cell]["worker"] == "w0", sweep.text()
    assert all(r["server"] != workers["w1"][0] for r in rows.values() if r["queued_at"] > killed_at)
    assert "worker w1 stopped answering" in sweep.text()
    assert re.search(r"done 8, failed 0, retried [1-9]\d*, workers [12]/2", sweep.text())  # the progress bar

    # the same outputs as the HTTP mode: tables, contact sheet, and the very same pixels for every cell
    http_rows = {r["cell"]: r for r in ok_rows(http_kill_run["out"])}
    assert set(http_rows) == set(rows)
    for cell, row in rows.items():
        assert np.array_equal(pixels(out, row), pixels(http_kill_run["out"], http_rows[cell])), row["label"]
    assert (out / "results.csv").read_text().splitlines()[0] == \
        (http_kill_run["out"] / "results.csv").read_text().splitlines()[0]
    assert (out / "contact_sheet.png").is_file()
    setup = json.loads((out / "sweep.json").read_text())["setup"]
    assert {w["name"] for w in setup["ray"]["workers"]} == {"w0", "w1"} and len(setup["servers"]) == 2
    time.sleep(1)
    servers_left = subprocess.run(["pgrep", "-f", os.path.join(ray_cluster["root"], "servers")], capture_output=True)
    assert servers_left.stdout == b""  # the workers ended the servers they started


def test_ray_a_cell_that_fails_on_two_workers_is_recorded_failed(ray_cluster, lab, comfyui_path, tmp_path, repo):
    spec = {"name": "one_bad_ray", "params": {"Z-Image Sampler.steps": [2, "x"]}, "seeds": [1]}
    workflow, spec_path = files(lab, tmp_path, spec)
    out = tmp_path / "out"
    proc = subprocess.run(ray_command(spec_path, workflow, out, ray_cluster, lab, comfyui_path,
                                      extra=["--per-server", "1"]), cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["params"]["Z-Image Sampler.steps"] for r in lines if r["status"] == "ok"] == [2]
    (bad,) = [r for r in lines if r["status"] == "error"]
    assert bad["params"]["Z-Image Sampler.steps"] == "x"
    assert "w0" in bad["error"] and "w1" in bad["error"]  # tried once on each worker, then given up
    assert "trying it on another worker" in proc.stdout and "1 cells failed" in proc.stderr
