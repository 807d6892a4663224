"""Analytic detectors of the findings the phantom renderer draws, for measuring whether generated images show
what their prompts asked for. They read the phantom's geometry (PA display: the patient's left is on the image's
right) from an 8-bit image of any size, rendered square and prepared without border cropping (`cxrgen phantom
--square`, `--no-image.crop-border`), so that image and phantom coordinates agree. Each returns a score;
`calibrate` picks its threshold on real phantom images, so a detector's own accuracy is known before it judges
generated ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _box(image: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    h, w = image.shape
    return image[
        int(y0 * h) : max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w) : max(int(x0 * w) + 1, int(x1 * w))
    ].astype(np.float32)


def effusion_side(image: np.ndarray) -> float:
    """Positive when the patient's left lung base (image right) is brighter than the right one: fluid."""
    left_base = _box(image, 0.56, 0.80, 0.56, 0.72).mean()
    right_base = _box(image, 0.20, 0.44, 0.56, 0.72).mean()
    return float((left_base - right_base) / 255.0)


def pacemaker(image: np.ndarray) -> float:
    """The share of the image's brightest 1% of pixels that lie in the upper chest on the image's right, where the
    device sits (the device is the brightest thing in a phantom). Ranks, not intensities: darkening or
    re-windowing an image (any increasing intensity map) leaves the score as it was, so a generated image's overall
    brightness cannot pass for a device."""
    h, w = image.shape
    top = image >= np.percentile(image, 99)
    inside = top[int(0.10 * h) : int(0.34 * h), int(0.62 * w) : int(0.90 * w)].sum()
    return float(inside / max(1, top.sum()))


def heart_size(image: np.ndarray) -> float:
    """How far the heart shadow reaches into the lower lung fields: the brightness beside the heart (where only an
    enlarged heart reaches) above the lungs' level, as a share of the heart's own brightness above it."""
    side = (_box(image, 0.70, 0.79, 0.55, 0.66).mean() + _box(image, 0.29, 0.38, 0.55, 0.66).mean()) / 2
    lungs = (_box(image, 0.66, 0.76, 0.32, 0.44).mean() + _box(image, 0.28, 0.40, 0.32, 0.44).mean()) / 2
    centre = _box(image, 0.48, 0.60, 0.55, 0.66).mean()
    return float((side - lungs) / (centre - lungs + 1e-3))


def darkened(image: np.ndarray, mean: float, how: str) -> np.ndarray:
    """The image darkened to a mean brightness: scaled, gamma-curved, or re-windowed (shifted down and clipped, as
    a percentile window that lands on a bright device does)."""
    x = image.astype(np.float64)

    def curve(k: float) -> np.ndarray:
        if how == "scale":
            return x * k
        if how == "gamma":
            return 255 * (x / 255) ** k
        return np.clip((x - k) * 255 / (255 - k), 0, 255)

    lo, hi = {"scale": (0.0, 1.0), "gamma": (1.0, 20.0), "window": (0.0, 254.0)}[how]
    for _ in range(50):  # bisect the curve's parameter to the target mean
        k = (lo + hi) / 2
        darker = curve(k).mean() < mean
        if how == "scale":
            lo, hi = (k, hi) if darker else (lo, k)
        else:
            lo, hi = (lo, k) if darker else (k, hi)
    return np.clip(curve(k), 0, 255).astype(np.uint8)


def _has(row: dict, label: str, where: str | None = None) -> bool:
    return any(f["label"] == label and (where is None or where in f["locations"]) for f in row["findings"])


def _normal(row: dict) -> bool:
    return all(f["label"] == "normal" for f in row["findings"])


def _effusion_side(row: dict) -> int | None:
    left, right = _has(row, "pleural effusion", "left"), _has(row, "pleural effusion", "right")
    return 1 if left and not right else 0 if right and not left else None


@dataclass(frozen=True)
class Contrast:
    """A binary question about an image: its detector, the prompts that ask for each answer, and the answer a
    prepared row's labels give (None when the row is not part of the contrast)."""

    name: str
    detector: Callable[[np.ndarray], float]
    positive: str
    negative: str
    label: Callable[[dict], int | None]


CONTRASTS = [
    Contrast(
        "effusion left (vs right)",
        effusion_side,
        "chest x-ray, diagnosis pleural effusion, loc left",
        "chest x-ray, diagnosis pleural effusion, loc right",
        _effusion_side,
    ),
    Contrast(
        "pacemaker (vs none)",
        pacemaker,
        "chest x-ray, diagnosis pacemaker",
        "chest x-ray, diagnosis normal",
        lambda r: 1 if _has(r, "pacemaker") else 0 if _normal(r) else None,
    ),
    Contrast(
        "cardiomegaly (vs normal heart)",
        heart_size,
        "chest x-ray, diagnosis cardiomegaly, loc cardiac",
        "chest x-ray, diagnosis normal",
        lambda r: 1 if _has(r, "cardiomegaly") else 0 if _normal(r) else None,
    ),
]


def calibrate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold that best separates labelled scores (label 1 above), and its accuracy."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    accuracy = [((scores > t) == labels).mean() for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def labelled_scores(contrast: Contrast, rows: list[dict], images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The detector's scores and the labels (1/0) of the real images a contrast covers (other rows skipped)."""
    labelled = [(contrast.label(r), image) for r, image in zip(rows, images, strict=True)]
    labelled = [(y, image) for y, image in labelled if y is not None]
    scores = np.array([contrast.detector(image) for _, image in labelled])
    return scores, np.array([y for y, _ in labelled], dtype=int)


def calibrate_contrast(contrast: Contrast, rows: list[dict], images: list[np.ndarray]) -> tuple[float, float]:
    """Threshold and accuracy of a contrast's detector on labelled real images (rows outside the contrast skipped)."""
    scores, labels = labelled_scores(contrast, rows, images)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"'{contrast.name}' needs real images of both answers to calibrate on")
    return calibrate(scores, labels)
