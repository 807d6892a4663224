"""Image sets to evaluate: a prepared or generated dataset (with metadata), one of its splits, or a plain folder.

Images of any size or mode are read as 8-bit grayscale (16-bit ones scaled by their range, never by dropping
the low byte); each extractor then brings them to its own input form.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..contracts import METADATA_FILE
from ..fileio import stat_digest
from ..imaging import ImageRejected, decode
from ..imaging import transforms as T
from ..imaging.decode import bits_range

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


class ImageSetError(ValueError):
    """An image folder is missing or empty."""


@dataclass
class ImageSet:
    name: str
    root: Path
    files: list[Path]
    rows: list[dict[str, Any]] = field(default_factory=list)  # metadata per file, when the folder has it

    def __len__(self) -> int:
        return len(self.files)

    @property
    def digest(self) -> str:
        """Identity for feature caches: paths, sizes and modification times."""
        return stat_digest(self.files)

    def patient_keys(self) -> list[str]:
        """Each image's patient (`patient_key`); an image without one is its own patient."""
        return patient_keys(self.rows) if self.rows else [f"image-{i}" for i in range(len(self.files))]

    def prompts(self) -> list[str | None]:
        return [r.get("text") for r in self.rows] if self.rows else [None] * len(self.files)

    def load(self, index: int, size: int | None = None) -> np.ndarray:
        """8-bit grayscale, optionally resized to size x size (aspect kept by padding)."""
        return load_gray(self.files[index], size, self.integer_top)

    @functools.cached_property
    def integer_top(self) -> float | None:
        """One top value for the set's integer images of unstated bit depth (16-bit PNGs): the widest bit depth
        among up to 32 images spread through the set. Read off each image alone, a 12-bit image whose brightest
        pixel happens to stay under 2048 would be stretched to twice the brightness of its neighbours."""
        picks = sorted({round(k) for k in np.linspace(0, len(self.files) - 1, min(32, len(self.files)))})
        tops = [_integer_top(self.files[i]) for i in picks]
        return max((t for t in tops if t is not None), default=None)


def patient_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Each metadata row's patient (`patient_key`); a row without one is its own patient."""
    return [r.get("patient_key") or f"image-{i}" for i, r in enumerate(rows)]


def _integer_top(path: Path) -> float | None:
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    try:
        with Image.open(path) as im:
            if im.mode not in ("I", "I;16", "I;16B"):
                return None
        decoded = decode(path)
    except (OSError, ImageRejected):
        return None  # load() reports it
    return bits_range(np.asarray(decoded.image).max(initial=0)) if decoded.high is None else None


def load_gray(path: Path, size: int | None = None, integer_top: float | None = None) -> np.ndarray:
    """8-bit grayscale; with `size`, resized to size x size (aspect kept, padded). Integer images of unstated bit
    depth map [0, integer_top] (the set's, see ImageSet.integer_top) or else their own bit depth's range."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            if im.mode == "L":
                return _square(np.asarray(im), size)
    try:
        decoded = decode(path)
    except ImageRejected as exc:
        raise ImageSetError(f"{path}: {exc.reason}") from exc
    pixels = np.asarray(decoded.image, dtype=np.float32)
    high = decoded.high
    if high is None:
        high = max(bits_range(pixels.max(initial=0)), integer_top or 0.0)
    # A plain linear map of the stored range: evaluation compares images as they are, without re-windowing.
    return _square(T.window(pixels, decoded.low, high), size)


def _square(gray: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or gray.shape == (size, size):
        return gray
    w, h = T.fit_inside(gray.shape[1], gray.shape[0], size)
    resized = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return T.pad_square(resized, size)


def open_set(path: str | Path, split: str | None, name: str) -> ImageSet:
    """A folder with metadata.jsonl, a dataset folder (its `split` subfolder), or any folder of images."""
    root = Path(path).expanduser().resolve()  # absolute: metrics.json names its files, the report reads them again
    if not root.is_dir():
        raise ImageSetError(f"{name} folder {root} does not exist")
    if not (root / METADATA_FILE).is_file():
        splits = sorted(p.name for p in root.iterdir() if (p / METADATA_FILE).is_file())
        if split in splits:
            root = root / split
        elif splits:
            raise ImageSetError(
                f"{name}: {root} has no '{split}' split; it has {', '.join(splits)} (set the {name} split)"
            )
        elif split and (root / split).is_dir():  # a plain folder split into train/, test/, ... (no metadata)
            root = root / split
    meta = root / METADATA_FILE
    if meta.is_file():
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        files = [root / r["file_name"] for r in rows]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise ImageSetError(f"{name}: {len(missing)} file(s) listed in {meta} are missing, e.g. {missing[0]}")
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        rows = []
    if not files:
        raise ImageSetError(f"{name} folder {root} holds no images")
    return ImageSet(name, root, files, rows)
