"""Writing generated PNGs so that no one can mistake them for real ones: text chunks say SYNTHETIC, an XMP packet
declares the IPTC digital source type, and the provenance (prompt, seed, model, adapters, sampler) travels along.
DICOM objects are written by generate/dicom.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.png import write_png
from ..synthetic_mark import png_marks


def png_text(provenance: dict[str, Any]) -> dict[str, str]:
    return {
        **png_marks(),
        "cxrgen:synthetic": "true",
        "cxrgen:provenance": json.dumps(provenance, sort_keys=True),
    }


def save_png(path: Path, pixels: np.ndarray, provenance: dict[str, Any]) -> Path:
    return write_png(path, pixels, png_text(provenance))
