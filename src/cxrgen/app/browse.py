"""The dataset browser's answers: what a prepared dataset holds, its images filtered by condition, and what
preparation left out (with the images quality control rejected)."""

from __future__ import annotations

import csv
import gc
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contracts import ContractError, PrepareManifest, metadata_path, read_metadata
from ..generate.conditions import row_labels
from ..records import age_band, name_key
from .folders import SPLITS, Folder

MAX_PAGE = 200


def whole(text: str, digits: int) -> int | None:
    """A non-negative whole number of at most `digits` ASCII digits (not "-1", "²" or 5,000 digits), else None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= digits else None


@dataclass(frozen=True)
class Filters:
    split: str | None = None
    label: str | None = None
    sex: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    projection: str | None = None
    qc: str = "any"  # any, flagged (kept with quality-control flags) or clean

    @property
    def label_key(self) -> str:
        return name_key(self.label or "")

    @classmethod
    def from_query(cls, query: dict[str, str]) -> Filters:
        def number(key: str) -> int | None:
            return whole(query.get(key, ""), 3)  # an age

        return cls(
            split=query.get("split") or None,
            label=query.get("label") or None,
            sex=query.get("sex") or None,
            age_min=number("age_min"),
            age_max=number("age_max"),
            projection=query.get("projection") or None,
            qc=query.get("qc") or "any",
        )

    def keep(self, row: dict[str, Any], labels: frozenset[str]) -> bool:
        """Whether `row` (with `labels`, its label keys) passes."""
        age = row.get("age")
        flagged = bool(row.get("qc_flags"))
        return (
            (self.label is None or self.label_key in labels)
            and (self.sex is None or row.get("sex") == self.sex)
            and (self.age_min is None or (age is not None and age >= self.age_min))
            and (self.age_max is None or (age is not None and age <= self.age_max))
            and (self.projection is None or row.get("projection") == self.projection)
            and (self.qc == "any" or flagged == (self.qc == "flagged"))
        )


@dataclass
class _Loaded:
    """A dataset as read once per change of its files: rows, each row's label keys, the manifest, summaries."""

    stamp: tuple[float, ...]
    rows: dict[str, list[dict[str, Any]]]
    labels: dict[str, list[frozenset[str]]]  # name_key of each row's labels, computed once (filters use them)
    manifest: dict[str, Any]
    summaries: dict[str | None, dict[str, Any]] = field(default_factory=dict)


class Dataset:
    """A prepared dataset (every split), read again when a metadata file or prepare.json changes."""

    _cache: dict[Path, _Loaded] = {}
    _lock = threading.Lock()

    def __init__(self, folder: Folder):
        self.folder = folder
        self.root = folder.path
        self.loaded = self._load()
        self.rows = self.loaded.rows

    def _load(self) -> _Loaded:
        files = [metadata_path(self.root, s) for s in SPLITS]
        stamp = tuple(f.stat().st_mtime if f.is_file() else 0.0 for f in [*files, PrepareManifest.path(self.root)])
        with self._lock:  # one reading of a large dataset, whoever asks first
            cached = self._cache.get(self.root)
            if cached is None or cached.stamp != stamp:
                rows = {s: read_metadata(self.root, s) for s, f in zip(SPLITS, files, strict=True) if f.is_file()}
                labels = {s: [frozenset(row_labels(r)) for r in split_rows] for s, split_rows in rows.items()}
                cached = self._cache[self.root] = _Loaded(stamp, rows, labels, self._manifest())
                # a large dataset is millions of objects that live as long as the app: out of the garbage
                # collector's full passes, which otherwise stall a request for a second now and then
                gc.freeze()
        return cached

    def selected(self, split: str | None) -> list[tuple[str, dict[str, Any], frozenset[str]]]:
        return [
            (s, row, labels)
            for s, rows in self.rows.items()
            if split in (None, s)
            for row, labels in zip(rows, self.loaded.labels[s], strict=True)
        ]

    def summary(self, split: str | None = None) -> dict[str, Any]:
        with self._lock:
            if split not in self.loaded.summaries:
                self.loaded.summaries[split] = self._summary(split)
            return self.loaded.summaries[split]

    def _summary(self, split: str | None) -> dict[str, Any]:
        rows = [row for _, row, _ in self.selected(split)]

        def tally(values: list[Any]) -> list[list[Any]]:
            return [[k, n] for k, n in Counter("unknown" if v is None else v for v in values).most_common()]

        manifest = self.loaded.manifest
        return {
            "id": self.folder.id,
            "name": self.folder.name,
            "splits": {s: len(r) for s, r in self.rows.items()},
            "images": len(rows),
            "counts": {
                "label": tally([f["label"] for r in rows for f in r.get("findings") or []]),
                "sex": tally([r.get("sex") for r in rows]),
                "age": sorted(tally([age_band(r.get("age")) for r in rows]), key=lambda kv: _band_order(kv[0])),
                "projection": tally([r.get("projection") for r in rows]),
            },
            "projections": sorted({str(r["projection"]) for r in rows if r.get("projection")}),
            "qc_flagged": sum(1 for r in rows if r.get("qc_flags")),
            "contact_sheets": manifest.get("contact_sheets", []),
            "rejected": manifest.get("rejected"),
            "rejected_by_reason": manifest.get("rejected_by_reason", {}),
            "source": (manifest.get("config") or {}).get("source"),
        }

    def _manifest(self) -> dict[str, Any]:
        try:
            return PrepareManifest.read(self.root).to_json()
        except (ContractError, OSError):
            return {}

    def images(self, filters: Filters, offset: int = 0, limit: int = 48) -> dict[str, Any]:
        matching = [(s, row) for s, row, labels in self.selected(filters.split) if filters.keep(row, labels)]
        page = matching[max(offset, 0) : max(offset, 0) + min(max(limit, 1), MAX_PAGE)]
        return {"total": len(matching), "offset": offset, "rows": [self._shown(s, row) for s, row in page]}

    def _shown(self, split: str, row: dict[str, Any]) -> dict[str, Any]:
        keys = ("id", "text", "age", "sex", "view", "projection", "modality", "findings", "qc_flags", "source")
        return {
            "split": split,
            "url": f"/files/data/{self.folder.id}/{split}/{row['file_name']}",
            **{k: row.get(k) for k in keys if k in row},
        }

    def rejected(self, offset: int = 0, limit: int = 48) -> dict[str, Any]:
        """rejected.csv's rows, with a link to the image where quality control kept one."""
        path = self.root / "rejected.csv"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    kept = r.get("file_name") or ""
                    url = f"/files/data/{self.folder.id}/{kept}" if kept else None
                    # not the source path: it may hold patient ids (rejected.csv stays local)
                    rows.append({"row": r.get("row"), "reason": r.get("reason"), "url": url})
        rows.sort(key=lambda r: r["url"] is None)  # the ones with an image first
        reasons = Counter((r["reason"] or "").split(" (")[0] for r in rows)
        page = rows[max(offset, 0) : max(offset, 0) + min(max(limit, 1), MAX_PAGE)]
        return {"total": len(rows), "by_reason": reasons.most_common(), "rows": page}


def _band_order(band: str) -> int:
    head = band.split("-")[0]
    return int(head) if head.isdigit() else 10**6
