"""Helpers of the sweep integration tests: the tiny workflow and spec files, the command line, the finished rows."""

import json
import sys


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
