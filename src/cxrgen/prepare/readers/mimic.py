"""MIMIC-CXR-JPG: metadata CSV + CheXpert/NegBio label CSV, optional official split, report sections and
MIMIC-IV patients (the only place age and sex live). Images at `files/p<2 digits>/p<subject>/s<study>/<dicom>.jpg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...config import option
from ...records import (
    PatientKeyer,
    Record,
    Rejection,
    normalize_projection,
    normalize_sex,
    normalize_view,
)
from ...tables import read_csv
from .base import READERS, ReadResult, ReleaseReader, with_progress
from .chexpert import UncertainPolicy, findings_from_label_columns

SOURCE = "mimic"
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
ReportSection = Literal["impression", "findings"]


def read_mimic(
    metadata_csv: str | Path,
    keyer: PatientKeyer,
    labels_csv: str | Path | None = None,
    split_csv: str | Path | None = None,
    sections_csv: str | Path | None = None,
    patients_csv: str | Path | None = None,
    uncertain: UncertainPolicy = "ignore",
    report_section: ReportSection = "impression",
) -> ReadResult:
    labels = _by_study(labels_csv) if labels_csv else None
    # the release labels the same studies twice, with the CheXpert labeler and with NegBio: say which one
    labeler = ("negbio" if "negbio" in Path(labels_csv).name.lower() else "chexpert-labeler") if labels_csv else None
    splits = (
        {r["dicom_id"].strip(): r["split"].strip() for _, r in read_csv(split_csv, ("dicom_id", "split"))[1]}
        if split_csv
        else {}
    )
    sections = _sections(sections_csv, report_section) if sections_csv else {}
    patients = (
        {r["subject_id"].strip(): r for _, r in read_csv(patients_csv, ("subject_id",))[1]} if patients_csv else {}
    )

    _, rows = read_csv(metadata_csv, required=("dicom_id", "subject_id", "study_id", "ViewPosition"))
    result = ReadResult()
    for row_no, row in with_progress(rows, SOURCE):
        result.stats["rows"] += 1
        dicom, subject, study = row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip()
        if not (dicom and subject.isdigit() and study.isdigit()):
            result.rejections.append(Rejection(row_no, dicom, "metadata: blank or non-numeric dicom/subject/study id"))
            continue
        image = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        findings = []
        if labels is not None:
            label_row = labels.get(study)
            if label_row is None:
                result.rejections.append(Rejection(row_no, image, "labels: study not in the label file"))
                continue
            findings = findings_from_label_columns(label_row, uncertain)
        patient = patients.get(subject, {})
        # ViewPosition is blank for some images whose View Code Sequence says what they are
        view = normalize_view(row["ViewPosition"]) or normalize_view(row.get("ViewCodeSequence_CodeMeaning"))
        result.records.append(
            Record(
                **keyer.image_fields(SOURCE, image),
                source=SOURCE,
                image=image,
                row=row_no,
                **keyer.fields(SOURCE, subject),
                age=_age(patient, row.get("StudyDate", "")),
                sex=normalize_sex(patient.get("gender")),
                view=view,
                projection=normalize_projection(view) if view else None,
                findings=findings,
                caption=sections.get(study),
                labeler=labeler,
                official_split=_SPLITS.get(splits.get(dicom, "")),
            )
        )
    if split_csv:
        result.stats["with official split"] = sum(r.official_split is not None for r in result.records)
    return result


def _by_study(path: str | Path) -> dict[str, dict[str, str]]:
    return {r["study_id"].strip(): r for _, r in read_csv(path, ("subject_id", "study_id"))[1]}


def _sections(path: str | Path, section: ReportSection) -> dict[str, str]:
    """study_id -> the chosen report section (falling back to the other when blank)."""
    out = {}
    for _, row in read_csv(path, ("study",))[1]:
        study = row["study"].strip().lstrip("s")
        other = "findings" if section == "impression" else "impression"
        text = " ".join((row.get(section) or row.get(other) or "").split())
        if text:
            out[study] = text
    return out


def _age(patient: dict[str, str], study_date: str) -> int | None:
    """MIMIC-IV anchor_age at anchor_year, moved to the (equally shifted) study year."""
    try:
        anchor_age = int(float(patient["anchor_age"]))
        anchor_year = int(float(patient["anchor_year"]))
        study_year = int(float(study_date)) // 10000
    except (KeyError, ValueError):
        return None
    age = anchor_age + study_year - anchor_year
    return age if 0 <= age <= 120 else None


@dataclass
class MimicOptions:
    labels_csv: str | None = option(None, "mimic-cxr-2.0.0-chexpert.csv or -negbio.csv", path=True)
    split_csv: str | None = option(None, "mimic-cxr-2.0.0-split.csv (the official split)", path=True)
    sections_csv: str | None = option(None, "report sections CSV (study, impression, findings)", path=True)
    patients_csv: str | None = option(None, "MIMIC-IV patients.csv for age and sex", path=True)
    uncertain: UncertainPolicy = option("ignore", "uncertain (-1) labels: ignore or positive")
    report_section: ReportSection = option("impression", "report section used as caption")


@READERS.register
class MimicReader(ReleaseReader):
    name = "mimic"
    help = "MIMIC-CXR-JPG: the metadata CSV, with its label, split, section and patient tables"
    Options = MimicOptions
    main_table = "mimic-cxr-2.0.0-metadata.csv"

    def read(self, csv: Path | None, images: Path | None, options: MimicOptions, keyer: PatientKeyer) -> ReadResult:
        o = options
        return read_mimic(
            csv,  # type: ignore[arg-type]
            keyer,
            o.labels_csv,
            o.split_csv,
            o.sections_csv,
            o.patients_csv,
            o.uncertain,
            o.report_section,
        )
