"""A small PNG writer for grayscale (and RGB) images, with text chunks.

Pillow picks a filter per row by trial, which costs more than decoding the source image. Radiographs are smooth
from row to row, so the Up filter with zlib's run-length strategy gives files as small as Pillow's level 6 at a
tenth of the time. Text chunks carry provenance (e.g. that an image is synthetic).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from ..fileio import atomic_path

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of a (H, W) grayscale or (H, W, 3) RGB array, uint8 or uint16; `text` becomes iTXt chunks."""
    rgb = pixels.ndim == 3 and pixels.shape[2] == 3
    if not (pixels.ndim == 2 or rgb) or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png takes a 2-D (or RGB) uint8 or uint16 array, not {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    depth = 8 if pixels.dtype == np.uint8 else 16
    rows = np.ascontiguousarray(pixels.astype(">u2") if depth == 16 else pixels).view(np.uint8).reshape(height, -1)
    up = rows.copy()
    up[1:] -= rows[:-1]  # Up filter: each byte minus the byte above (mod 256)
    raw = np.hstack([np.full((height, 1), 2, np.uint8), up]).tobytes()
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    body = compressor.compress(raw) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 2 if rgb else 0, 0, 0, 0)
    out = [_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        out.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    out += [_chunk(b"IDAT", body), _chunk(b"IEND", b"")]
    return b"".join(out)


def write_png(path: str | Path, pixels: np.ndarray, text: dict[str, str] | None = None) -> Path:
    """Write atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(pixels, text))
    return Path(path)
