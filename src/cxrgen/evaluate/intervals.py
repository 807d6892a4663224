"""Confidence intervals for the figures a user reads, each with its method named where it is reported.

- `jackknife`: two-sample statistics on feature sets (FID, KID, PRDC). Each set is cut into groups and the
  statistic recomputed with one group left out (no image is ever repeated, so KID stays unbiased and FID is not
  inflated). It gives the standard error and a first-order bias correction (Quenouille): FID's finite-sample bias
  shrinks as 1/n (Chong & Forsyth 2020 extrapolate it away as FID-infinity), which the jackknife removes.
- `bootstrap_mean`: a mean over independent units (pairs of images, groups of a prompt), percentile interval.
- `delong`: AUROC's standard error in closed form (DeLong et al. 1988), normal interval clipped to [0, 1].
- `wilson`: a binomial rate.
- `clustered_rate`: a rate pooled over training seeds, bootstrapped over seeds and then images within a seed, so
  that seed-to-seed variation widens the interval as it should.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

LEVEL = 0.95


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2))


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (good near 0 and 1, where the normal interval is not)."""
    if n == 0:
        return float("nan"), float("nan")
    z, p = _z(level), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_mean(values: Sequence[float], rounds: int = 1000, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """The mean of independent values with a percentile bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"value": float(x.mean()), "n": len(x)}
    if len(x) < 2 or rounds <= 0:
        return out
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (rounds, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {**out, "low": float(lo), "high": float(hi), "method": f"bootstrap over {len(x)} units, {rounds} rounds"}


def clustered_rate(
    outcomes: Sequence[Sequence[bool]], rounds: int = 2000, seed: int = 0, level: float = LEVEL
) -> dict[str, Any]:
    """A success rate pooled over clusters (e.g. training seeds), with a two-level percentile bootstrap: clusters
    are resampled, then outcomes within each drawn cluster."""
    groups = [np.asarray(g, dtype=np.float64) for g in outcomes]
    pooled = np.concatenate(groups)
    rng = np.random.default_rng(seed)
    draws = np.empty(rounds)
    for r in range(rounds):
        picked = rng.integers(0, len(groups), len(groups))
        total = count = 0.0
        for k in picked:
            g = groups[k]
            total += g[rng.integers(0, len(g), len(g))].sum()
            count += len(g)
        draws[r] = total / count
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return {"value": float(pooled.mean()), "low": float(lo), "high": float(hi), "n": len(pooled)}


def delong(labels: np.ndarray, scores: np.ndarray, level: float = LEVEL) -> dict[str, Any] | None:
    """AUROC with DeLong's standard error and a normal interval; None without both classes."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.asarray(scores, dtype=np.float64)[labels], np.asarray(scores, dtype=np.float64)[~labels]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return None
    # placement values from midranks: v10[i] = share of negatives below positive i (ties count half)
    all_ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - rankdata(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = _z(level) * float(np.sqrt(var))
    return {
        "value": auc,
        "low": max(0.0, auc - half),
        "high": min(1.0, auc + half),
        "se": float(np.sqrt(var)),
        "positives": m,
        "negatives": n,
    }


def jackknife(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_a: int,
    n_b: int,
    groups: int = 20,
    seed: int = 0,
    level: float = LEVEL,
    bias_correct: bool = False,
) -> dict[str, Any]:
    """Delete-a-group jackknife of a statistic of two sets, given as `statistic(index_a, index_b)` over the
    sets' row indices. Each set is shuffled into `groups` groups; each group is left out once. The interval is
    value ± t * SE with the degrees of freedom of the smaller number of groups; with `bias_correct`, the value is
    the bias-corrected one and the interval is around it (the uncorrected value is kept as "plain")."""
    rng = np.random.default_rng(seed)
    idx_a, idx_b = np.arange(n_a), np.arange(n_b)
    value = float(statistic(idx_a, idx_b))
    g_a, g_b = min(groups, n_a), min(groups, n_b)
    if min(g_a, g_b) < 2:
        return {"value": value}
    parts_a = np.array_split(rng.permutation(n_a), g_a)
    parts_b = np.array_split(rng.permutation(n_b), g_b)
    left_a = np.array([statistic(np.setdiff1d(idx_a, p, assume_unique=True), idx_b) for p in parts_a])
    left_b = np.array([statistic(idx_a, np.setdiff1d(idx_b, p, assume_unique=True)) for p in parts_b])
    var = (g_a - 1) / g_a * ((left_a - left_a.mean()) ** 2).sum() + (g_b - 1) / g_b * (
        (left_b - left_b.mean()) ** 2
    ).sum()
    bias = (g_a - 1) * (left_a.mean() - value) + (g_b - 1) * (left_b.mean() - value)
    centre = value - bias if bias_correct else value
    half = float(student_t.ppf(0.5 + level / 2, min(g_a, g_b) - 1)) * float(np.sqrt(var))
    out = {
        "value": float(centre),
        "low": float(centre - half),
        "high": float(centre + half),
        "se": float(np.sqrt(var)),
        "bias": float(bias),
        "method": f"delete-a-group jackknife, {g_a} + {g_b} groups",
    }
    if bias_correct:
        out["plain"] = value
    return out
