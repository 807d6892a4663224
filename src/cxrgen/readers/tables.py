"""Open the tables a release ships: CSV (plain or gzipped) and JSON Lines, as rows of strings."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # PadChest reports are long


class TableError(ValueError):
    """A table is missing, unreadable or lacks required columns."""


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise TableError(f"{path} does not exist")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


def read_csv(
    path: str | Path, required: tuple[str, ...] = ()
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Columns and an iterator of (1-based data row, row). Values stay strings; blanks are ''.

    Handles `.csv` and gzipped files (by content, whatever the name), a BOM, and an unnamed first column."""
    path = Path(path)
    fh = _open_text(path)
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise TableError(f"{path} is empty") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        fh.close()
        raise TableError(f"{path} cannot be read: {exc}") from exc
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        fh.close()
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise TableError(f"{path} lacks column(s) {', '.join(missing)}; it has: {shown}")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        width = len(header)
        i = 0
        with fh:
            try:
                for i, values in enumerate(reader, start=1):
                    if len(values) < width:
                        values = values + [""] * (width - len(values))
                    yield i, dict(zip(header, values, strict=False))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise TableError(f"{path} is truncated or corrupt after row {i}: {exc}") from exc

    return header, rows()


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line; a bad line raises TableError naming it."""
    path = Path(path)
    with _open_text(path) as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(f"{path} line {i}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise TableError(f"{path} line {i}: expected a JSON object")
            yield i, obj


def read_table(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV or JSON Lines file, chosen by extension (.jsonl/.json are JSON Lines)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if ".jsonl" in suffixes or ".json" in suffixes:
        return read_jsonl(path)
    return read_csv(path)[1]
