"""zlab report / rate on a small synthetic sweep folder: hand-computed intervals and paired differences,
the documents written, and the rating page's vote store (the browser half is in test_report_browser)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from zlab import rate, report
from metric_fixtures import SHIFT, STEPS, VALUES, make_sweep

def exact_quantiles(values):
    means = sorted(np.mean(r) for r in itertools.product(values, repeat=len(values)))
    return means[math.ceil(len(means) * 0.025) - 1], means[math.ceil(len(means) * 0.975) - 1]


def test_summary_means_intervals_and_paired_differences(tmp_path):
    sweep = report.load_sweep(make_sweep(tmp_path))
    assert sweep.metrics == ["quality"] and sweep.params == [SHIFT, STEPS]
    summary = {e["condition"]: e for e in report.summarise(sweep)}
    assert list(summary) == list(VALUES)  # spec order
    mean, lo, hi = summary[(1.0, 4)]["metrics"]["quality"]
    assert mean == pytest.approx(3.0)
    assert (lo, hi) == pytest.approx(exact_quantiles([1.0, 2.0, 6.0]), abs=1 / 3 + 1e-9)  # atoms 1/3 apart
    assert summary[(1.0, 8)]["metrics"]["quality"] == (2.0, 2.0, 2.0)
    # (1.0, 4) - reference (3.0, 8) by seed: 1-1, 2-1, 6-3 = 0, 1, 3
    d_mean, d_lo, d_hi, pairs = summary[(1.0, 4)]["difference"]["quality"]
    assert (d_mean, pairs) == (pytest.approx(4 / 3), 3)
    assert (d_lo, d_hi) == pytest.approx(exact_quantiles([0.0, 1.0, 3.0]), abs=1 / 3 + 1e-9)
    assert summary[(3.0, 8)]["difference"] == {}  # the reference itself


def test_report_files(tmp_path):
    html_path, md_path = report.write_report(make_sweep(tmp_path))
    text = html_path.read_text()
    # one line plot per swept input and a heatmap, for the one metric
    assert text.count('<figure class="plot">') == 3
    assert "python -m zlab sweep s.yaml" in text and "NVIDIA H200" in text and "0.18.1" in text
    assert "3 [" in text  # the mean of (1.0, 4) with its interval
    md = md_path.read_text()
    assert md.count("![quality") == 3 and (tmp_path / "report_files" / "plot_2.png").exists()
    assert "## Setup" in md and "Difference to the reference condition" in md


def test_rating_store_and_bradley_terry(tmp_path):
    make_sweep(tmp_path)
    session = rate.RatingSession(tmp_path, rng=random.Random(0))
    assert len(session.pairs) == 3 * 6  # 4 conditions -> 6 pairs per seed
    cast = 0
    while True:
        pair = session.next_pair("ann")
        if pair["done"]:
            break
        left, right = session.pending[pair["token"]]
        # ann prefers the larger metric value
        outcome = "left" if left["quality"] > right["quality"] else "right" if right["quality"] > left["quality"] else "tie"
        session.vote("ann", pair["token"], outcome)
        cast += 1
    assert cast == 18 and session.next_pair("ann")["done"]
    assert not session.next_pair("bob")["done"]  # another rater starts fresh
    with pytest.raises(ValueError, match="unknown or already used"):
        session.vote("ann", pair.get("token", "x"), "left")
    sweep = report.load_sweep(tmp_path)
    ranking = sorted(sweep.preference, key=lambda c: sweep.preference[c]["score"])
    assert ranking[-1] == "shift=1.0, steps=4"  # mean 3.0 wins most pairs
    assert sum(p["votes"] for p in sweep.preference.values()) == 2 * 18
    assert "Human preference" in report.render_html(sweep, report.build(sweep))
