"""Intervals against known sampling distributions: each 95% interval must cover its known truth in about 95% of
repeated draws, and each check is shown to reject a deliberately broken interval (so that it can fail)."""

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from cxrgen.evaluate import fidelity
from cxrgen.evaluate.intervals import bootstrap_mean, clustered_rate, delong, jackknife, wilson

REPETITIONS = 200


def acceptable(share: float) -> bool:
    """A 95% interval's coverage over 200 repetitions: 0.90-0.99 allows three standard errors either way."""
    return 0.90 <= share <= 0.99


def covers(interval: dict, truth: float) -> bool:
    return interval["low"] <= truth <= interval["high"]


def gaussians(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q_a, _ = np.linalg.qr(rng.normal(size=(d, d)))
    q_b, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov_a, cov_b = (q_a * np.linspace(0.5, 1.5, d)) @ q_a.T, (q_b * np.linspace(0.3, 2.0, d)) @ q_b.T
    return np.zeros(d), cov_a, np.full(d, 0.25), cov_b


def draws(n: int, d: int, seed: int = 1):
    mu_a, cov_a, mu_b, cov_b = gaussians(d)
    rng = np.random.default_rng(seed)
    for _ in range(REPETITIONS):
        yield rng.multivariate_normal(mu_a, cov_a, n), rng.multivariate_normal(mu_b, cov_b, n)


def old_bootstrap(metric, a, b, rounds=20, seed=0):
    """The interval before issue 15 (a test double of a broken method): both sets resampled with replacement and
    the percentile interval shifted by the draws' median bias, so it always contains the value."""
    value = metric(a, b)
    rng = np.random.default_rng(seed)
    drawn = [metric(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(rounds)]
    lo, hi = np.percentile(drawn, [2.5, 97.5]) - (np.median(drawn) - value)
    return {"value": value, "low": max(lo, 0.0), "high": max(hi, 0.0)}


def halved(figure: dict) -> dict:
    """A test double of an interval too narrow: half as wide around the same value."""
    return {k: figure["value"] + (figure[k] - figure["value"]) / 2 for k in ("low", "high")}


def test_bias_corrected_fid_interval_covers_the_true_fid():
    truth = fidelity.frechet(*gaussians(8))
    corrected, plain, old = [], [], []
    for r, (a, b) in enumerate(draws(100, 8)):
        at_n, bias_corrected = fidelity.fid_with_intervals(a, b, groups=10, seed=r)
        corrected.append(covers(bias_corrected, truth))
        plain.append(covers(at_n, truth))
        if r < 60:  # the double is slow; 60 draws show it plainly
            old.append(covers(old_bootstrap(fidelity.fid, a, b, seed=r), truth))
    assert acceptable(np.mean(corrected)), np.mean(corrected)
    # FID at n is biased upward: its interval is for FID at this size, not for the truth; the old one neither
    assert not acceptable(np.mean(plain)) and not acceptable(np.mean(old)), (np.mean(plain), np.mean(old))


def test_fid_at_n_interval_covers_fid_at_that_size():
    pairs = list(draws(60, 4, seed=2))
    figures = [fidelity.fid_with_intervals(a, b, groups=10, seed=r)[0] for r, (a, b) in enumerate(pairs)]
    expected = np.mean([f["value"] for f in figures])  # FID's expectation at n = 60
    assert acceptable(np.mean([covers(f, expected) for f in figures]))
    assert not acceptable(np.mean([covers(halved(f), expected) for f in figures]))


def test_kid_is_unbiased_and_its_interval_covers_the_true_kid():
    truth = fidelity.gaussian_kid(*gaussians(8))
    figures = [fidelity.kid_with_interval(a, b, groups=20, seed=r) for r, (a, b) in enumerate(draws(100, 8, seed=3))]
    values = np.array([f["value"] for f in figures])
    assert abs(values.mean() - truth) < 3 * values.std() / np.sqrt(len(values))  # unbiased at n = 100
    assert acceptable(np.mean([covers(f, truth) for f in figures]))
    assert not acceptable(np.mean([covers(halved(f), truth) for f in figures]))


def test_gaussian_kid_matches_a_large_sample():
    mu_a, cov_a, mu_b, cov_b = gaussians(3)
    rng = np.random.default_rng(4)
    a, b = rng.multivariate_normal(mu_a, cov_a, 2000), rng.multivariate_normal(mu_b, cov_b, 2000)
    estimate = fidelity.kid_with_interval(a, b, groups=10, seed=0)
    assert covers(estimate, fidelity.gaussian_kid(mu_a, cov_a, mu_b, cov_b))
    assert fidelity.kid(a, a[::-1]) == pytest.approx(fidelity.kid(a, a), abs=1e-12)


def test_fid_leave_outs_match_recomputation():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(80, 6)), rng.normal(size=(70, 6)) * 1.3 + 0.2
    frechet_ = fidelity._FrechetByGroups(a, b)
    rows = np.arange(5, 15)
    assert frechet_() == pytest.approx(fidelity.fid(a, b), rel=1e-9)
    assert frechet_(left_out_a=rows) == pytest.approx(fidelity.fid(np.delete(a, rows, 0), b), rel=1e-9)
    assert frechet_(left_out_b=rows) == pytest.approx(fidelity.fid(a, np.delete(b, rows, 0)), rel=1e-9)


def test_kid_equals_the_unbiased_mmd_over_all_pairs():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(25, 5)) + 0.3
    kxx, kyy, kxy = ((p @ q.T / 5 + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    by_hand = (kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (25 * 24) - 2 * kxy.mean()
    assert fidelity.kid(x, y) == pytest.approx(by_hand, rel=1e-10)


def test_jackknife_standard_error_of_a_mean_difference():
    """For a linear statistic the jackknife's standard error is the textbook one."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=400), rng.normal(size=300) * 2

    def difference(rows_a, rows_b):
        return {"d": a[rows_a].mean() - b[rows_b].mean()}

    figure = jackknife(difference, len(a), len(b), groups=20)["d"]
    textbook = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert figure["se"] == pytest.approx(textbook, rel=0.2)
    assert figure["value"] == pytest.approx(a.mean() - b.mean())


def test_prdc_intervals_cover_the_expected_density():
    """E[density] = 1 when both sets come from one distribution (Naeem et al. 2020)."""
    rng = np.random.default_rng(8)
    settings = fidelity.FidelityOptions(groups=10)
    shares = []
    for _ in range(40):
        result = fidelity.distances(rng.normal(size=(150, 4)), rng.normal(size=(150, 4)), settings, seed=0)
        shares.append(covers(result["prdc"]["density"], 1.0))
    assert np.mean(shares) >= 0.85, np.mean(shares)  # 40 draws: a looser band


def test_delong_interval_covers_the_binormal_auroc():
    truth = float(norm.cdf(1.0 / np.sqrt(2)))  # positives N(1, 1), negatives N(0, 1)
    rng = np.random.default_rng(9)
    figures = []
    for _ in range(REPETITIONS):
        scores = np.concatenate([rng.normal(1, 1, 40), rng.normal(0, 1, 60)])
        figures.append(delong(np.r_[np.ones(40), np.zeros(60)], scores))
    assert acceptable(np.mean([covers(f, truth) for f in figures]))
    narrow = [{"low": f["value"] - f["se"], "high": f["value"] + f["se"]} for f in figures]  # 68% interval
    assert not acceptable(np.mean([covers(f, truth) for f in narrow]))
    assert delong(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_delong_standard_error_matches_the_bootstrap():
    rng = np.random.default_rng(10)
    labels = np.r_[np.ones(50), np.zeros(80)].astype(bool)
    scores = np.where(labels, rng.normal(0.8, 1, 130), rng.normal(0, 1, 130))
    figure = delong(labels, scores)
    rounds = [
        delong(labels[i], scores[i])["value"]
        for i in (np.r_[rng.choice(50, 50), 50 + rng.choice(80, 80)] for _ in range(600))
    ]
    assert figure["se"] == pytest.approx(np.std(rounds), rel=0.15)


def test_wilson_matches_scipy():
    for k, n in ((0, 10), (7, 10), (160, 160), (150, 320)):
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_clustered_intervals_widen_with_cluster_to_cluster_variation():
    rng = np.random.default_rng(11)
    # 8 clusters of 50 values, cluster means spread widely: pooled-as-independent intervals are too narrow
    truth, naive, clustered = 0.0, [], []
    for _ in range(100):
        centres = rng.normal(0, 1, 8)
        values = np.concatenate([c + rng.normal(0, 0.2, 50) for c in centres])
        ids = np.repeat(np.arange(8), 50)
        naive.append(covers(bootstrap_mean(values, rounds=400), truth))
        clustered.append(covers(bootstrap_mean(values, rounds=400, clusters=ids), truth))
    assert np.mean(clustered) >= 0.8 and np.mean(naive) < 0.5, (np.mean(clustered), np.mean(naive))
    steady = clustered_rate([[True] * 95 + [False] * 5] * 3, rounds=500)
    split = clustered_rate([[True] * 100, [True] * 100, [True] * 70 + [False] * 30], rounds=500)
    assert steady["low"] > 0.9 and split["low"] < 0.8 and split["value"] == pytest.approx(0.9)
    perfect = clustered_rate([[True] * 320] * 3, rounds=200)
    assert perfect["low"] == pytest.approx(wilson(960, 960)[0]) and perfect["low"] < 1.0  # not [1, 1]
