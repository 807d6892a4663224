"""The image pipeline: decode -> statistics -> border crop -> resize (aspect kept) -> robust window -> 8-bit.

Used by `prepare` for training images and by `evaluate` to bring real images to the generated ones' form.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..config import ConfigError, option
from . import transforms as T
from .decode import Decoded, bits_range, decode


@dataclass
class ImageConfig:
    resolution: int = option(512, "output side in pixels (512 for SD 1.x/2.x base, 768 for SD 2 768-v)")
    aspect: Literal["pad", "crop"] = option("pad", "keep the aspect ratio by padding (black) or center-cropping")
    window_low: float = option(0.5, "lower percentile of the intensity window")
    window_high: float = option(99.5, "upper percentile of the intensity window")
    crop_border: bool = option(True, "crop black borders before resizing")
    border_threshold: float = option(0.05, "a row/column is border when darker than this share of the range")
    dicom_voi: bool = option(True, "apply a DICOM's VOI LUT or window when it has one")
    resample: Literal["area", "lanczos", "bicubic", "bilinear"] = option(
        "area",
        "resampling filter after block averaging: area (pixel-area average, like cv2.INTER_AREA), lanczos, ...",
    )
    max_pixels: int = option(100_000_000, "reject larger images (decompression-bomb guard)")

    def __post_init__(self) -> None:
        if not 64 <= self.resolution <= 4096 or self.resolution % 8:
            raise ConfigError(f"image.resolution must be a multiple of 8 between 64 and 4096, not {self.resolution}")
        if not 0 <= self.window_low < self.window_high <= 100:
            raise ConfigError(
                f"image.window_low ({self.window_low}) and image.window_high ({self.window_high}) must be "
                "percentiles with low < high"
            )

    def digest(self) -> str:
        """Changes whenever a setting that changes the output pixels changes (used to resume safely)."""
        values = asdict(self)
        values["size"] = values.pop("resolution")  # the name earlier versions hashed: their conversions stay valid
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ImageStats:
    """Measurements for quality control, relative to the image's nominal value range."""

    width: int
    height: int
    contrast: float  # (p99 - p1) / range
    std: float  # standard deviation / range
    saturated: float  # share of pixels at the top of the range
    border: float  # share of the area cropped as border


@dataclass
class Converted:
    image: np.ndarray  # uint8, size x size
    stats: ImageStats


def measure(decoded: Decoded, config: ImageConfig) -> tuple[ImageStats, T.Box, Image.Image, int]:
    """QC statistics and the content box, from a block-averaged preview (returned with its factor)."""
    factor = T.reduction_factor(decoded.width, decoded.height, config.resolution)
    preview = decoded.image.reduce(factor) if factor > 1 else decoded.image
    pixels = np.asarray(preview)
    sample = pixels[::2, ::2]  # plenty for percentiles and spread, at a quarter of the cost
    lo, p1, p99, hi = T.percentiles(sample, (0.5, 1, 99, 99.5))
    high = decoded.high if decoded.high is not None else bits_range(pixels.max(initial=0))
    box = (
        T.content_box(pixels, lo, hi, config.border_threshold)
        if config.crop_border
        else (0, 0, preview.width, preview.height)
    )
    span = max(high - decoded.low, 1e-6)
    area = (box[2] - box[0]) * (box[3] - box[1])
    stats = ImageStats(
        width=decoded.width,
        height=decoded.height,
        contrast=round((p99 - p1) / span, 4),
        std=round(float(sample.std(dtype=np.float64)) / span, 4),
        saturated=round(float(np.count_nonzero(sample >= high - 0.005 * span)) / max(sample.size, 1), 4),
        border=round(1.0 - area / max(pixels.size, 1), 4),
    )
    return stats, box, preview, factor


def convert(decoded: Decoded, config: ImageConfig) -> Converted:
    stats, box, preview, factor = measure(decoded, config)
    x0, y0, x1, y1 = box
    low, high = T.percentiles(np.asarray(preview)[y0:y1:2, x0:x1:2], (config.window_low, config.window_high))
    if config.aspect == "crop":
        box = T.center_square(box)
        out_size = (config.resolution, config.resolution)
    else:
        out_size = T.fit_inside(x1 - x0, y1 - y0, config.resolution)
    # Resample from the preview while it has (nearly) the output's resolution: a border trimmed off a 4x-reduced
    # preview may leave it a few percent short, and a <10% upscale of block-averaged pixels is invisible. A small
    # crop of a large image goes back to full resolution.
    if box[2] - box[0] >= 0.9 * out_size[0] and box[3] - box[1] >= 0.9 * out_size[1]:
        resized = T.resize(preview, out_size, box, config.resample)
    else:
        resized = T.resize(
            decoded.image, out_size, T.scale_box(box, factor, decoded.width, decoded.height), config.resample
        )
    image = T.pad_square(T.window(resized, low, high), config.resolution)
    return Converted(image, stats)


def convert_file(path: str | Path, config: ImageConfig) -> Converted:
    return convert(decode(path, config.max_pixels, config.dicom_voi), config)
