"""Statistics for sweeps: bootstrap intervals over seeds, paired differences, Bradley-Terry scores.

- Interval of a mean: percentile bootstrap (scipy.stats.bootstrap), 95% by default, resampling seeds.
- Paired difference: for every seed present in both conditions, metric(condition) - metric(reference);
  its mean and the bootstrap interval of that mean (pairing removes the seed-to-seed variation).
- Bradley-Terry (Bradley & Terry 1952): P(i beats j) = p_i / (p_i + p_j), fitted by Hunter's (2004)
  MM iteration p_i <- W_i / sum_j n_ij / (p_i + p_j); a tie counts half a win to each side. Scores are
  log-strengths centred to mean 0 (a difference of ln 3 = 1.10 means 3:1 odds); intervals by
  resampling the votes. scipy has no Bradley-Terry fit, hence the few lines here.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10000


def mean_interval(values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap interval of the mean; (mean, nan, nan) under 2 values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    if np.all(x == x[0]):
        return mean, mean, mean
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_differences(values: dict, reference: dict) -> list[float]:
    """metric(condition) - metric(reference) for each seed in both dicts (seed -> value), sorted by seed."""
    seeds = sorted(s for s in values if s in reference and values[s] is not None and reference[s] is not None)
    return [values[s] - reference[s] for s in seeds]


def paired_interval(values: dict, reference: dict, **kwargs) -> tuple[float, float, float, int]:
    """(mean difference, low, high, pairs) of a condition against the reference, paired by seed."""
    diffs = paired_differences(values, reference)
    return (*mean_interval(diffs, **kwargs), len(diffs))


# ----- Bradley-Terry -----

def win_matrix(votes, conditions: list[str]) -> np.ndarray:
    """wins[i, j] = times i beat j (+0.5 each for a tie). votes: (left, right, outcome) with
    outcome 'left' / 'right' / 'tie' (anything else, e.g. 'skip', is ignored)."""
    index = {c: k for k, c in enumerate(conditions)}
    wins = np.zeros((len(conditions), len(conditions)))
    for left, right, outcome in votes:
        i, j = index[left], index[right]
        if outcome == "left":
            wins[i, j] += 1
        elif outcome == "right":
            wins[j, i] += 1
        elif outcome == "tie":
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    return wins


def fit_bradley_terry(wins: np.ndarray, iterations: int = 1000, tol: float = 1e-10,
                      prior: float = 0.0) -> np.ndarray:
    """Centred log-strengths from a win matrix by MM; ``prior`` adds that many half-wins between every
    pair (keeps a condition that never won finite)."""
    n = wins.shape[0]
    w = wins + prior * (1 - np.eye(n)) / 2
    games = w + w.T
    total = w.sum(axis=1)
    p = np.ones(n)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total / np.where(denom > 0, denom, 1), p)
        new = np.maximum(new, 1e-300)
        new /= math.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    scores = np.log(p)
    return scores - scores.mean()


def bradley_terry(votes, conditions: list[str] | None = None, confidence: float = CONFIDENCE,
                  resamples: int = 1000, seed: int = 0, prior: float = 1.0) -> dict[str, dict]:
    """{condition: {score, low, high, wins, losses, ties, votes}}; intervals from resampled votes."""
    votes = [v for v in votes if v[2] in ("left", "right", "tie")]
    if conditions is None:
        conditions = sorted({c for v in votes for c in v[:2]})
    scores = fit_bradley_terry(win_matrix(votes, conditions), prior=prior)
    rng = np.random.default_rng(seed)
    samples = []
    if votes:
        for _ in range(resamples):
            pick = rng.integers(0, len(votes), len(votes))
            samples.append(fit_bradley_terry(win_matrix([votes[k] for k in pick], conditions), prior=prior,
                                             iterations=200, tol=1e-8))
    samples = np.array(samples) if samples else np.full((1, len(conditions)), math.nan)
    lo, hi = np.percentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    tally = defaultdict(lambda: {"wins": 0, "losses": 0, "ties": 0})
    for left, right, outcome in votes:
        if outcome == "tie":
            tally[left]["ties"] += 1
            tally[right]["ties"] += 1
        else:
            winner, loser = (left, right) if outcome == "left" else (right, left)
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
    return {c: {"score": float(scores[k]), "low": float(lo[k]), "high": float(hi[k]), **tally[c],
                "votes": sum(tally[c].values())} for k, c in enumerate(conditions)}
