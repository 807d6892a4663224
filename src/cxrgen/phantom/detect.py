"""Analytic detectors of the findings the phantom renderer draws, for measuring whether generated images show
what their prompts asked for. They read the phantom's fixed geometry (PA display: the patient's left is on the
image's right) from an 8-bit image of any size, and return a score; `calibrate` picks each threshold on real
phantom images, so a detector's own accuracy can be checked before it judges generated ones.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """The brightness of the brightest small patch in the upper chest on the image's right, where the device
    sits, relative to the image's own bright level."""
    region = _box(image, 0.62, 0.90, 0.10, 0.34)
    top = np.percentile(region, 99)
    reference = np.percentile(image, 95) + 1.0
    return float(top / reference)


def heart_width(image: np.ndarray) -> float:
    """Width of the bright heart shadow across the heart's row, as a share of the image width."""
    h, w = image.shape
    band = _box(image, 0.0, 1.0, 0.60, 0.68).mean(axis=0)
    lungs = np.concatenate([band[int(0.22 * w) : int(0.30 * w)], band[int(0.78 * w) : int(0.86 * w)]]).mean()
    spine = band[int(0.48 * w) : int(0.56 * w)].mean()
    bright = band > lungs + 0.5 * (spine - lungs)
    centre = int(0.54 * w)
    left, right = centre, centre
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < w - 1 and bright[right + 1]:
        right += 1
    return float((right - left + 1) / w)


DETECTORS: dict[str, Callable[[np.ndarray], float]] = {
    "effusion left (vs right)": effusion_side,
    "pacemaker (vs none)": pacemaker,
    "cardiomegaly (vs normal heart)": heart_width,
}


def calibrate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold that best separates labelled scores (label 1 above), and its accuracy."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    accuracy = [((scores > t) == labels).mean() for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])
