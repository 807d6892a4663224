"""What every reader returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..records import Record, Rejection


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)  # "rows", per-layout counts, ...
