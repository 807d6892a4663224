"""Image decoding and conversion to training-ready 8-bit grayscale."""

from .convert import Converted, ImageConfig, ImageStats, convert, convert_file, measure
from .decode import Decoded, ImageRejected, decode

__all__ = [
    "Converted",
    "Decoded",
    "ImageConfig",
    "ImageRejected",
    "ImageStats",
    "convert",
    "convert_file",
    "decode",
    "measure",
]
