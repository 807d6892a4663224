"""Distances between feature sets: FID, KID (unbiased), precision/recall/density/coverage, with 95% intervals.

Formulas: FID (Heusel et al. 2017) = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2); KID (Binkowski et al.
2018) = unbiased MMD^2 with the cubic polynomial kernel; PRDC (Naeem et al. 2020) with k nearest neighbours.
Intervals and FID's bias correction: the delete-a-group jackknife (intervals.py; METHOD below says it in words).

The `fidelity` metric reports them for the real and generated sets in each extractor's features, and, where both
sets are labelled, finding by finding (conditional_fidelity.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, option
from ..contracts import MetricsDocument
from . import conditional_fidelity
from .html import as_figure, escape, figure, table, with_interval
from .intervals import groups_of, jackknife, jackknife_summary
from .metric import METRICS, EvaluationContext, Metric

log = logging.getLogger(__name__)
STABLE_FID_IMAGES = 2000  # below this, FID moves with the sample: say so, with its interval


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return frechet(mu_a, cov_a, mu_b, cov_b)


def _psd_root(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)  # numpy's driver is ~4x faster than scipy's default here
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) as the sum of square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so
    stable where sqrtm of the product is not)."""
    root_a = _psd_root(np.atleast_2d(cov_a))
    middle = np.linalg.eigvalsh(root_a @ np.atleast_2d(cov_b) @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    value = float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(np.atleast_2d(cov_a)) + np.trace(np.atleast_2d(cov_b)) - 2 * trace_root
    )
    return max(value, 0.0)


class _Moments:
    """One feature set's mean and scatter, and what leaving a group of its rows out does to them (a downdate,
    not a recomputation), as seen through the other set's covariance root."""

    def __init__(self, x: np.ndarray, other_root: np.ndarray) -> None:
        self.mean = x.mean(0)
        self.z = x - self.mean  # centred once: the downdates subtract small sums, never large ones
        self.zr = self.z @ other_root
        self.scatter_trace = float((self.z * self.z).sum())
        self.scatter_seen = self.zr.T @ self.zr  # root_other Z'Z root_other

    def without(self, rows: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray]:
        """Mean, covariance trace, and root_other @ covariance @ root_other, with `rows` left out."""
        n = len(self.z)
        if rows is None or len(rows) == 0:
            return self.mean, self.scatter_trace / (n - 1), self.scatter_seen / (n - 1)
        kept = n - len(rows)
        shift = -self.z[rows].sum(0) / kept  # the kept rows' mean, in centred coordinates
        shift_seen = -self.zr[rows].sum(0) / kept
        zr = self.zr[rows]
        trace = (self.scatter_trace - float((self.z[rows] ** 2).sum()) - kept * float(shift @ shift)) / (kept - 1)
        seen = (self.scatter_seen - zr.T @ zr - kept * np.outer(shift_seen, shift_seen)) / (kept - 1)
        return self.mean + shift, trace, seen


class _FrechetByGroups:
    """FID of two sets with groups of rows left out, at the cost of one symmetric eigenvalue problem each:
    Tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of R_b S_a R_b (R_b = S_b^1/2), and of
    R_a S_b R_a; a group left out of a changes only S_a, so the other side's root is reused."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.astype(np.float64), b.astype(np.float64)
        root_a, root_b = _psd_root(np.cov(a, rowvar=False)), _psd_root(np.cov(b, rowvar=False))
        self.a, self.b = _Moments(a, root_b), _Moments(b, root_a)

    def __call__(self, left_out_a: np.ndarray | None = None, left_out_b: np.ndarray | None = None) -> float:
        mean_a, trace_a, seen_a = self.a.without(left_out_a)
        mean_b, trace_b, seen_b = self.b.without(left_out_b)
        seen = seen_b if left_out_a is None else seen_a  # at most one side loses rows
        trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(seen), 0, None)).sum()
        return max(float(((mean_a - mean_b) ** 2).sum() + trace_a + trace_b - 2 * trace_root), 0.0)


class _FrechetByGram:
    """The same as _FrechetByGroups for sets smaller than their feature dimension (a finding's images in
    2,048-dimensional features), in the smaller set's size rather than the features': with C = Z_a Z_b' (Z: the
    centred rows), the nonzero eigenvalues of S_a S_b are those of C'C / ((m - 1)(n - 1)), so Tr((S_a S_b)^1/2)
    is from one eigenvalue problem the size of the smaller set. Leaving rows out deletes them from C and shifts
    the rest by the left-out rows' sum; the Gram matrix G of C's columns (the smaller set's side) is updated for
    that in place of being recomputed."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.mean_a, self.mean_b = a.mean(0), b.mean(0)
        self.za, self.zb = a - self.mean_a, b - self.mean_b
        self.norms_a, self.norms_b = (self.za**2).sum(1), (self.zb**2).sum(1)
        self.swapped = len(a) < len(b)  # C's columns are the smaller set: b, or a when swapped
        self.cross = self.zb @ self.za.T if self.swapped else self.za @ self.zb.T
        self.gram = self.cross.T @ self.cross

    @staticmethod
    def _kept(n: int, rows: np.ndarray | None) -> np.ndarray:
        return np.arange(n) if rows is None else np.setdiff1d(np.arange(n), rows, assume_unique=True)

    @staticmethod
    def _moments(z: np.ndarray, norms: np.ndarray, kept: np.ndarray, rows: np.ndarray | None) -> tuple:
        """The kept rows' shift of the mean (centred coordinates) and covariance trace."""
        n = len(kept)
        shift = -z[rows].sum(0) / n if rows is not None and len(rows) else np.zeros(z.shape[1])
        return shift, (float(norms[kept].sum()) - n * float(shift @ shift)) / (n - 1)

    def _gram_without(self, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
        """C'C with rows and columns of C left out (C's rows and columns each sum to 0: the sets are centred)."""
        c, g = self.cross, self.gram
        if rows is not None and len(rows) and cols is not None and len(cols):  # both at once: not from G
            kept_rows, kept_cols = self._kept(len(c), rows), self._kept(len(g), cols)
            shifted = c[np.ix_(kept_rows, kept_cols)] + c[np.ix_(rows, kept_cols)].sum(0) / len(kept_rows)
            shifted += c[np.ix_(kept_rows, cols)].sum(1, keepdims=True) / len(kept_cols)
            shifted += c[np.ix_(rows, cols)].sum() / (len(kept_rows) * len(kept_cols))
            return shifted.T @ shifted
        if rows is not None and len(rows):  # C[kept] + 1 r', r = C[rows] summed / kept
            out = c[rows]
            kept = len(c) - len(rows)
            r = out.sum(0) / kept
            return g - out.T @ out - kept * np.outer(r, r)
        if cols is not None and len(cols):  # C[:, kept] + s 1', s = C[:, cols] summed / kept
            kept_cols = self._kept(len(g), cols)
            v = g[np.ix_(kept_cols, cols)].sum(1) / len(kept_cols)  # C[:, kept]' s
            return (
                g[np.ix_(kept_cols, kept_cols)]
                + v[:, None]
                + v[None, :]
                + g[np.ix_(cols, cols)].sum() / len(kept_cols) ** 2
            )
        return g

    def __call__(self, left_out_a: np.ndarray | None = None, left_out_b: np.ndarray | None = None) -> float:
        kept_a, kept_b = self._kept(len(self.za), left_out_a), self._kept(len(self.zb), left_out_b)
        shift_a, trace_a = self._moments(self.za, self.norms_a, kept_a, left_out_a)
        shift_b, trace_b = self._moments(self.zb, self.norms_b, kept_b, left_out_b)
        gram = self._gram_without(*((left_out_b, left_out_a) if self.swapped else (left_out_a, left_out_b)))
        trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
        trace_root /= np.sqrt((len(kept_a) - 1) * (len(kept_b) - 1))
        means = self.mean_a + shift_a - self.mean_b - shift_b
        return max(float(means @ means + trace_a + trace_b - 2 * trace_root), 0.0)


def _frechet_by_groups(a: np.ndarray, b: np.ndarray) -> _FrechetByGroups | _FrechetByGram:
    """Eigenvalue problems the size of the smaller set when it is smaller than the feature dimension (a finding's
    images, or any small set, in 2,048-dimensional features), else the size of the features."""
    return _FrechetByGram(a, b) if min(len(a), len(b)) < a.shape[1] else _FrechetByGroups(a, b)


def fid_with_intervals(
    a: np.ndarray, b: np.ndarray, groups: int, seed: int, desc: str | None = None
) -> tuple[dict, dict]:
    """FID at these set sizes with a jackknife interval (how much it moves between draws of this size), and the
    bias-corrected FID with its interval (where it heads as the sets grow: FID's finite-sample bias shrinks as
    1/n, and the jackknife removes that term, as FID-infinity's extrapolation does). `desc`: a progress bar over
    the leave-outs (each an eigenvalue problem the size of the features or of the smaller set)."""
    frechet_ = _frechet_by_groups(a, b)
    value = frechet_()
    if groups < 2 or min(len(a), len(b)) < 4:
        return {"value": value}, {"value": value}
    parts_a, parts_b = groups_of(len(a), groups, seed), groups_of(len(b), groups, seed + 1)
    left: list[list[float]] = [[], []]
    leave_outs = [(0, {"left_out_a": g}) for g in parts_a] + [(1, {"left_out_b": g}) for g in parts_b]
    for side, rows in tqdm(leave_outs, desc=desc, unit="group", dynamic_ncols=True, disable=not desc):
        left[side].append(frechet_(**rows))
    left_a, left_b = np.array(left[0]), np.array(left[1])
    plain = jackknife_summary(value, left_a, left_b)
    corrected = jackknife_summary(value, left_a, left_b, bias_correct=True)
    for figure_ in (plain, corrected):  # FID is not negative: nor are its interval's ends (the estimate may be)
        figure_["low"], figure_["high"] = max(figure_["low"], 0.0), max(figure_["high"], 0.0)
    return plain, corrected


def _kernel_group_sums(x: np.ndarray, y: np.ndarray, gx: np.ndarray, gy: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Sums of the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 over each pair of groups (gx, gy: group of
    each row), computed a block of rows at a time so that no n x n matrix is held."""
    d = x.shape[1]
    onehot_y = np.zeros((len(y), gy.max() + 1))
    onehot_y[np.arange(len(y)), gy] = 1
    sums = np.zeros((gx.max() + 1, gy.max() + 1))
    for s in range(0, len(x), chunk):
        k = x[s : s + chunk] @ y.T
        k /= d
        k += 1
        cube = k * k
        cube *= k  # in place, and not ** 3: numpy's power is several times slower
        np.add.at(sums, gx[s : s + chunk], cube @ onehot_y)
    return sums


def _group_ids(n: int, groups: int, seed: int) -> np.ndarray:
    """Each row's group, as `groups_of` draws them (the same groups the FID jackknife leaves out)."""
    ids = np.empty(n, int)
    for k, rows in enumerate(groups_of(n, max(groups, 1), seed)):
        ids[rows] = k
    return ids


def kid_with_interval(a: np.ndarray, b: np.ndarray, groups: int, seed: int) -> dict[str, Any]:
    """KID as the unbiased MMD^2 over all pairs of images (Binkowski et al. average it over random subsets only
    to save time; both estimate the same quantity, this one without their Monte Carlo noise), with a jackknife
    interval. Computed from kernel sums per pair of groups, so each leave-out costs nothing."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ga, gb = _group_ids(len(a), groups, seed), _group_ids(len(b), groups, seed + 1)
    d = a.shape[1]
    diag_a = np.bincount(ga, ((a * a).sum(1) / d + 1) ** 3)  # k(x, x), excluded from the unbiased sums
    diag_b = np.bincount(gb, ((b * b).sum(1) / d + 1) ** 3)
    saa, sbb, sab = _kernel_group_sums(a, a, ga, ga), _kernel_group_sums(b, b, gb, gb), _kernel_group_sums(a, b, ga, gb)
    size_a, size_b = np.bincount(ga).astype(float), np.bincount(gb).astype(float)

    def mmd2(keep_a: np.ndarray, keep_b: np.ndarray) -> float:
        m, n = size_a[keep_a].sum(), size_b[keep_b].sum()
        xx = saa[np.ix_(keep_a, keep_a)].sum() - diag_a[keep_a].sum()
        yy = sbb[np.ix_(keep_b, keep_b)].sum() - diag_b[keep_b].sum()
        return float(xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * sab[np.ix_(keep_a, keep_b)].sum() / (m * n))

    every_a, every_b = np.ones(len(size_a), bool), np.ones(len(size_b), bool)
    value = mmd2(every_a, every_b)
    if groups < 2 or min(len(a), len(b)) < 4:
        return {"value": value}
    left_a = np.array([mmd2(every_a & (np.arange(len(size_a)) != k), every_b) for k in range(len(size_a))])
    left_b = np.array([mmd2(every_a, every_b & (np.arange(len(size_b)) != k)) for k in range(len(size_b))])
    return jackknife_summary(value, left_a, left_b)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """KID: the unbiased MMD^2 over all pairs."""
    return kid_with_interval(a, b, 0, 0)["value"]


def gaussian_kid(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """KID's population value (MMD^2 with k(x, y) = (x.y / d + 1)^3) between two Gaussians, in closed form from
    their first three moments: the known answer KID's estimates and intervals are checked against."""
    d = len(mu_a)

    def third(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:  # E[x_i x_j x_k]
        return (
            np.einsum("i,j,k->ijk", mu, mu, mu)
            + np.einsum("i,jk->ijk", mu, cov)
            + np.einsum("j,ik->ijk", mu, cov)
            + np.einsum("k,ij->ijk", mu, cov)
        )

    def expected_kernel(m1: np.ndarray, c1: np.ndarray, m2: np.ndarray, c2: np.ndarray) -> float:
        u1 = m1 @ m2 / d
        u2 = np.trace((c1 + np.outer(m1, m1)) @ (c2 + np.outer(m2, m2))) / d**2
        u3 = (third(m1, c1) * third(m2, c2)).sum() / d**3
        return float(1 + 3 * u1 + 3 * u2 + u3)

    aa, bb = expected_kernel(mu_a, cov_a, mu_a, cov_a), expected_kernel(mu_b, cov_b, mu_b, cov_b)
    return aa + bb - 2 * expected_kernel(mu_a, cov_a, mu_b, cov_b)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours in each set. With
    fewer than k + 1 images in a set, k shrinks to fit (and is reported)."""
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        return {**dict.fromkeys(PRDC, float("nan")), "k": k}
    return {**_prdc_by_rows(real, fake, k)(np.arange(len(real)), np.arange(len(fake))), "k": k}


def _prdc_by_rows(real: np.ndarray, fake: np.ndarray, k: int) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """PRDC over chosen rows of each set, from distance matrices computed once (for the jackknife)."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    real_real, fake_fake, real_fake = _sq_dists(real, real), _sq_dists(fake, fake), _sq_dists(real, fake)

    def statistic(rows_real: np.ndarray, rows_fake: np.ndarray) -> dict[str, float]:
        rr = real_real[np.ix_(rows_real, rows_real)]
        ff = fake_fake[np.ix_(rows_fake, rows_fake)]
        rf = real_fake[np.ix_(rows_real, rows_fake)]
        real_radius = np.partition(rr, k, axis=1)[:, k]  # k-th neighbour (index 0 is the point itself)
        fake_radius = np.partition(ff, k, axis=1)[:, k]
        inside_real = rf < real_radius[:, None]  # fake j inside the ball of real i
        return {
            "precision": float(inside_real.any(axis=0).mean()),
            "recall": float((rf < fake_radius[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum(axis=0).mean() / k),
            "coverage": float((rf.min(axis=1) < real_radius).mean()),
        }

    return statistic


@dataclass
class FidelityOptions:
    groups: int = option(
        20, "groups per set for the delete-a-group jackknife behind the 95% intervals of FID, KID and PRDC (0: none)"
    )
    prdc_k: int = option(5, "neighbours for precision/recall/density/coverage")
    min_per_finding: int = option(
        50,
        "fewest images with a finding, in the real set and in the generated set alike, for that finding's own "
        "FID/KID/PRDC (by_finding; both sets need metadata.jsonl with findings). Below about 50 a finding's KID "
        "interval is as wide as the gaps between findings and FID is mostly its small-sample bias; such findings "
        "are listed with their counts instead",
    )

    def __post_init__(self) -> None:
        if self.min_per_finding < 2:
            raise ConfigError(
                f"--fidelity.min-per-finding must be 2 or more (a covariance needs 2 images): {self.min_per_finding}"
            )


def distances(
    real: np.ndarray,
    generated: np.ndarray,
    o: FidelityOptions,
    seed: int,
    warn: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """FID (at these sizes and bias-corrected), KID and PRDC between two feature sets, each with a 95% interval;
    the headline is KID below STABLE_FID_IMAGES images a set, where FID still moves with the sample (`warn`: log
    that, as well as storing it). `label` (the extractor's name): progress bars over the jackknife's leave-outs."""
    n = min(len(real), len(generated))
    desc = {k: f"fidelity ({label}): {k} jackknife" if label else None for k in ("FID", "PRDC")}
    fid_plain, fid_corrected = fid_with_intervals(real, generated, o.groups, seed, desc["FID"])
    result: dict[str, Any] = {
        "images": n,
        "fid": fid_plain,
        "fid_corrected": fid_corrected,
        "kid": kid_with_interval(real, generated, o.groups, seed),
        "headline": "kid" if n < STABLE_FID_IMAGES else "fid",
    }
    k = min(o.prdc_k, len(real) - 1, len(generated) - 1)  # as prdc() shrinks it for small sets
    if k < 1:
        result["prdc"] = {**{key: {"value": float("nan")} for key in PRDC}, "k": k}
    else:
        # each leave-out must keep k + 1 images in each set for the neighbour radii
        groups = o.groups if n - -(-n // max(o.groups, 1)) > k else 0
        statistic = _prdc_by_rows(real, generated, k)
        result["prdc"] = {**jackknife(statistic, len(real), len(generated), groups, seed, desc=desc["PRDC"])}
        result["prdc"]["k"] = k
    if n < STABLE_FID_IMAGES:
        message = (
            f"FID from {n} images a set is biased upward and moves with the sample ({STABLE_FID_IMAGES}+ a set is "
            "usual): read KID, which is unbiased at any size, or the bias-corrected FID"
        )
        if warn:
            log.warning(message)
        result["warning"] = message
    return result


METHOD = (
    "95% intervals by the delete-a-group jackknife: each set is cut into {groups} random groups and every figure "
    "recomputed with one group left out (no image is ever repeated, which would inflate FID and bias KID). "
    "FID at n: the FID of these sets; its interval is how much it moves between draws of this size. FID "
    "bias-corrected: FID's finite-sample bias, which shrinks as 1/n (the basis of Chong & Forsyth's "
    "FID-infinity), removed by the jackknife to first order; its interval is for the FID of unlimited images. "
    "KID: the unbiased MMD^2 with the cubic polynomial kernel over all pairs of images. Intervals are t "
    "intervals on the jackknife standard error."
)


@METRICS.register
class FidelityMetric(Metric):
    """How close the generated images lie to the real ones, per extractor."""

    name = "fidelity"
    title = "Fidelity"
    Options = FidelityOptions
    not_measured = "run cxrgen evaluate on --real and --generated images"
    question = "faithful"

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        """Per extractor: whether KID's interval (unbiased at any size) excludes 0, with precision and recall."""
        lines, caveats = [], []
        for name, f in section.items():
            kid = as_figure(f["kid"])
            told = "low" in kid and kid["low"] > 0
            p, r = (as_figure(f["prdc"][k])["value"] for k in ("precision", "recall"))
            lines.append(
                f"{name}: {'distinguishable from' if told else 'not distinguishable from'} the real set "
                f"(KID {with_interval(kid, 5)}; precision {p:.2f}, recall {r:.2f})"
            )
            if f.get("note"):
                caveats.append(f"{name}: {f['note']}")
        sizes = f"{doc.sets['real']['images']} real and {doc.sets['generated']['images']} generated images"
        return "; ".join(lines), "; ".join([sizes, *caveats]) + (
            "; KID's interval is a delete-a-group jackknife; an interval that holds 0 means no difference was "
            "detected at this size, not that there is none"
        )

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        section = {}
        options, seed = ctx.options(self), ctx.config.seed
        why_not = conditional_fidelity.unavailable(ctx.real.rows, ctx.generated.rows)
        for ex in ctx.extractors:
            features = ctx.features[ex.name]
            section[ex.name] = distances(features["real"], features["generated"], options, seed, label=ex.name)
            if ex.random:
                section[ex.name]["note"] = "random weights: a smoke test, not a measurement"
            if why_not is not None:
                section[ex.name]["by_finding_skipped"] = why_not
                continue
            section[ex.name]["by_finding"] = conditional_fidelity.by_finding(
                features["real"],
                features["generated"],
                ctx.real.rows,
                ctx.generated.rows,
                options.min_per_finding,
                lambda real, generated: distances(real, generated, options, seed, warn=False),
                label=ex.name,
            )
        return section

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        lines = []
        for name, f in section.items():
            figures = {
                "KID": with_interval(f["kid"], 5),
                "FID": with_interval(f["fid"], 2),
                "FID bias-corrected": with_interval(f["fid_corrected"], 2) if "fid_corrected" in f else None,
            }
            if f.get("headline") == "kid":
                figures["KID"] += " (the headline: FID is unstable at this size)"
            else:
                figures = {"FID": figures.pop("FID"), **figures}
            images = f" ({f['images']} images a set)" if "images" in f else ""
            lines.append(f"{name}{images}: " + "  ".join(f"{k} {v}" for k, v in figures.items() if v))
            prdc_ = "  ".join(f"{key} {with_interval(f['prdc'][key])}" for key in PRDC)
            lines.append(f"{' ' * len(name)}  {prdc_}")
            if "by_finding" in f:
                lines += conditional_fidelity.summary_lines(name, f["by_finding"])
        skipped = {f["by_finding_skipped"] for f in section.values() if "by_finding_skipped" in f}
        return lines + [f"by finding: not measured: {reason}" for reason in sorted(skipped)]

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows, prdc_rows, notes = [], [], []
        for name, f in section.items():
            corrected = with_interval(f["fid_corrected"], 2) if "fid_corrected" in f else "-"
            kid_ = with_interval(f["kid"], 5) + (" (headline)" if f.get("headline") == "kid" else "")
            rows.append([name, f.get("images", ""), kid_, with_interval(f["fid"], 2), corrected])
            prdc_rows.append([name, *(with_interval(f["prdc"][key]) for key in PRDC)])
            notes += [f"{name}: {f[k]}" for k in ("note", "warning") if k in f]
        header = ["extractor", "images a set", "KID [95% interval]", "FID at this size", "FID bias-corrected"]
        out = table(header, rows) + table(["extractor", *(f"{k} [95% interval]" for k in PRDC)], prdc_rows)
        out += "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
        groups = doc.config.get("fidelity", {}).get("groups")
        if groups:
            out += f'<p class="note">{escape(METHOD.format(groups=groups))}</p>'

        def bars(ax: Any) -> None:
            names = list(section)
            for i, key in enumerate(PRDC):
                figures = [as_figure(section[n]["prdc"][key]) for n in names]
                values = np.array([d["value"] for d in figures])
                spread = np.array(
                    [[d["value"] - d.get("low", d["value"]), d.get("high", d["value"]) - d["value"]] for d in figures]
                ).T
                ax.bar(np.arange(len(names)) + i * 0.2, values, 0.2, yerr=spread, capsize=3, label=key)
            ax.set_xticks(np.arange(len(names)) + 0.3, names)
            ax.set_ylim(0, max(1.2, max(as_figure(section[n]["prdc"]["density"]).get("high", 0) for n in names) * 1.1))
            ax.legend(ncol=4, fontsize=8)
            ax.set_title("precision, recall, density, coverage (k-NN, Naeem et al. 2020), 95% intervals")

        out += figure(bars)
        for name, f in section.items():
            if "by_finding" in f:
                out += conditional_fidelity.report_html(name, f["by_finding"], f["kid"], PRDC)
        skipped = {f["by_finding_skipped"] for f in section.values() if "by_finding_skipped" in f}
        out += "".join(f'<p class="note">by finding: not measured: {escape(reason)}</p>' for reason in sorted(skipped))
        if any("by_finding" in f for f in section.values()):
            out += f'<p class="note">{escape(conditional_fidelity.METHOD)}</p>'
        return out


PRDC = ("precision", "recall", "density", "coverage")
