"""Decode an image file into a grayscale array with its nominal value range, bright meaning dense.

PNG (8- and 16-bit), JPEG, TIFF through Pillow; DICOM through pydicom with the modality LUT (rescale
slope/intercept), the VOI LUT or window when present, and MONOCHROME1 inverted. A grey picture in a colour
container (RGB, RGBA, grey with alpha, palette) becomes its channel mean, composited on black where it is not
opaque; a picture with colour in it is refused. Anything that cannot be read faithfully raises `ImageRejected`
with a reason fit for rejected.csv; nothing else is converted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from ..errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom")
_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I")
# Containers that may hold a grey picture: RGB (JPEGs are often saved so), with alpha, grey with alpha
# (premultiplied too), palette (with alpha too).
_COLOUR_MODES = ("RGB", "RGBA", "LA", "La", "P", "PA")
# The most a grey picture's pixels may differ between their channels (max minus min of R, G, B, 0..255), at
# the 99th percentile. Grey JPEGs are not exactly grey: a grey X-ray given per-channel noise of sigma 6 levels
# and saved with 4:2:0 chroma subsampling at quality 75-90 measured a p99 spread of 4-6 (uncompressed noise
# of sigma 3: 12). Colour measures far above: matplotlib's bluish-grey 'bone' map 32, a sepia tint 39,
# 'viridis' 134. A percentile, not the maximum, so that JPEG ringing at sharp edges and a small burnt-in
# coloured mark (an arrow, a label: under 1% of the pixels, like burnt-in text) do not reject an X-ray, while
# a colour overlay on more than 1% of it does.
GREY_SPREAD_P99 = 12


class ImageRejected(UserError):
    """The file cannot become a training image; `reason` says why. `lasting` is False where a rerun may succeed
    (the file is not there yet, a decoder is not installed yet): such images are tried again."""

    def __init__(self, reason: str, lasting: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.lasting = lasting


@dataclass
class Decoded:
    """A decoded image: Pillow mode "I" (integer data, 8 or 16 bits) or "F" (float: 8-bit sources, DICOM after
    its LUTs), bright meaning dense. Pillow keeps the resize path in C without copying to numpy first."""

    image: Image.Image
    low: float  # the value range the stored bits allow (after DICOM LUTs)
    high: float | None  # None: integer data whose bit depth is read off its maximum
    kind: str  # "png", "jpeg", "dicom", ...

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def pixels(self) -> np.ndarray:
        return np.asarray(self.image)

    @classmethod
    def from_array(cls, pixels: np.ndarray, low: float, high: float, kind: str = "array") -> Decoded:
        if pixels.dtype.kind in "ui" and pixels.min(initial=0) >= 0 and pixels.max(initial=0) <= 65535:
            return cls(Image.fromarray(pixels.astype(np.int32), "I"), low, high, kind)
        return cls(Image.fromarray(pixels.astype(np.float32), "F"), low, high, kind)


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def decode(path: str | Path, max_pixels: int = 100_000_000, dicom_voi: bool = True) -> Decoded:
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("image: file not found", lasting=False)
    if path.stat().st_size == 0:
        raise ImageRejected("image: empty file (0 bytes)")
    if is_dicom(path):
        return _decode_dicom(path, max_pixels, dicom_voi)
    return _decode_pillow(path, max_pixels)


def bits_range(max_value: float) -> float:
    """Nominal top of a 16-bit image's range: data stored in 10 or 12 of 16 bits is not stretched to 16."""
    return float(2 ** max(8, int(max_value).bit_length()) - 1)


def _decode_16bit_as_int32(im: Image.Image) -> bool:
    """Let Pillow unpack a 16-bit grayscale PNG straight into 32-bit integers (mode "I", which it can reduce and
    resize) instead of decoding to "I;16" and converting: the conversion costs as much as all later steps
    together. Uses Pillow's own "I;16B" -> "I" unpacker; any Pillow that lacks the hook takes the usual path."""
    tiles = getattr(im, "tile", None) or []
    if im.format != "PNG" or im.mode != "I;16" or not hasattr(im, "_mode") or not tiles:
        return False
    if any(t[0] != "zip" or t[3] != "I;16B" for t in tiles):
        return False
    im._mode = "I"  # noqa: SLF001
    return True


def _decode_pillow(path: Path, max_pixels: int) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image: too many pixels, possible decompression bomb ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ImageRejected(f"image: not a readable image ({type(exc).__name__})") from exc
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageRejected(f"image: {w}x{h} exceeds the {max_pixels:,}-pixel limit (possible decompression bomb)")
        mode, kind = im.mode, (im.format or path.suffix.lstrip(".")).lower()
        if mode not in _GREY_MODES + _COLOUR_MODES:
            raise ImageRejected(f"image: unsupported mode {mode}; save it as 8- or 16-bit grayscale")
        if _decode_16bit_as_int32(im):
            try:
                im.load()
                return Decoded(im, 0.0, None, kind)
            except Exception:  # noqa: BLE001 - a damaged file, or a Pillow without the hook: decode plainly
                im = Image.open(path)
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001
            raise ImageRejected(f"image: truncated or corrupt ({exc})") from exc
        if mode in _COLOUR_MODES:
            return Decoded(grey_of_colour(im), 0.0, 255.0, kind)
        if mode == "L":
            return Decoded(im.convert("F"), 0.0, 255.0, kind)
        if mode != "I":  # 16-bit: the top of the range follows from the data, measured on the preview
            return Decoded(im.convert("I"), 0.0, None, kind)
    lo, hi = im.getextrema()
    if lo < 0 or hi > 65535:
        raise ImageRejected(f"image: 32-bit integer pixels outside 0..65535 ({lo}..{hi})")
    return Decoded(im, 0.0, None, kind)


def grey_of_colour(im: Image.Image) -> Image.Image:
    """The grey picture in a colour container as float ("F", 0..255): the mean of R, G and B, over black where
    an alpha channel makes it transparent. Raises ImageRejected when the picture has colour in it.

    Every step runs in Pillow's C code (numpy's max/min over the channel axis alone took 500 ms on 5.7 MP)."""
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "La":  # already premultiplied: composited on black
        return im.getchannel(0).convert("F")
    if im.mode in ("LA", "RGBA"):
        im = _on_black(im)
    if im.mode == "L":  # grey with alpha: grey by construction
        return im.convert("F")
    spread = channel_spread_p99(im)
    if spread > GREY_SPREAD_P99:
        raise ImageRejected(
            f"image: colour {mode} image (99% of pixels have channels up to {spread} apart, grey allows "
            f"{GREY_SPREAD_P99} of 255); a radiograph should be grayscale"
        )
    # the mean rounded to whole levels (Pillow's matrix conversion has no float output): a third of a level
    # at most, which the resize to training size averages away
    return im.convert("L", matrix=(1 / 3, 1 / 3, 1 / 3, 0)).convert("F")


def channel_spread_p99(im: Image.Image, sample: int = 1_000_000) -> int:
    """The 99th percentile over pixels of max(R, G, B) - min(R, G, B) of an RGB image.

    Measured on a regular grid of about `sample` pixels (a nearest-neighbour resize picks exact pixel values):
    a percentile from a million pixels is as good as from all, and a 3,000 px JPEG's check costs a ninth."""
    w, h = im.size
    step = max(1, int((w * h / sample) ** 0.5))
    if step > 1:
        im = im.resize((max(1, w // step), max(1, h // step)), Image.Resampling.NEAREST)
    r, g, b = im.split()
    high = ImageChops.lighter(ImageChops.lighter(r, g), b)
    low = ImageChops.darker(ImageChops.darker(r, g), b)
    histogram = ImageChops.subtract(high, low).histogram()
    target, seen = 0.99 * sum(histogram), 0
    for value, count in enumerate(histogram):
        seen += count
        if seen >= target:
            return value
    return 255


def _on_black(im: Image.Image) -> Image.Image:
    """An "LA" or "RGBA" image composited on black (what a viewer shows on a dark background), alpha dropped."""
    alpha = im.getchannel("A")
    base = im.convert(im.mode[:-1])
    if alpha.getextrema()[0] == 255:  # fully opaque
        return base
    return Image.composite(base, Image.new(base.mode, base.size), alpha)


def _decode_dicom(path: Path, max_pixels: int, dicom_voi: bool) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"image: not a readable DICOM file ({type(exc).__name__})") from exc
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols == 0:
        raise ImageRejected("image: DICOM file has no pixel data")
    if rows * cols > max_pixels:
        raise ImageRejected(f"image: {cols}x{rows} exceeds the {max_pixels:,}-pixel limit")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageRejected(f"image: DICOM PhotometricInterpretation {photometric} is not grayscale")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = (
            f" (transfer syntax {syntax.name}; install pydicom's decoders: "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
            if syntax is not None and syntax.is_compressed
            else ""
        )
        raise ImageRejected(f"image: DICOM pixel data cannot be decoded{hint}: {exc}", lasting=not hint) from exc
    if arr.ndim != 2:
        raise ImageRejected(f"image: DICOM with {arr.ndim}-D pixel data (multi-frame or colour) is not supported")
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    # the nominal range, through the same LUTs as the pixels; stored values are integers, which a LUT sequence
    # uses as indices
    ramp = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=np.int64)
    values = apply_modality_lut(arr, ds)
    ramp = apply_modality_lut(ramp, ds)
    if dicom_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        values = apply_voi_lut(_integral(values), ds, index=0)
        ramp = apply_voi_lut(_integral(ramp), ds, index=0)
    values = np.asarray(values, dtype=np.float32)
    ramp = np.asarray(ramp, dtype=np.float64)
    low, high = float(ramp.min()), float(ramp.max())
    if photometric == "MONOCHROME1":  # bright means low values: flip within the nominal range
        values = (low + high) - values
    return Decoded(Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), "F"), low, high, "dicom")


def _integral(values: np.ndarray) -> np.ndarray:
    """Whole-valued modality output (slope 1, as usual) as integers: a VOI LUT sequence indexes by value."""
    if values.dtype.kind in "iu":
        return values
    whole = np.rint(values)
    return whole.astype(np.int64) if np.array_equal(whole, values) else values
