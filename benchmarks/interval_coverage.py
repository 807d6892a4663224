"""Do the fidelity intervals mean what they say? Their coverage on Gaussian feature sets, where FID and KID are
known in closed form.

Each repetition draws two Gaussian sets of n points in d dimensions (means apart, covariances unequal), computes
the 95% intervals, and records whether each covers the truth: the population FID (closed form, Frechet distance
of the two Gaussians), FID's expectation at this n (the mean over the repetitions: what a plain FID interval can
aim at), and the population KID (closed form, from the Gaussians' moments). A 95% interval should cover its
target in about 95% of repetitions (200 repetitions: 92-98% is within two standard errors).

"before": the code before issue 15 (both sets resampled with replacement, 20 rounds, the percentile interval
shifted by the median bias; KID from subsets). "after": cxrgen.evaluate.fidelity as it is now (delete-a-group
jackknife: FID at n, FID bias-corrected, KID over all pairs).
`--speed N`: instead, the time of the statistics alone (before and after) on two sets of N Inception-sized
(2,048-d) features, which is all of `cxrgen evaluate` that this change touches.
Run: .venv/bin/python benchmarks/interval_coverage.py [--repetitions 200] [--speed 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cxrgen.evaluate.fidelity import fid, fid_with_intervals, frechet, gaussian_kid, kid_with_interval


def before_kid(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> float:
    """KID as it was: the mean unbiased MMD^2 over subsets of min(subset_size, n) images."""
    rng = np.random.default_rng(seed)
    m, d, values = min(subset_size, len(a), len(b)), a.shape[1], []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values))


def before_bootstrap(metric, a, b, rounds=20, seed=0, value=None, floor=None):  # noqa: ANN001, ANN201
    """The interval as it was: both sets resampled with replacement, percentile interval shifted by the draws'
    median minus the value."""
    value = metric(a, b) if value is None else value
    rng = np.random.default_rng(seed)
    draws = [metric(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(rounds)]
    bias = float(np.median(draws)) - value
    lo, hi = np.percentile(draws, [2.5, 97.5]) - bias
    if floor is not None:
        lo, hi = max(lo, floor), max(hi, floor)
    return {"value": value, "low": float(lo), "high": float(hi)}


def setting(d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two Gaussians: means 0.25 apart per coordinate, covariances with unequal, correlated spectra."""
    rng = np.random.default_rng(seed)
    q_a, _ = np.linalg.qr(rng.normal(size=(d, d)))
    q_b, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov_a = (q_a * np.linspace(0.5, 1.5, d)) @ q_a.T
    cov_b = (q_b * np.linspace(0.3, 2.0, d)) @ q_b.T
    return np.zeros(d), cov_a, np.full(d, 0.25), cov_b


def covered(interval: dict, target: float) -> bool:
    return interval["low"] <= target <= interval["high"]


def experiment(n: int, d: int, repetitions: int, groups: int) -> dict[str, float]:
    mu_a, cov_a, mu_b, cov_b = setting(d)
    true_fid, true_kid = frechet(mu_a, cov_a, mu_b, cov_b), gaussian_kid(mu_a, cov_a, mu_b, cov_b)
    rng = np.random.default_rng(1)
    records = []
    for r in range(repetitions):
        a = rng.multivariate_normal(mu_a, cov_a, n)
        b = rng.multivariate_normal(mu_b, cov_b, n)
        plain, corrected = fid_with_intervals(a, b, groups, seed=r)
        kid_after = kid_with_interval(a, b, groups, seed=r)
        fid_before = before_bootstrap(fid, a, b, seed=r, floor=0.0)
        kid_value = before_kid(a, b, 50, 1000, r)
        kid_before = before_bootstrap(lambda x, y, r=r: before_kid(x, y, 10, 1000, r), a, b, seed=r, value=kid_value)
        records.append((plain, corrected, kid_after, fid_before, kid_before))
    expected_fid = float(np.mean([p["value"] for p, *_ in records]))
    share = lambda k, target: float(np.mean([covered(rec[k], target) for rec in records]))  # noqa: E731
    return {
        "true FID": true_fid,
        "mean FID at n": expected_fid,
        "mean bias-corrected FID": float(np.mean([c["value"] for _, c, *_ in records])),
        "true KID": true_kid,
        "mean KID": float(np.mean([k["value"] for _, _, k, *_ in records])),
        "before: FID interval covers true FID": share(3, true_fid),
        "before: FID interval covers mean FID at n": share(3, expected_fid),
        "before: KID interval covers true KID": share(4, true_kid),
        "after: FID-at-n interval covers mean FID at n": share(0, expected_fid),
        "after: FID-at-n interval covers true FID": share(0, true_fid),
        "after: bias-corrected FID interval covers true FID": share(1, true_fid),
        "after: KID interval covers true KID": share(2, true_kid),
    }


def speed(n: int) -> None:
    """Seconds for the fidelity statistics of two n x 2048 feature sets, before and after (one run each)."""
    from cxrgen.evaluate.fidelity import FidelityOptions, distances, prdc

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, 2048)).astype(np.float32), rng.normal(0.05, 1.1, size=(n, 2048)).astype(np.float32)
    t = time.perf_counter()
    before_bootstrap(fid, a, b, floor=0.0)
    kid_value = before_kid(a, b, 50, 1000, 0)
    before_bootstrap(lambda x, y: before_kid(x, y, 10, 1000, 0), a, b, value=kid_value)
    prdc(a, b)
    before = time.perf_counter() - t
    t = time.perf_counter()
    distances(a, b, FidelityOptions(), seed=0)
    after = time.perf_counter() - t
    print(
        f"{n} x 2048 features a set: before (bootstrap, 20 rounds; KID subsets) {before:.1f} s, "
        f"after (jackknife, 20 + 20 groups; KID over all pairs; PRDC intervals) {after:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--groups", type=int, default=20, help="jackknife groups per set (cxrgen's default)")
    parser.add_argument("--sizes", nargs="+", default=["100x8", "200x32", "500x128"], help="n x d settings")
    parser.add_argument("--speed", type=int, help="time the statistics on N x 2048 features instead")
    args = parser.parse_args()
    if args.speed:
        speed(args.speed)
        return
    for size in args.sizes:
        n, d = map(int, size.split("x"))
        t = time.perf_counter()
        result = experiment(n, d, args.repetitions, args.groups)
        print(
            f"\n{n} points a set, {d} dimensions, {args.repetitions} repetitions ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        for key, value in result.items():
            print(f"  {key:52s} {value:.1%}" if key.startswith(("before", "after")) else f"  {key:52s} {value:.5g}")


if __name__ == "__main__":
    main()
