"""The sweep report and the rating page in a real Chromium (no ComfyUI needed): the report opens
without console errors and shows every plot; votes cast with the keyboard land in SQLite and give
the Bradley-Terry ranking."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from metric_fixtures import make_sweep
from zlab import rate, report

pytestmark = pytest.mark.browser


@pytest.fixture
def tab(chromium):
    context = chromium.browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    try:
        yield page
    finally:
        context.close()


def synthetic_sweep(folder):
    return make_sweep(folder)


def full_sweep(folder):
    """The synthetic sweep with everything a report can show: a learned per-cell score and a set metric
    (scores.json), a contact sheet, and a rater's votes (ratings.sqlite)."""
    import json
    import random

    import numpy as np
    from PIL import Image

    make_sweep(folder)
    rows = report.read_rows(folder)
    cells = {r["cell"]: {"clip_score": 20.0 + r["quality"] + 0.1 * r["seed"]} for r in rows}
    conditions = {"shift=1.0, steps=4": {"lpips_diversity": 0.3}, "shift=3.0, steps=8": {"lpips_diversity": 0.1}}
    (folder / "scores.json").write_text(json.dumps({"cells": cells, "conditions": conditions}))
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(folder / "contact_sheet.png")
    session = rate.RatingSession(folder, rng=random.Random(1))
    while not (pair := session.next_pair("ann"))["done"]:
        left, right = session.pending[pair["token"]]
        session.vote("ann", pair["token"], "left" if left["quality"] >= right["quality"] else "right")
    return folder


def test_report_opens_and_shows_every_plot(tmp_path, tab):
    sweep = report.load_sweep(full_sweep(tmp_path))
    assert sweep.metrics == ["quality", "clip_score"] and sweep.preference
    titles = [title for title, _ in report.build(sweep)["plots"]]
    assert len(titles) == 2 * 3  # per metric: one plot per swept input and the two-input heatmap
    html_path, _ = report.write_report(tmp_path)
    tab.goto(html_path.as_uri())
    tab.wait_for_load_state("load")
    plots = tab.evaluate("""() => [...document.querySelectorAll('figure.plot')].map(f => {
        const i = f.querySelector('img'), box = i.getBoundingClientRect();
        return [f.querySelector('figcaption').textContent, i.complete, i.naturalWidth, box.width, box.height]; })""")
    assert [p[0] for p in plots] == titles
    assert all(done and width > 100 and box_w > 100 and box_h > 50 for _, done, width, box_w, box_h in plots)
    images = tab.evaluate("() => [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert all(ok for _, ok in images) and "contact sheet" in [alt for alt, _ in images]
    assert len(images) > len(plots) + 1  # the best / worst cells' thumbnails too
    headings = tab.evaluate("() => [...document.querySelectorAll('h3')].map(h => h.textContent)")
    for words in ("Mean per condition", "Difference to the reference", "Set metrics", "Human preference"):
        assert any(h.startswith(words) for h in headings), headings
    assert tab.errors == []


def test_rating_page_end_to_end(tmp_path, tab):
    synthetic_sweep(tmp_path)
    server = rate.serve(tmp_path, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/?rater=cleo"
    try:
        tab.goto(url)
        keys = ["ArrowLeft", "ArrowRight", "t", "s", "1"]
        for n, key in enumerate(keys):
            tab.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{n} /')")
            # the pair's images load after the counter updates: wait for the left one (32 px wide), fail after 30 s
            tab.wait_for_function("document.getElementById('left').complete && "
                                  "document.getElementById('left').naturalWidth === 32", timeout=30000)
            tab.keyboard.press(key)
        tab.wait_for_function("document.getElementById('progress').textContent.startsWith('5 /')")
        tab.reload()  # resumable: the count survives a reload
        tab.wait_for_function("document.getElementById('progress').textContent.startsWith('5 / 18')")
    finally:
        server.shutdown()
        server.server_close()
    db = sqlite3.connect(tmp_path / "ratings.sqlite")
    rows = db.execute("SELECT rater, outcome, left_cell, right_cell, left_condition, right_condition FROM votes ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["left", "right", "tie", "skip", "left"] and {r[0] for r in rows} == {"cleo"}
    assert all(r[2] != r[3] and r[4] != r[5] for r in rows)
    assert len({frozenset(r[2:4]) for r in rows}) == 5  # never the same pair twice
    # the scores count what was cast: 4 decisive or tied votes, the skip left out
    sweep = report.load_sweep(tmp_path)
    assert sum(p["votes"] for p in sweep.preference.values()) == 2 * 4
    for label, p in sweep.preference.items():
        left_wins = sum(1 for r in rows if (r[1] == "left" and r[4] == label) or (r[1] == "right" and r[5] == label))
        assert p["wins"] == left_wins
    assert tab.errors == []
