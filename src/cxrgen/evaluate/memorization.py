"""Memorization: is a generated image a copy of a training image?

Each generated image is compared with every training image by the correlation of their fine detail (64 px)
against the training image as it is, mirrored, and center-cropped in 1% steps down to 75%, so mirrored and cropped
copies are caught, and by feature cosine. The thresholds are calibrated on the training set itself: with m the highest
similarity between images of two different training patients (or its `quantile`; taken over up to 2,000 training
images, each against every other patient's), a generated image is flagged
when it is closer to a training image than m + margin * (1 - m), i.e. clearly closer than any two patients are
(margin 0.5: half way from m to identical). Independent samples rarely beat m by much; copies sit near 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ..config import option
from ..contracts import MetricsDocument
from ..grid import image_grid
from .html import escape, figure, img
from .imagesets import ImageSet, load_gray
from .metric import METRICS, EvaluationContext, Metric

SIZE = 64
CROPS = tuple(round(1.0 - 0.01 * k, 2) for k in range(1, 26))  # center crops down to 75%, in 1% steps
WORK = 128  # training images are held at this size while their variants are made
CALIBRATION = 2000  # training images whose nearest other patient sets the thresholds


def detail_vector(small: np.ndarray) -> np.ndarray:
    """Detail, not anatomy: the image minus its blur (every chest has its lungs and heart in the same place),
    clipped at three robust standard deviations so that one strong edge (a border, a device) cannot decide
    alone; a unit vector with zero mean, so that a dot product is a correlation."""
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


def _load_held(images: ImageSet, indices: range | np.ndarray, pool: ThreadPoolExecutor) -> list[np.ndarray]:
    return list(pool.map(lambda i: _resize(images.load(int(i)), WORK), indices))


def variant_vectors(held: list[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (N, SIZE*SIZE)) for each variant of the training images: as is, mirrored, and center crops."""
    for mirrored in (False, True):
        for crop in (1.0, *CROPS):
            name = ("mirrored " if mirrored else "") + ("as is" if crop == 1.0 else f"crop {int(round(crop * 100))}%")
            rows = [detail_vector(_resize(g[:, ::-1] if mirrored else g, SIZE, crop)) for g in held]
            yield name, np.asarray(rows, dtype=np.float32)


def _unit(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1)


def _patients(images: ImageSet) -> np.ndarray:
    keys = (
        [r.get("patient_key") or f"image-{i}" for i, r in enumerate(images.rows)]
        if images.rows
        else [f"image-{i}" for i in range(len(images))]
    )
    return np.asarray(keys)


@dataclass
class Memorization:
    flagged: list[int]
    pixel_threshold: float
    feature_threshold: float | None
    pixel_nn: np.ndarray  # (M,) best similarity
    pixel_index: np.ndarray  # (M,) training image
    pixel_variant: np.ndarray  # which variant of the training image matched
    feature_nn: np.ndarray | None
    feature_index: np.ndarray | None
    train_images: int  # how many training images every generated image was compared with

    def summary(self, generated: ImageSet, train: ImageSet, top: int = 12) -> dict[str, Any]:
        flagged = set(self.flagged)  # shown first, whichever measure flagged them; then the closest by detail
        order = sorted(range(len(self.pixel_nn)), key=lambda i: (i not in flagged, -self.pixel_nn[i]))[:top]
        return {
            "flagged": len(self.flagged),
            "train_images": self.train_images,
            "flagged_fraction": len(self.flagged) / max(len(generated), 1),
            "pixel_threshold": self.pixel_threshold,
            "feature_threshold": self.feature_threshold,
            "pixel_nn_mean": float(self.pixel_nn.mean()),
            "feature_nn_mean": float(self.feature_nn.mean()) if self.feature_nn is not None else None,
            "pixel_nn": [round(float(v), 4) for v in self.pixel_nn],
            "feature_nn": [round(float(v), 4) for v in self.feature_nn] if self.feature_nn is not None else None,
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


def _threshold(nearest: np.ndarray, quantile: float, margin: float) -> float:
    finite = nearest[np.isfinite(nearest)]
    if finite.size == 0:  # every training image belongs to one patient: nothing to calibrate on
        return 1.0 - 1e-6
    m = float(np.quantile(finite, quantile))
    return m + margin * (1.0 - m)


def check(
    generated: ImageSet,
    train: ImageSet,
    gen_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    quantile: float = 1.0,
    margin: float = 0.5,
    calibration: int = CALIBRATION,
    block: int = 1024,
    seed: int = 0,
    workers: int = 4,
) -> Memorization:
    """Compare every generated image with every training image, a block of training images at a time (memory
    stays flat however large the training set). Thresholds come from `calibration` training images (all of them
    when fewer) against every training image of another patient."""
    rng = np.random.default_rng(seed)
    n = len(train)
    cal = np.arange(n) if n <= calibration else np.sort(rng.choice(n, calibration, replace=False))
    patients = _patients(train)
    with ThreadPoolExecutor(workers) as pool:
        gen_vectors = _plain_vectors(_load_held(generated, range(len(generated)), pool))
        cal_vectors = _plain_vectors(_load_held(train, cal, pool))
        pixel = _Nearest(len(generated))
        cal_best = np.full(len(cal), -np.inf, dtype=np.float32)
        names = []
        bar = tqdm(total=n, desc="memorization (training images)", unit="img", dynamic_ncols=True)
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            other = patients[cal][:, None] != patients[None, lo:hi]  # pairs of two different patients
            for k, (name, vectors) in enumerate(variant_vectors(_load_held(train, range(lo, hi), pool))):
                if lo == 0:
                    names.append(name)
                pixel.update(gen_vectors @ vectors.T, lo, k)
                np.maximum(cal_best, np.where(other, cal_vectors @ vectors.T, -np.inf).max(axis=1), out=cal_best)
            bar.update(hi - lo)
        bar.close()
    pixel_threshold = _threshold(cal_best, quantile, margin)
    flagged = set(np.nonzero(pixel.value > pixel_threshold)[0].tolist())
    feature_nn = feature_index = feature_threshold = None
    if gen_features is not None and train_features is not None:
        t, g = _unit(train_features), _unit(gen_features)
        feature = _Nearest(len(generated))
        cal_feature = np.full(len(cal), -np.inf, dtype=np.float32)
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            feature.update(g @ t[lo:hi].T, lo)
            other = patients[cal][:, None] != patients[None, lo:hi]
            np.maximum(cal_feature, np.where(other, t[cal] @ t[lo:hi].T, -np.inf).max(axis=1), out=cal_feature)
        feature_threshold = _threshold(cal_feature, quantile, margin)
        feature_nn, feature_index = feature.value, feature.index
        flagged |= set(np.nonzero(feature_nn > feature_threshold)[0].tolist())
    variants = np.asarray([names[k] for k in pixel.variant])
    return Memorization(
        sorted(flagged),
        pixel_threshold,
        feature_threshold,
        pixel.value,
        pixel.index,
        variants,
        feature_nn,
        feature_index,
        n,
    )


def _plain_vectors(held: list[np.ndarray]) -> np.ndarray:
    return np.asarray([detail_vector(_resize(g, SIZE)) for g in held], dtype=np.float32).reshape(len(held), -1)


class _Nearest:
    """The running best match of each generated image over blocks of training images."""

    def __init__(self, rows: int):
        self.value = np.full(rows, -np.inf, dtype=np.float32)
        self.index = np.zeros(rows, dtype=np.int64)
        self.variant = np.zeros(rows, dtype=np.int16)

    def update(self, sims: np.ndarray, offset: int, variant: int = 0) -> None:
        if sims.shape[1] == 0:
            return
        j = sims.argmax(axis=1)
        top = sims[np.arange(len(j)), j]
        better = top > self.value
        self.value[better], self.index[better], self.variant[better] = (
            top[better],
            offset + j[better],
            variant,
        )


@dataclass
class MemorizationOptions:
    margin: float = option(0.5, "flag when closer than m + margin * (1 - m), m the closest pair of training patients")


@METRICS.register
class MemorizationMetric(Metric):
    """Which generated images are likely copies of training images, with the closest pairs to look at."""

    name = "memorization"
    title = "Memorization: nearest training images"
    Options = MemorizationOptions
    not_measured = "give --train (the training images)"

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return ctx.train is not None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        assert ctx.train is not None  # asked for only with a training set
        features = ctx.features[ctx.primary.name]
        found = check(
            ctx.generated,
            ctx.train,
            features["generated"],
            features["train"],
            margin=ctx.options(self).margin,
            seed=ctx.config.seed,
        )
        return {"extractor": ctx.primary.identity, **found.summary(ctx.generated, ctx.train)}

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        return [
            f"memorization: {section['flagged']} of {doc.sets['generated']['images']} generated images flagged as "
            f"likely copies of {section['train_images']} training images"
        ]

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        feature = section["feature_threshold"]
        out = [
            f"<p>{section['flagged']} of {doc.sets['generated']['images']} generated images are flagged as likely "
            f"copies (detail correlation above {section['pixel_threshold']:.3f}"
            + (f" or feature cosine above {feature:.3f}" if feature is not None else "")
            + "). Thresholds are calibrated on how close different training patients are to each other.</p>"
        ]
        for pair in section["closest_pairs"]:
            tiles = [
                (load_gray(Path(pair["generated"]), 128), "generated"),
                (load_gray(Path(pair["train"]), 128), "training"),
            ]
            flag = '<span class="flag">FLAGGED</span> ' if pair["flagged"] else ""
            caption = f"{flag}r={pair['pixel_correlation']:.3f} ({escape(pair['variant'])})"
            if pair["feature_cosine"] is not None:
                caption += f", cos={pair['feature_cosine']:.3f}"
            out.append(f'<div class="pair">{img(image_grid(tiles, 2, 128), "pair")}<br>{caption}</div>')

        def histogram(ax: Any) -> None:
            ax.hist(section["pixel_nn"], bins=40, color="#4a7")
            ax.axvline(section["pixel_threshold"], color="#b00", ls="--", label="flag threshold")
            ax.set_xlabel("detail correlation of each generated image with its nearest training image")
            ax.legend()

        return "".join(out) + figure(histogram)
