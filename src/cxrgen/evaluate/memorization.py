"""Memorization: is a generated image a copy of a training image?

Similarity. Each generated image is matched with its nearest training image once small transformations are
undone (copy_match.py): retrieval of the 8 likeliest training images by local detail at 32 px (registered to the
training set's mean anatomy, mirrored or not, unzoomed by 0.95..1.34, unrotated by -3..3 degrees), then alignment
at 64 px over rotations of -6..6 degrees, zooms of 0.91..1.41 and shifts, refined to 0.75 degree, 2.5% and half a
pixel. The similarity is the best Pearson correlation of local detail found; the transformation that gave it is
named ("variant"). Copies that are mirrored, rotated, shifted, rescaled, cropped, re-exposed, recompressed or
noisier still correlate near 1. Feature cosine (the primary extractor's features) is a second, independent check.

Thresholds. The search that undoes transformations also lifts independent pairs (anatomy lines up), so the null
comes from the same search: up to `calibration` training images are each matched with the training images of
every other patient, exactly as generated images are. With m the `quantile` (0.99) of those nearest-other-patient
similarities, an image is flagged when its similarity exceeds m + margin * (1 - m). Training images whose nearest
other patient is an outlier (above Tukey's far fence, Q3 + 3 IQR of Fisher's z: repeat studies under different
patient ids, duplicates) are set aside before the quantile is taken, and reported, so that a few near-duplicate
pairs in the training set cannot lift the thresholds. The same holds for feature cosine.

False flags. The held-out real images (the real set: images of patients outside training) go through the same
check as if they were generated; the share flagged, with its Wilson interval, is the false-flag rate at these
thresholds (a real set that overlaps the training set would show up here as a high rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ..config import ConfigError, option
from ..contracts import MetricsDocument
from .copy_match import CopyIndex, Described, Match, describe
from .html import escape, figure, note, pair_html
from .imagesets import ImageSet
from .intervals import wilson
from .metric import METRICS, EvaluationContext, Metric
from .networks import overlap_warning

SIZE = 64  # the detail correlation of aligned pairs (forgetting.py: the same seed drawn by two models)
CALIBRATION = 2000  # training images whose nearest other patient sets the thresholds
HELDOUT = 1000  # held-out real images checked for the false-flag rate (a seeded choice when there are more)
QUANTILE, MARGIN = 0.99, 0.3
FENCE = 3.0  # Tukey's far-out fence (Fisher z): nearest-other-patient similarities above Q3 + 3 IQR are set aside
METHOD = (
    "best detail correlation over mirror, rotations -6..6 degrees, zooms 0.91..1.41 and shifts (copy_match); "
    "thresholds m + margin * (1 - m), m the quantile of each calibration training image's nearest other patient "
    "under the same search"
)


def detail_vector(small: np.ndarray) -> np.ndarray:
    """Detail of an aligned image (minus its blur), clipped at three robust standard deviations, as a unit
    vector with zero mean: a dot product is a correlation."""
    pixels = small.astype(np.float32)
    detail = pixels - gaussian_filter(pixels, 2.0)
    spread = 1.4826 * np.median(np.abs(detail - np.median(detail))) + 1e-6
    v = np.clip(detail, -3 * spread, 3 * spread).ravel()
    v -= v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _resize(gray: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    h, w = gray.shape
    side = min(h, w)
    keep = max(1, int(round(side * crop)))
    y, x = (h - keep) // 2, (w - keep) // 2
    return np.asarray(Image.fromarray(gray[y : y + keep, x : x + keep]).resize((size, size), Image.Resampling.BOX))


@dataclass
class Threshold:
    """m + margin * (1 - m), m the quantile of the calibration similarities kept (those not above the fence)."""

    value: float
    m: float
    fence: float
    set_aside: np.ndarray  # positions (in the calibration order) of the outliers left out


def robust_threshold(nearest: np.ndarray, quantile: float, margin: float) -> Threshold:
    """The threshold from calibration similarities (correlations or cosines), outliers set aside first: those
    above Tukey's far fence, drawn on Fisher's z = atanh(s) (on s itself a fence can pass 1, near where
    duplicates sit)."""
    finite = np.flatnonzero(np.isfinite(nearest))
    if finite.size == 0:  # every training image belongs to one patient: nothing to calibrate on
        return Threshold(1.0 - 1e-6, float("nan"), float("nan"), np.zeros(0, np.int64))
    values = nearest[finite]
    fence = float("inf")
    if values.size >= 20:  # a fence drawn from fewer is mostly noise
        q1, q3 = np.quantile(np.arctanh(np.clip(values, -1 + 1e-6, 1 - 1e-6)), [0.25, 0.75])
        fence = float(np.tanh(q3 + FENCE * (q3 - q1)))
    kept = values <= fence
    m = float(np.quantile(values[kept], quantile))
    return Threshold(m + margin * (1.0 - m), m, fence, finite[~kept])


@dataclass
class Checked:
    """One set's images checked against the training set."""

    pixel: Match
    feature_nn: np.ndarray | None
    feature_index: np.ndarray | None
    flagged: list[int]


@dataclass
class Memorization:
    flagged: list[int]
    pixel_threshold: float
    feature_threshold: float | None
    pixel_nn: np.ndarray  # (M,) best similarity
    pixel_index: np.ndarray  # (M,) training image
    pixel_variant: np.ndarray  # how the generated image shows the training image ("as is", "mirrored", ...)
    feature_nn: np.ndarray | None
    feature_index: np.ndarray | None
    train_images: int  # how many training images every generated image was compared with
    quantile: float
    margin: float
    calibration: np.ndarray  # the training images whose nearest other patient set the thresholds
    calibration_pixel: np.ndarray  # their nearest-other-patient similarity
    calibration_pixel_index: np.ndarray
    calibration_feature: np.ndarray | None
    pixel_null: Threshold  # how the thresholds were set
    feature_null: Threshold | None
    heldout: Checked | None = None
    heldout_images: int = 0

    def false_flag_rate(self) -> dict[str, Any] | None:
        if self.heldout is None or self.heldout_images == 0:
            return None
        k, n = len(self.heldout.flagged), self.heldout_images
        low, high = wilson(k, n)
        return {"value": k / n, "low": low, "high": high, "flagged": k, "images": n, "method": "Wilson 95%"}

    def summary(self, generated: ImageSet, train: ImageSet, top: int = 12) -> dict[str, Any]:
        flagged = set(self.flagged)  # shown first, whichever measure flagged them; then the closest by detail
        order = sorted(range(len(self.pixel_nn)), key=lambda i: (i not in flagged, -self.pixel_nn[i]))[:top]
        pixel, feature = self.pixel_null, self.feature_null
        duplicates = [
            {
                "train": str(train.files[self.calibration[p]]),
                "other": str(train.files[self.calibration_pixel_index[p]]),
                "pixel_correlation": round(float(self.calibration_pixel[p]), 4),
            }
            for p in pixel.set_aside[:20]
        ]
        return {
            "method": METHOD,
            "flagged": len(self.flagged),
            "train_images": self.train_images,
            "flagged_fraction": len(self.flagged) / max(len(generated), 1),
            "pixel_threshold": pixel.value,
            "feature_threshold": feature.value if feature is not None else None,
            "quantile": self.quantile,
            "margin": self.margin,
            "calibration_images": len(self.calibration),
            "pixel_null_quantile": _finite(pixel.m),
            "feature_null_quantile": _finite(feature.m) if feature is not None else None,
            "set_aside": {
                "pixel": len(pixel.set_aside),
                "feature": len(feature.set_aside) if feature is not None else None,
            },
            "training_near_duplicates": duplicates,
            "false_flag_rate": self.false_flag_rate(),
            "heldout_pixel_nn": _rounded(self.heldout.pixel.score) if self.heldout is not None else None,
            "calibration_pixel_nn": _rounded(self.calibration_pixel[np.isfinite(self.calibration_pixel)]),
            "pixel_nn_mean": float(self.pixel_nn.mean()),
            "feature_nn_mean": float(self.feature_nn.mean()) if self.feature_nn is not None else None,
            "pixel_nn": _rounded(self.pixel_nn),
            "feature_nn": _rounded(self.feature_nn) if self.feature_nn is not None else None,
            "flagged_images": [str(generated.files[i]) for i in self.flagged[:200]],
            "closest_pairs": [
                {
                    "generated": str(generated.files[i]),
                    "train": str(train.files[self.pixel_index[i]]),
                    "pixel_correlation": float(self.pixel_nn[i]),
                    "variant": str(self.pixel_variant[i]),
                    "feature_cosine": float(self.feature_nn[i]) if self.feature_nn is not None else None,
                    "flagged": i in flagged,
                }
                for i in order
            ],
        }


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def _unit(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1)


def _nearest_feature(
    queries: np.ndarray,
    train: np.ndarray,
    block: int,
    own: np.ndarray | None = None,
    patients: np.ndarray | None = None,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's highest cosine with a training image (of another patient, given own and patients)."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    index = np.zeros(len(queries), dtype=np.int64)
    blocks = range(0, len(train), block)
    for lo in tqdm(blocks, desc=desc, unit="block", dynamic_ncols=True, disable=desc is None or len(blocks) <= 1):
        sims = queries @ train[lo : lo + block].T
        if own is not None and patients is not None:
            sims = np.where(own[:, None] == patients[None, lo : lo + block], -np.inf, sims)
        if sims.shape[1] == 0:
            continue
        j = sims.argmax(axis=1)
        top = sims[np.arange(len(j)), j]
        better = top > best
        best[better], index[better] = top[better], lo + j[better]
    return best, index


def _described(images: ImageSet, indices: np.ndarray | range, workers: int, what: str) -> Described:
    return describe(images.load, indices, workers, f"memorization: describing {what}")


def _check_set(
    index: CopyIndex,
    described: Described,
    features: np.ndarray | None,
    train_features: np.ndarray | None,
    pixel: Threshold,
    feature: Threshold | None,
    block: int,
    what: str,
) -> Checked:
    match = index.match(described, chunk=block, desc=f"memorization: matching {what}")
    flagged = set(np.flatnonzero(match.score > pixel.value).tolist())
    feature_nn = feature_index = None
    if features is not None and train_features is not None and feature is not None:
        desc = f"memorization: nearest features of {what}"
        feature_nn, feature_index = _nearest_feature(_unit(features), train_features, block, desc=desc)
        flagged |= set(np.flatnonzero(feature_nn > feature.value).tolist())
    return Checked(match, feature_nn, feature_index, sorted(flagged))


def check(
    generated: ImageSet,
    train: ImageSet,
    gen_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    quantile: float = QUANTILE,
    margin: float = MARGIN,
    calibration: int = CALIBRATION,
    block: int = 4096,
    seed: int = 0,
    workers: int = 4,
    heldout: ImageSet | None = None,
    heldout_features: np.ndarray | None = None,
    heldout_limit: int = HELDOUT,
) -> Memorization:
    """Match every generated image (and every held-out real image, when given) with the training set. The training
    set is held as detail maps (about 13 KB an image) and compared `block` images at a time (memory stays flat in
    the number of comparisons). Thresholds come from `calibration` training images (all of them when fewer),
    each matched with the training images of every other patient; the false-flag rate from up to `heldout_limit`
    held-out real images."""
    rng = np.random.default_rng(seed)
    n = len(train)
    cal = np.arange(n) if n <= calibration else np.sort(rng.choice(n, calibration, replace=False))
    patients = np.asarray(train.patient_keys())
    train_maps = _described(train, range(n), workers, "training images")
    index = CopyIndex(train_maps)
    null = index.match(train_maps.subset(cal), patients[cal], patients, chunk=block, desc="memorization: calibrating")
    pixel = robust_threshold(null.score, quantile, margin)
    feature = cal_feature = train_unit = None
    if gen_features is not None and train_features is not None:
        train_unit = _unit(train_features)
        desc = "memorization: calibrating features"
        cal_feature = _nearest_feature(train_unit[cal], train_unit, block, patients[cal], patients, desc)[0]
        feature = robust_threshold(cal_feature, quantile, margin)
    gen_maps = _described(generated, range(len(generated)), workers, "generated images")
    found = _check_set(index, gen_maps, gen_features, train_unit, pixel, feature, block, "generated images")
    held, checked = None, 0
    if heldout is not None:
        rows = np.arange(len(heldout))
        if len(rows) > heldout_limit:
            rows = np.sort(rng.choice(len(rows), heldout_limit, replace=False))
        maps = _described(heldout, rows, workers, "held-out real images")
        chosen = heldout_features[rows] if heldout_features is not None else None
        held = _check_set(index, maps, chosen, train_unit, pixel, feature, block, "held-out real images")
        checked = len(rows)
    return Memorization(
        flagged=found.flagged,
        pixel_threshold=pixel.value,
        feature_threshold=feature.value if feature is not None else None,
        pixel_nn=found.pixel.score,
        pixel_index=found.pixel.index,
        pixel_variant=np.asarray([t.name() for t in found.pixel.transform]),
        feature_nn=found.feature_nn,
        feature_index=found.feature_index,
        train_images=n,
        quantile=quantile,
        margin=margin,
        calibration=cal,
        calibration_pixel=null.score,
        calibration_pixel_index=null.index,
        calibration_feature=cal_feature,
        pixel_null=pixel,
        feature_null=feature,
        heldout=held,
        heldout_images=checked,
    )


@dataclass
class MemorizationOptions:
    quantile: float = option(
        QUANTILE,
        "m, the null: this quantile of each calibration training image's similarity to its nearest other patient "
        "(under the same search for transformations as generated images; outliers set aside)",
    )
    margin: float = option(MARGIN, "flag when closer than m + margin * (1 - m): 0 at m, 1 only identical images")

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile <= 1.0:
            raise ConfigError(f"--memorization.quantile must be between 0.5 and 1: {self.quantile}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"--memorization.margin must be at least 0 and below 1: {self.margin}")


@METRICS.register
class MemorizationMetric(Metric):
    """Which generated images are likely copies of training images, with the closest pairs to look at."""

    name = "memorization"
    title = "Memorization: nearest training images"
    Options = MemorizationOptions
    not_measured = "give --train (the training images)"
    question = "safe"

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return ctx.train is not None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        assert ctx.train is not None  # asked for only with a training set
        features = ctx.features[ctx.primary.name]
        options = ctx.options(self)
        found = check(
            ctx.generated,
            ctx.train,
            features["generated"],
            features["train"],
            quantile=options.quantile,
            margin=options.margin,
            seed=ctx.config.seed,
            heldout=ctx.real,
            heldout_features=features.get("real"),
        )
        warning = overlap_warning(ctx.real, ctx.train)  # then held-out images are no null: say so
        return {
            "extractor": ctx.primary.identity,
            **found.summary(ctx.generated, ctx.train),
            **({"warning": f"false-flag rate: {warning}"} if warning else {}),
        }

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        n, k = doc.sets["generated"]["images"], section["flagged"]
        low, high = wilson(k, n)
        share = f"{k} of {n} generated images ({k / max(n, 1):.1%} [{low:.1%}, {high:.1%}])"
        rate = section.get("false_flag_rate")
        found = (
            f"likely copies: {share} match a training image" if k else f"no likely copies among {n} generated images"
        )
        if rate:
            found += f"; held-out real images are flagged at {_percent(rate)}"
        caveats = (
            f"compared with {section['train_images']} training images after undoing mirroring, rotations, zooms "
            "and shifts"
        )
        if "quantile" in section:
            caveats += (
                f"; threshold m + {section['margin']:g} * (1 - m), m the {section['quantile']:g} quantile of "
                f"{section['calibration_images']} training images' nearest other patient"
            )
        return found, (section["warning"] + "; " if section.get("warning") else "") + caveats

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        lines = [
            f"memorization: {section['flagged']} of {doc.sets['generated']['images']} generated images flagged as "
            f"likely copies of {section['train_images']} training images"
        ]
        rate = section.get("false_flag_rate")
        if rate:
            lines.append(
                f"memorization: false flags on held-out real images {_percent(rate)} "
                f"({rate['flagged']} of {rate['images']})"
            )
        if section.get("warning"):
            lines.append(f"  warning: {section['warning']}")
        return lines

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        feature = section["feature_threshold"]
        out = [
            f"<p>{section['flagged']} of {doc.sets['generated']['images']} generated images are flagged as likely "
            f"copies (detail correlation above {section['pixel_threshold']:.3f}"
            + (f" or feature cosine above {feature:.3f}" if feature is not None else "")
            + "). The detail correlation is the best found over mirroring, small rotations, zooms and shifts"
            + (
                _thresholds(section)
                if "quantile" in section
                else ". Thresholds are calibrated on how close different training patients are to each other."
            )
            + "</p>"
        ]
        rate = section.get("false_flag_rate")
        if rate:
            out.append(
                f"<p>False flags: {rate['flagged']} of {rate['images']} held-out real images (patients outside "
                f"training, checked as if generated) are flagged, {_percent(rate)} (Wilson 95% interval). A high "
                "rate means the thresholds are too low for these images, or that the real set overlaps the "
                "training set.</p>"
            )
        if section.get("warning"):
            out.append(note(section["warning"]))
        duplicates = section.get("training_near_duplicates") or []
        if duplicates:
            out.append(
                note(
                    f"{section['set_aside']['pixel']} training image(s) have a near-duplicate under another patient "
                    "id (set aside from the calibration), e.g. "
                    + "; ".join(
                        f"{Path(d['train']).name} ~ {Path(d['other']).name} (r={d['pixel_correlation']:.3f})"
                        for d in duplicates[:5]
                    )
                )
            )

        def caption(pair: dict[str, Any]) -> str:
            flag = '<span class="flag">FLAGGED</span> ' if pair["flagged"] else ""
            text = f"{flag}r={pair['pixel_correlation']:.3f} ({escape(pair['variant'])})"
            return text + (f", cos={pair['feature_cosine']:.3f}" if pair["feature_cosine"] is not None else "")

        for pair in section["closest_pairs"]:
            out.append(pair_html(folder / pair["generated"], folder / pair["train"], lambda pair=pair: caption(pair)))

        def histogram(ax: Any) -> None:
            bins = np.linspace(min([*section["pixel_nn"], 0.0]), 1.0, 41)
            ax.hist(section["pixel_nn"], bins=bins, color="#4a7", alpha=0.7, label="generated", density=True)
            for key, label, colour in (
                ("calibration_pixel_nn", "training, other patients", "#888"),
                ("heldout_pixel_nn", "held-out real", "#47a"),
            ):
                if section.get(key):
                    ax.hist(section[key], bins=bins, histtype="step", color=colour, label=label, density=True)
            ax.axvline(section["pixel_threshold"], color="#b00", ls="--", label="flag threshold")
            ax.set_xlabel("detail correlation with the nearest training image (best over transformations)")
            ax.legend(fontsize=8)

        return "".join(out) + figure(histogram)


def _percent(rate: dict[str, Any]) -> str:
    return f"{rate['value']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}]"


def _thresholds(section: dict[str, Any]) -> str:
    m = section["pixel_null_quantile"]
    null = f"{m:.3f}" if m is not None else "not measured (one patient)"
    return (
        f". Thresholds: m + {section['margin']:g} * (1 - m), m the {section['quantile']:g} quantile of how close "
        f"each of {section['calibration_images']} training images comes to its nearest other patient under the same "
        f"search (m = {null} for detail)"
    )
