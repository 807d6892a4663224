"""Small image transforms, each with one job, composed by `convert.py`.

Large reductions go through Pillow's integer block average (`reduce`), which is an antialiasing filter in its own
right and costs a few milliseconds for a 2,500 px image; the chosen filter then does the last factor below 2. The
reduced image also serves the statistics (window, borders, QC), so the full-resolution pixels are read once.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
}


def reduction_factor(width: int, height: int, target: int) -> int:
    """The largest whole factor that keeps the longer side at or above `target`."""
    return max(1, max(width, height) // target)


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Percentiles (0-100); non-negative integer images use a histogram, ~20x faster than sorting."""
    flat = values.ravel()
    if flat.size == 0:
        return [0.0 for _ in qs]
    if flat.dtype.kind in "ui" and flat.min() >= 0 and flat.max() <= 65535:
        cdf = np.cumsum(np.bincount(flat, minlength=256))
        return [float(np.searchsorted(cdf, q / 100.0 * (flat.size - 1), side="right")) for q in qs]
    return [float(v) for v in np.percentile(flat, qs)]


def content_box(preview: np.ndarray, dark: float, bright: float, threshold: float = 0.05) -> Box:
    """The box inside black borders. A row or column is content when more than a fifth of its pixels rise above
    `threshold` of the way from the image's dark end to its bright end (e.g. its 0.5th and 99.5th percentiles),
    so lungs (dark, but not black) count and burned-in markers in a border do not."""
    h, w = preview.shape
    if bright <= dark:
        return (0, 0, w, h)
    above = preview > dark + threshold * (bright - dark)
    rows = np.nonzero(np.count_nonzero(above, axis=1) > 0.2 * w)[0]
    cols = np.nonzero(np.count_nonzero(above, axis=0) > 0.2 * h)[0]
    if rows.size == 0 or cols.size == 0:
        return (0, 0, w, h)
    # Step one pixel further in where a border was found: that preview pixel averages border and content.
    first_col, last_col, first_row, last_row = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    x0, y0 = first_col + (first_col > 0), first_row + (first_row > 0)
    x1, y1 = last_col + (last_col == w - 1), last_row + (last_row == h - 1)
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


def center_square(box: Box) -> Box:
    """The largest centered square inside a box (for aspect 'crop')."""
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
    return (cx, cy, cx + side, cy + side)


def fit_inside(width: int, height: int, size: int) -> tuple[int, int]:
    """Output size keeping the aspect ratio with the longer side equal to `size`."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_box(box: Box, factor: int, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (x0 * factor, y0 * factor, min(width, x1 * factor), min(height, y1 * factor))


def resize(image: Image.Image, size: tuple[int, int], box: Box, resample: str = "lanczos") -> np.ndarray:
    """Antialiased resize of the `box` region to (width, height), as float32."""
    if image.size != size or box != (0, 0, *image.size):
        image = image.resize(size, RESAMPLING[resample], box=box, reducing_gap=2.0)
    return np.asarray(image, dtype=np.float32)


def window(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (8-bit), clipping outside; a flat window maps to mid-gray."""
    if high <= low:
        return np.full(pixels.shape, 128, dtype=np.uint8)
    scaled = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def pad_square(image: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Center an 8-bit image on a size x size canvas."""
    h, w = image.shape
    if (h, w) == (size, size):
        return image
    canvas = np.full((size, size), fill, dtype=image.dtype)
    y, x = (size - h) // 2, (size - w) // 2
    canvas[y : y + h, x : x + w] = image
    return canvas
