"""Distances between feature sets: FID, KID (unbiased), precision/recall/density/coverage, bootstrap intervals.

Formulas: FID (Heusel et al. 2017) = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2); KID (Binkowski et al.
2018) = unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets; PRDC (Naeem et al. 2020) with k
nearest neighbours in the real set.

The `fidelity` metric reports them for the real and generated sets in each extractor's features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import option
from ..contracts import MetricsDocument
from .html import escape, figure, table, with_interval
from .metric import METRICS, EvaluationContext, Metric

log = logging.getLogger(__name__)
STABLE_FID_IMAGES = 2000  # below this, FID moves with the sample: say so, with its interval


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return frechet(mu_a, cov_a, mu_b, cov_b)


def frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) as the sum of square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so
    stable where sqrtm of the product is not)."""
    vals, vecs = np.linalg.eigh(np.atleast_2d(cov_a))  # numpy's driver is ~4x faster than scipy's default here
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = np.linalg.eigvalsh(root_a @ np.atleast_2d(cov_b) @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    value = float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(np.atleast_2d(cov_a)) + np.trace(np.atleast_2d(cov_b)) - 2 * trace_root
    )
    return max(value, 0.0)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Mean unbiased MMD^2 over random subsets (the estimate for each subset is unbiased)."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        values.append(_mmd2_unbiased(x, y))
    return float(np.mean(values))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m = len(x)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    )


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020). With fewer than k + 1 images in a set, k
    shrinks to fit (and is reported)."""
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        return {
            "precision": float("nan"),
            "recall": float("nan"),
            "density": float("nan"),
            "coverage": float("nan"),
            "k": k,
        }
    real = real.astype(np.float64)
    fake = fake.astype(np.float64)
    real_real = _sq_dists(real, real)
    fake_fake = _sq_dists(fake, fake)
    real_fake = _sq_dists(real, fake)
    real_radius = np.partition(real_real, k, axis=1)[:, k]  # k-th neighbour (index 0 is the point itself)
    fake_radius = np.partition(fake_fake, k, axis=1)[:, k]
    inside_real = real_fake < real_radius[:, None]  # fake j inside the ball of real i
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((real_fake < fake_radius[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((real_fake.min(axis=1) < real_radius).mean()),
        "k": k,
    }


def bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    rounds: int,
    seed: int = 0,
    level: float = 0.95,
    floor: float | None = None,
    value: float | None = None,
) -> dict[str, float]:
    """The metric on the full sets, with an interval from resampling both sets with replacement. Resamples repeat
    images, which inflates FID-like metrics (fewer distinct images), so the percentile interval is shifted by
    that bias, the draws' median minus the value, and centred where the value is. `value`: the figure to report
    and centre on when it is computed more precisely than each draw (KID with more subsets)."""
    value = metric(a, b) if value is None else value
    if rounds <= 0:
        return {"value": value}
    rng = np.random.default_rng(seed)
    draws = [metric(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(rounds)]
    bias = float(np.median(draws)) - value
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)]) - bias
    if floor is not None:  # e.g. FID, never negative
        lo, hi = max(lo, floor), max(hi, floor)
    return {"value": value, "low": float(lo), "high": float(hi), "rounds": rounds, "resampling_bias": bias}


@dataclass
class FidelityOptions:
    bootstrap: int = option(20, "bootstrap rounds for confidence intervals (0: none)")
    kid_subsets: int = option(50, "KID subsets")
    kid_subset_size: int = option(1000, "KID subset size")
    prdc_k: int = option(5, "neighbours for precision/recall/density/coverage")


def distances(real: np.ndarray, generated: np.ndarray, o: FidelityOptions, seed: int) -> dict[str, Any]:
    """FID and KID with intervals, and PRDC, between two feature sets; a warning when FID is unstable."""

    def kid_draw(a: np.ndarray, b: np.ndarray) -> float:
        # resamples use a fifth of the subsets: the interval needs spread, not precision
        return kid(a, b, max(5, o.kid_subsets // 5), o.kid_subset_size, seed)

    kid_value = kid(real, generated, o.kid_subsets, o.kid_subset_size, seed)
    result: dict[str, Any] = {
        "fid": bootstrap(fid, real, generated, o.bootstrap, seed, floor=0.0),
        "kid": bootstrap(kid_draw, real, generated, o.bootstrap, seed, value=kid_value),
        "prdc": prdc(real, generated, o.prdc_k),
    }
    n = min(len(real), len(generated))
    if n < STABLE_FID_IMAGES:
        f = result["fid"]
        interval = f" (95% interval {f['low']:.2f}-{f['high']:.2f})" if "low" in f else ""
        message = f"FID from {n} images per set is unstable{interval}; {STABLE_FID_IMAGES}+ per set is usual"
        log.warning(message)
        result["warning"] = message
    return result


@METRICS.register
class FidelityMetric(Metric):
    """How close the generated images lie to the real ones, per extractor."""

    name = "fidelity"
    title = "Fidelity"
    Options = FidelityOptions
    not_measured = "run cxrgen evaluate on --real and --generated images"

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        section = {}
        for ex in ctx.extractors:
            features = ctx.features[ex.name]
            section[ex.name] = distances(features["real"], features["generated"], ctx.options(self), ctx.config.seed)
            if ex.random:
                section[ex.name]["note"] = "random weights: a smoke test, not a measurement"
        return section

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        lines = []
        for name, f in section.items():
            fid_, kid_, p = f["fid"], f["kid"], f["prdc"]
            interval = f" [{fid_['low']:.2f}, {fid_['high']:.2f}]" if "low" in fid_ else ""
            lines.append(
                f"{name:12s} FID {fid_['value']:.3f}{interval}  KID {kid_['value']:.5f}  precision "
                f"{p['precision']:.3f} recall {p['recall']:.3f} density {p['density']:.3f} coverage {p['coverage']:.3f}"
            )
        return lines

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows, notes = [], []
        for name, f in section.items():
            p = f["prdc"]
            rows.append(
                [
                    name,
                    with_interval(f["fid"], 2),
                    with_interval(f["kid"], 5),
                    *(f"{p[key]:.3f}" for key in ("precision", "recall", "density", "coverage")),
                ]
            )
            notes += [f"{name}: {f[k]}" for k in ("note", "warning") if k in f]
        out = table(["extractor", "FID [95% interval]", "KID", "precision", "recall", "density", "coverage"], rows)
        out += "".join(f'<p class="note">{escape(n)}</p>' for n in notes)

        def bars(ax: Any) -> None:
            names = list(section)
            for i, key in enumerate(("precision", "recall", "density", "coverage")):
                ax.bar(np.arange(len(names)) + i * 0.2, [section[n]["prdc"][key] for n in names], 0.2, label=key)
            ax.set_xticks(np.arange(len(names)) + 0.3, names)
            ax.set_ylim(0, max(1.2, max(section[n]["prdc"]["density"] for n in names) * 1.1))
            ax.legend(ncol=4, fontsize=8)
            ax.set_title("precision, recall, density, coverage (k-NN, Naeem et al. 2020)")

        return out + figure(bars)
