"""What every reader returns, and where a record's image file is."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..records import Record, Rejection


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)  # "rows", per-layout counts, ...


def resolve_image(root: Path, relative: str) -> Path | None:
    """The source file for a record, or None if it lies outside the images root (also through a link). A
    CheXpert-style path that repeats the root's own name (CheXpert-v1.0-small/train/...) works either way."""
    candidate = (root / relative).resolve()
    parts = Path(relative).parts
    if not candidate.exists() and len(parts) > 1 and parts[0] == root.name:
        candidate = (root / Path(*parts[1:])).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None
