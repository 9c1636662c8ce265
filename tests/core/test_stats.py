"""Bootstrap intervals, paired differences and Bradley-Terry against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core import stats


def exact_bootstrap_quantiles(values, confidence=0.95):
    """Quantiles of the exact bootstrap distribution of the mean (every resample enumerated)."""
    means = sorted(np.mean(r) for r in itertools.product(values, repeat=len(values)))
    n = len(means)
    lo = means[math.ceil(n * (1 - confidence) / 2) - 1]
    hi = means[math.ceil(n * (1 + confidence) / 2) - 1]
    return lo, hi


def test_two_values_interval_is_the_two_values():
    # resample means: 1 (1/4), 2 (1/2), 3 (1/4): the 2.5% and 97.5% points are 1 and 3
    assert stats.mean_interval([1.0, 3.0]) == (2.0, 1.0, 3.0)


def test_interval_matches_exact_bootstrap_distribution():
    values = [0.0, 1.0, 2.0, 10.0, 4.0]
    mean, lo, hi = stats.mean_interval(values, resamples=20000)
    assert mean == pytest.approx(3.4)
    elo, ehi = exact_bootstrap_quantiles(values)
    assert lo == pytest.approx(elo, abs=0.21) and hi == pytest.approx(ehi, abs=0.21)  # atoms are 0.2 apart


def test_degenerate_inputs():
    assert stats.mean_interval([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)
    mean, lo, hi = stats.mean_interval([2.0])
    assert mean == 2.0 and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(stats.mean_interval([None, float("nan")])[0])


def test_paired_difference_by_seed():
    condition = {1: 3.0, 2: 5.0, 3: 4.0}
    reference = {1: 1.0, 2: 4.0, 3: 4.0, 4: 9.0}  # seed 4 has no partner
    assert stats.paired_differences(condition, reference) == [2.0, 1.0, 0.0]
    mean, lo, hi, pairs = stats.paired_interval(condition, reference, resamples=20000)
    assert (mean, pairs) == (1.0, 3)
    elo, ehi = exact_bootstrap_quantiles([2.0, 1.0, 0.0])
    assert (lo, hi) == (pytest.approx(elo), pytest.approx(ehi))


def test_bradley_terry_two_players_closed_form():
    votes = [("a", "b", "left")] * 3 + [("b", "a", "left")]
    scores = stats.fit_bradley_terry(stats.win_matrix(votes, ["a", "b"]))
    # p_a / (p_a + p_b) = 3/4  =>  log p_a - log p_b = ln 3, centred
    assert scores == pytest.approx([math.log(3) / 2, -math.log(3) / 2])


def test_bradley_terry_tie_is_half_a_win():
    votes = [("a", "b", "left"), ("a", "b", "tie")]  # a: 1.5 wins, b: 0.5
    scores = stats.fit_bradley_terry(stats.win_matrix(votes, ["a", "b"]))
    assert scores[0] - scores[1] == pytest.approx(math.log(3))


def test_bradley_terry_recovers_a_known_ranking():
    truth = {"w": 0.0, "x": 0.5, "y": 1.0, "z": 2.0}
    names = list(truth)
    rng = np.random.default_rng(1)
    votes = []
    for _ in range(3000):
        i, j = rng.choice(4, 2, replace=False)
        a, b = names[i], names[j]
        p = 1 / (1 + math.exp(truth[b] - truth[a]))
        r = rng.random()
        votes.append((a, b, "tie" if r > 0.95 else ("left" if r < p * 0.95 else "right")))
    votes.append(("w", "x", "skip"))
    result = stats.bradley_terry(votes, resamples=200, prior=0.0)
    centred = {k: v - np.mean(list(truth.values())) for k, v in truth.items()}
    assert sorted(result, key=lambda c: result[c]["score"]) == names
    for name in names:
        assert result[name]["score"] == pytest.approx(centred[name], abs=0.15)
        assert result[name]["low"] <= centred[name] + 0.05 and centred[name] - 0.05 <= result[name]["high"]
    assert sum(r["votes"] for r in result.values()) == 2 * 3000  # the skip is not counted


def test_bradley_terry_prior_keeps_a_loser_finite():
    result = stats.bradley_terry([("a", "b", "left")] * 4, resamples=50)
    assert math.isfinite(result["b"]["score"]) and result["a"]["score"] > result["b"]["score"]
    assert (result["a"]["wins"], result["b"]["losses"]) == (4, 4)
