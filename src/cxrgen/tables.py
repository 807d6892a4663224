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


def _open_text(path: Path, strict: bool) -> io.TextIOBase:
    """UTF-8 text of a plain or gzipped file. `strict`: an undecodable byte is an error (a file a user wrote, e.g.
    saved as Latin-1); else it becomes U+FFFD (a release's table, where one odd byte must not stop the run)."""
    if path.is_dir():
        raise TableError(f"{path} is a folder: give the table file in it")
    if not path.is_file():
        raise TableError(f"{path} does not exist")
    with open(path, "rb") as fh:
        start = fh.read(2)
    if start in (b"\xff\xfe", b"\xfe\xff"):
        raise TableError(f"{path} is UTF-16 text (as spreadsheet programs save 'Unicode text'): save it as UTF-8")
    raw = gzip.open(path, "rb") if start == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict" if strict else "replace", newline="")


def _not_utf8(path: Path, where: str, exc: UnicodeDecodeError) -> TableError:
    return TableError(f"{path} {where}: byte 0x{exc.object[exc.start]:02x} is not UTF-8: save the file as UTF-8")


def read_csv(
    path: str | Path, required: tuple[str, ...] = (), strict: bool = False
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Columns and an iterator of (1-based data row, row). Values stay strings; blanks are ''; blank lines are
    skipped (their numbers are not reused).

    Handles `.csv` and gzipped files (by content, whatever the name), a BOM, and an unnamed first column.
    `strict` (files users write): bytes that are not UTF-8, and rows with more values than columns (an unquoted
    comma), are errors rather than replaced or dropped."""
    path = Path(path)
    fh = _open_text(path, strict)
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise TableError(f"{path} is empty") from None
    except UnicodeDecodeError as exc:
        fh.close()
        raise _not_utf8(path, "header", exc) from exc
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
                    if not any(v.strip() for v in values):
                        continue
                    if len(values) > width and strict and any(v.strip() for v in values[width:]):
                        raise TableError(
                            f"{path} line {reader.line_num}: {len(values)} values for {width} columns "
                            "(quote a value that contains commas)"
                        )
                    if len(values) < width:
                        values = values + [""] * (width - len(values))
                    yield i, dict(zip(header, values, strict=False))
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, f"after row {i}", exc) from exc
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise TableError(f"{path} is truncated or corrupt after row {i}: {exc}") from exc

    return header, rows()


def read_jsonl(path: str | Path, strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line; a bad line raises TableError naming it."""
    path = Path(path)
    with _open_text(path, strict) as fh:
        lines = enumerate(fh, start=1)
        i = 0
        while True:
            try:
                i, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, f"after line {i}", exc) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(f"{path} line {i}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise TableError(f"{path} line {i}: expected a JSON object")
            yield i, obj


def is_jsonl(path: Path) -> bool:
    return bool({".jsonl", ".json"} & {s.lower() for s in path.suffixes})


def read_table(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a table a user wrote (conditions, captions), read strictly: CSV, or JSON Lines for .jsonl/.json."""
    path = Path(path)
    return read_jsonl(path, strict=True) if is_jsonl(path) else read_csv(path, strict=True)[1]
