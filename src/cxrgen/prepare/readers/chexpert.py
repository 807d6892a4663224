"""CheXpert: one CSV with Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 CheXpert labels.

The 14-label convention (1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned) is shared with
MIMIC-CXR's label files, so its decoding lives here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...config import option
from ...records import Finding, PatientKeyer, Record, Rejection, normalize_sex, parse_age, study_label
from ...tables import read_csv
from .base import READERS, ReadResult, ReleaseReader, with_progress

SOURCE = "chexpert"
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
UncertainPolicy = Literal["ignore", "positive"]
_PATIENT = re.compile(r"patient(\d+)")


def label_name(column: str) -> str:
    """CheXpert column to the lower-case label vocabulary PadChest uses ("No Finding" is "normal")."""
    return study_label(column).lower()


def findings_from_label_columns(row: dict[str, str], uncertain: UncertainPolicy) -> list[Finding]:
    """Positive labels, in the standard column order; uncertain (-1) ones too when the policy says so."""
    findings = []
    for column in CHEXPERT_LABELS:
        raw = row.get(column, "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if value == 1.0 or (value == -1.0 and uncertain == "positive"):
            findings.append(Finding(label_name(column)))
    return findings


def read_chexpert(csv_path: str | Path, keyer: PatientKeyer, uncertain: UncertainPolicy = "ignore") -> ReadResult:
    header, rows = read_csv(csv_path, required=("Path", "Sex", "Age", "Frontal/Lateral"))
    missing_labels = [c for c in CHEXPERT_LABELS if c not in header]
    if len(missing_labels) == len(CHEXPERT_LABELS):
        raise ValueError(f"{csv_path} has none of the 14 CheXpert label columns")
    result = ReadResult()
    for row_no, row in with_progress(rows, SOURCE):
        result.stats["rows"] += 1
        path = row["Path"].strip()
        match = _PATIENT.search(path)
        if not path or match is None:
            result.rejections.append(Rejection(row_no, path, "metadata: Path has no patientNNNNN folder"))
            continue
        frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
        ap_pa = row.get("AP/PA", "").strip().upper()
        projection = (ap_pa if ap_pa in ("AP", "PA") else "UNK") if frontal else "L"
        result.records.append(
            Record(
                **keyer.image_fields(SOURCE, path),
                source=SOURCE,
                image=path,
                row=row_no,
                **keyer.fields(SOURCE, match.group(1)),
                age=parse_age(row["Age"]),
                sex=normalize_sex(row["Sex"]),
                view=ap_pa or (None if frontal else "LATERAL"),  # laterals leave AP/PA blank
                projection=projection,
                findings=findings_from_label_columns(row, uncertain),
                labeler="chexpert-labeler",
            )
        )
    return result


@dataclass
class CheXpertOptions:
    uncertain: UncertainPolicy = option("ignore", "uncertain (-1) labels: ignore or positive")


@READERS.register
class CheXpertReader(ReleaseReader):
    name = "chexpert"
    help = "CheXpert: train.csv or valid.csv with its 14 label columns"
    Options = CheXpertOptions
    main_table = "CheXpert's train.csv or valid.csv"

    def read(self, csv: Path | None, images: Path | None, options: CheXpertOptions, keyer: PatientKeyer) -> ReadResult:
        return read_chexpert(csv, keyer, options.uncertain)  # type: ignore[arg-type]
