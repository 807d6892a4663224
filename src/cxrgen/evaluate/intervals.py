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
from tqdm import tqdm

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


def bootstrap_mean(
    values: Sequence[float],
    rounds: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
    clusters: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The mean of values with a percentile bootstrap interval: over the values when they are independent, or
    over `clusters` (a cluster id per value; values in one cluster share something, e.g. pairs of one prompt's
    images) when they are not, each draw then being the pooled mean of the drawn clusters."""
    x = np.asarray(values, dtype=np.float64)
    ids = np.arange(len(x)) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    sums, counts = np.bincount(ids, x), np.bincount(ids).astype(np.float64)
    out: dict[str, Any] = {"value": float(x.mean()) if len(x) else float("nan"), "n": len(sums)}
    if len(sums) < 2 or rounds <= 0:
        return out
    drawn = np.random.default_rng(seed).integers(0, len(sums), (rounds, len(sums)))
    means = sums[drawn].sum(1) / counts[drawn].sum(1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    unit = "values" if clusters is None else "clusters"
    return {**out, "low": float(lo), "high": float(hi), "method": f"bootstrap over {len(sums)} {unit}, {rounds} rounds"}


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
    # never narrower than the pooled count's own binomial interval (all successes would give [1, 1])
    w_lo, w_hi = wilson(int(pooled.sum()), len(pooled), level)
    return {"value": float(pooled.mean()), "low": float(min(lo, w_lo)), "high": float(max(hi, w_hi)), "n": len(pooled)}


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


def groups_of(n: int, groups: int, seed: int) -> list[np.ndarray]:
    """Row indices 0..n-1 shuffled into `groups` groups of near-equal size (one group per row at most)."""
    return np.array_split(np.random.default_rng(seed).permutation(n), min(groups, n))


def jackknife_summary(
    value: float,
    left_a: np.ndarray,
    left_b: np.ndarray,
    level: float = LEVEL,
    bias_correct: bool = False,
) -> dict[str, Any]:
    """Combine a two-sample statistic's value on the full sets with its values with one group of set a
    (`left_a`, one per group) or of set b (`left_b`) left out: the delete-a-group jackknife's standard error,
    first-order bias (what the leave-outs' drift from the value says a smaller sample adds), and a t interval
    (degrees of freedom: the smaller number of groups, less one). With `bias_correct`, the value and interval
    are the bias-corrected ones and the plain value is kept as "plain"."""
    g_a, g_b = len(left_a), len(left_b)
    if min(g_a, g_b) < 2:
        return {"value": float(value)}
    var = (g_a - 1) / g_a * float(((left_a - left_a.mean()) ** 2).sum())
    var += (g_b - 1) / g_b * float(((left_b - left_b.mean()) ** 2).sum())
    bias = (g_a - 1) * (left_a.mean() - value) + (g_b - 1) * (left_b.mean() - value)
    centre = value - bias if bias_correct else value
    half = float(student_t.ppf(0.5 + level / 2, min(g_a, g_b) - 1)) * np.sqrt(var)
    out = {
        "value": float(centre),
        "low": float(centre - half),
        "high": float(centre + half),
        "se": float(np.sqrt(var)),
        "bias": float(bias),
        "method": f"delete-a-group jackknife, {g_a} + {g_b} groups",
    }
    return {**out, "plain": float(value)} if bias_correct else out


def jackknife(
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    n_a: int,
    n_b: int,
    groups: int = 20,
    seed: int = 0,
    level: float = LEVEL,
    desc: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Delete-a-group jackknife of statistics of two sets, given as `statistic(rows_a, rows_b)` -> {name: value}
    over the sets' row indices; each set is cut into `groups` groups (`groups_of`), each left out once. No
    bias correction: for statistics whose small-sample bias is small or not of order 1/n (PRDC). `desc`: a
    progress bar over the leave-outs."""
    full_a, full_b = np.arange(n_a), np.arange(n_b)
    values = statistic(full_a, full_b)
    if groups < 2:
        return {k: {"value": float(v)} for k, v in values.items()}
    groups_a, groups_b = groups_of(n_a, groups, seed), groups_of(n_b, groups, seed + 1)
    kept = [(np.setdiff1d(full_a, g, assume_unique=True), full_b) for g in groups_a]
    kept += [(full_a, np.setdiff1d(full_b, g, assume_unique=True)) for g in groups_b]
    left = [statistic(a, b) for a, b in tqdm(kept, desc=desc, unit="group", dynamic_ncols=True, disable=not desc)]
    left_a, left_b = left[: len(groups_a)], left[len(groups_a) :]
    return {
        k: jackknife_summary(v, np.array([d[k] for d in left_a]), np.array([d[k] for d in left_b]), level)
        for k, v in values.items()
    }
