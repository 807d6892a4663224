"""Readers turn a raw release into `Record`s. This package is the only place that parses source tables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..records import PatientKeyer
from .base import ReadResult
from .chexpert import UncertainPolicy, read_chexpert
from .folder import read_folder
from .mimic import ReportSection, read_mimic
from .padchest import read_padchest
from .tables import TableError

SourceKind = Literal["padchest", "mimic", "chexpert", "folder"]

__all__ = ["ReadResult", "SourceKind", "TableError", "read_source"]


def read_source(
    kind: SourceKind,
    keyer: PatientKeyer,
    *,
    csv: str | Path | None = None,
    images: str | Path | None = None,
    labels_csv: str | Path | None = None,
    split_csv: str | Path | None = None,
    sections_csv: str | Path | None = None,
    patients_csv: str | Path | None = None,
    captions: str | Path | None = None,
    uncertain: UncertainPolicy = "ignore",
    report_section: ReportSection = "impression",
) -> ReadResult:
    if kind == "folder":
        if images is None:
            raise TableError("a folder source needs --images DIR")
        return read_folder(images, keyer, captions)
    if csv is None:
        what = {
            "padchest": "the PadChest labels CSV",
            "mimic": "mimic-cxr-2.0.0-metadata.csv",
            "chexpert": "CheXpert's train.csv or valid.csv",
        }[kind]
        raise TableError(f"a {kind} source needs --csv pointing at {what}")
    if kind == "padchest":
        return read_padchest(csv, keyer)
    if kind == "chexpert":
        return read_chexpert(csv, keyer, uncertain)
    return read_mimic(csv, keyer, labels_csv, split_csv, sections_csv, patients_csv, uncertain, report_section)
