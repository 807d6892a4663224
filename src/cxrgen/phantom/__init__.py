"""Phantom chest radiographs with known findings, written as a PadChest-format release (demo, tests, benchmarks)."""

from .release import PADCHEST_COLUMNS, padchest_row, write_padchest_csv, write_release
from .render import render

__all__ = ["PADCHEST_COLUMNS", "padchest_row", "render", "write_padchest_csv", "write_release"]
