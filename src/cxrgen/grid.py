"""Grids of captioned thumbnails: QC contact sheets, training sample grids, report figures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CAPTION_HEIGHT = 14


def image_grid(tiles: list[tuple[np.ndarray, str]], columns: int = 8, thumb: int = 160) -> Image.Image:
    """Thumbnails left to right, top to bottom, each with a one-line caption under it."""
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("L", (columns * thumb, rows * (thumb + CAPTION_HEIGHT)), 32)
    draw = ImageDraw.Draw(sheet)
    for i, (pixels, text) in enumerate(tiles):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + CAPTION_HEIGHT)
        tile = Image.fromarray(_to_uint8(pixels)).convert("L")
        tile.thumbnail((thumb, thumb))
        sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
        draw.text((x + 2, y + thumb), text[: thumb // 6], fill=230)
    return sheet


def save_grid(tiles: list[tuple[np.ndarray, str]], path: Path, columns: int = 8, thumb: int = 160) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(tiles, columns, thumb).save(path)
    return path


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)  # display only: the top byte is what a screen shows
    if pixels.dtype != np.uint8:
        return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return pixels


def prompt_grid(
    rows: list[tuple[str, list[np.ndarray]]], column_labels: list[str], cell: int = 160, label_width: int = 260
) -> Image.Image:
    """One row per prompt (its text wrapped on the left), one column per seed (labelled on top): the layout of
    the original paper's sample figures."""
    columns = max((len(images) for _, images in rows), default=1)
    header = CAPTION_HEIGHT + 4
    sheet = Image.new("L", (label_width + columns * cell, header + len(rows) * cell), 255)
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(column_labels):
        draw.text((label_width + j * cell + 4, 2), label, fill=0)
    chars = max(10, label_width // 6)
    for i, (prompt, images) in enumerate(rows):
        y = header + i * cell
        lines = textwrap.wrap(prompt, chars)[: cell // CAPTION_HEIGHT]
        draw.multiline_text((4, y + 4), "\n".join(lines), fill=0, spacing=2)
        for j, pixels in enumerate(images):
            tile = Image.fromarray(_to_uint8(pixels)).convert("L").resize((cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(tile, (label_width + j * cell, y))
    return sheet
