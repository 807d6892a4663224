"""Memorization: is a generated image a copy of a training image?

Each generated image is compared with every training image by the correlation of their fine detail (64 px)
against the training image as it is, mirrored, and center-cropped in 1% steps down to 75%, so mirrored and cropped
copies are caught, and by feature cosine. The thresholds are calibrated on the training set itself: with m the highest
similarity between images of two different training patients (or its `quantile`), a generated image is flagged
when it is closer to a training image than m + margin * (1 - m), i.e. clearly closer than any two patients are
(margin 0.5: half way from m to identical). Independent samples rarely beat m by much; copies sit near 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .imagesets import ImageSet

SIZE = 64
CROPS = tuple(round(1.0 - 0.01 * k, 2) for k in range(1, 26))  # center crops down to 75%, in 1% steps
WORK = 128  # training images are held at this size while their variants are made


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
    return np.asarray(
        Image.fromarray(gray[y : y + keep, x : x + keep]).resize((size, size), Image.Resampling.BOX)
    )


def _load_all(images: ImageSet) -> list[np.ndarray]:
    return [_resize(images.load(i), WORK) for i in range(len(images))]


def variant_vectors(held: list[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (N, SIZE*SIZE)) for each variant of the training images: as is, mirrored, and center crops."""
    for mirrored in (False, True):
        for crop in (1.0, *CROPS):
            name = ("mirrored " if mirrored else "") + (
                "as is" if crop == 1.0 else f"crop {int(round(crop * 100))}%"
            )
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

    def summary(self, generated: ImageSet, train: ImageSet, top: int = 12) -> dict[str, Any]:
        order = np.argsort(-self.pixel_nn)[:top]
        return {
            "flagged": len(self.flagged),
            "flagged_fraction": len(self.flagged) / max(len(generated), 1),
            "pixel_threshold": self.pixel_threshold,
            "feature_threshold": self.feature_threshold,
            "pixel_nn_mean": float(self.pixel_nn.mean()),
            "feature_nn_mean": float(self.feature_nn.mean()) if self.feature_nn is not None else None,
            "pixel_nn": [round(float(v), 4) for v in self.pixel_nn],
            "feature_nn": [round(float(v), 4) for v in self.feature_nn]
            if self.feature_nn is not None
            else None,
            "flagged_images": [str(generated.files[i]) for i in self.flagged[:200]],
            "closest_pairs": [
                {
                    "generated": str(generated.files[i]),
                    "train": str(train.files[self.pixel_index[i]]),
                    "pixel_correlation": float(self.pixel_nn[i]),
                    "variant": str(self.pixel_variant[i]),
                    "feature_cosine": float(self.feature_nn[i]) if self.feature_nn is not None else None,
                    "flagged": bool(i in self.flagged),
                }
                for i in order
            ],  # fmt: skip
        }


def _threshold(nearest: np.ndarray, quantile: float, margin: float) -> float:
    finite = nearest[np.isfinite(nearest)]
    if finite.size == 0:  # every training image belongs to one patient: nothing to calibrate on
        return 1.0 - 1e-6
    m = float(np.quantile(finite, quantile))
    return m + margin * (1.0 - m)


def check(generated: ImageSet, train: ImageSet, gen_features: np.ndarray | None = None,
          train_features: np.ndarray | None = None, quantile: float = 1.0, margin: float = 0.5) -> Memorization:  # fmt: skip
    train_held = _load_all(train)
    gen_vectors = np.asarray(
        [detail_vector(_resize(g, SIZE)) for g in _load_all(generated)], dtype=np.float32
    )
    train_plain = np.asarray([detail_vector(_resize(g, SIZE)) for g in train_held], dtype=np.float32)
    patients = _patients(train)
    best = np.full((len(generated), len(train)), -np.inf, dtype=np.float32)
    best_variant = np.zeros((len(generated), len(train)), dtype=np.int16)
    self_best = np.full((len(train), len(train)), -np.inf, dtype=np.float32)
    names = []
    for k, (name, vectors) in enumerate(variant_vectors(train_held)):
        names.append(name)
        sims = gen_vectors @ vectors.T
        better = sims > best
        best[better], best_variant[better] = sims[better], k
        np.maximum(self_best, train_plain @ vectors.T, out=self_best)
    self_best[patients[:, None] == patients[None, :]] = -np.inf
    pixel_threshold = _threshold(self_best.max(axis=1), quantile, margin)
    pixel_index, pixel_nn = best.argmax(axis=1), best.max(axis=1)
    flagged = set(np.nonzero(pixel_nn > pixel_threshold)[0].tolist())
    feature_nn = feature_index = feature_threshold = None
    if gen_features is not None and train_features is not None:
        t, g = _unit(train_features), _unit(gen_features)
        train_self = t @ t.T
        train_self[patients[:, None] == patients[None, :]] = -np.inf
        feature_threshold = _threshold(train_self.max(axis=1), quantile, margin)
        feature_sims = g @ t.T
        feature_index, feature_nn = feature_sims.argmax(axis=1), feature_sims.max(axis=1)
        flagged |= set(np.nonzero(feature_nn > feature_threshold)[0].tolist())
    variants = np.asarray([names[best_variant[i, j]] for i, j in enumerate(pixel_index)])
    return Memorization(sorted(flagged), pixel_threshold, feature_threshold, pixel_nn, pixel_index, variants,
                        feature_nn, feature_index)  # fmt: skip
