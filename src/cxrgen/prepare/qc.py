"""Automatic quality control of source images, and contact sheets for the manual look the paper did by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import check_fraction, option
from ..grid import save_grid
from ..imaging import ImageStats


@dataclass
class QCConfig:
    min_side: int = option(256, "flag images whose shorter side is below this many pixels")
    min_contrast: float = option(0.05, "flag when (p99 - p1) is below this share of the value range")
    max_saturated: float = option(0.25, "flag when more than this share of pixels sits at the top of the range")
    max_border: float = option(0.5, "flag when black borders cover more than this share of the area")
    min_std: float = option(0.005, "flag as near constant when the standard deviation is below this share")
    reject: bool = option(True, "drop flagged images (else keep them and list their flags in the metadata)")
    contact_sheet: int = option(64, "images per contact sheet of kept and rejected images (0: none)")

    def __post_init__(self) -> None:
        for name in ("min_contrast", "max_saturated", "max_border", "min_std"):
            check_fraction(getattr(self, name), f"qc.{name}")


def qc_flags(stats: ImageStats, config: QCConfig) -> list[str]:
    """Names of the checks an image fails, with the measured value."""
    flags = []
    if stats.std < config.min_std:
        flags.append(f"near_constant (std {stats.std:.3f} < {config.min_std})")
    if min(stats.width, stats.height) < config.min_side:
        flags.append(f"too_small ({stats.width}x{stats.height} < {config.min_side})")
    if stats.contrast < config.min_contrast:
        flags.append(f"low_contrast ({stats.contrast:.3f} < {config.min_contrast})")
    if stats.saturated > config.max_saturated:
        flags.append(f"saturated ({stats.saturated:.2f} > {config.max_saturated})")
    if stats.border > config.max_border:
        flags.append(f"mostly_border ({stats.border:.2f} > {config.max_border})")
    return flags


def contact_sheet(images: list[tuple[np.ndarray, str]], path: Path, thumb: int = 160, columns: int = 8) -> Path:
    """A grid of thumbnails, each captioned (e.g. with its rejection reason), saved as PNG."""
    return save_grid(images, path, columns, thumb)
