"""PadChest (BIMCV): the 36-column CSV with list-text labels, images at `<root>/<ImageDir>/<ImageID>`.

Quirks handled (shared/spec/data.md): an unnamed first column; `.csv` or gzipped; blank birth year, sex and
view; LabelsLocalizationsBySentence in two layouts (nested per sentence, or flat); several labels sharing a
sentence's locations; bare `nan` items; leading spaces; repeated labels; pseudo-labels.
"""

from __future__ import annotations

from pathlib import Path

from ..records import (
    Finding,
    PatientKeyer,
    Record,
    Rejection,
    clean_text,
    is_pseudo_label,
    normalize_projection,
    normalize_sex,
    normalize_view,
)
from .base import ReadResult
from .listtext import ListTextError, ListValue, parse_list_text
from .tables import read_csv

SOURCE = "padchest"
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
LOCATION_PREFIX = "loc "
_LABELERS = {"physician": "physician", "rnn_model": "rnn"}


def read_padchest(csv_path: str | Path, keyer: PatientKeyer) -> ReadResult:
    _, rows = read_csv(csv_path, required=REQUIRED)
    result = ReadResult()
    stats = result.stats
    for row_no, row in rows:
        stats["rows"] += 1
        image_id = row["ImageID"].strip()
        image_dir = _folder(row["ImageDir"])
        image = f"{image_dir}/{image_id}" if image_dir else image_id
        if not image_id:
            result.rejections.append(Rejection(row_no, "", "metadata: blank ImageID"))
            continue
        try:
            findings, layout = parse_findings(row)
        except ListTextError as exc:
            result.rejections.append(Rejection(row_no, image, f"labels: malformed list text ({exc})"))
            continue
        if findings is None:
            result.rejections.append(Rejection(row_no, image, "labels: missing"))
            continue
        stats[f"layout {layout}"] += 1
        result.records.append(
            Record(
                **keyer.image_fields(SOURCE, image),
                source=SOURCE,
                image=image,
                row=row_no,
                **keyer.fields(SOURCE, row["PatientID"]),
                age=_age(row.get("StudyDate_DICOM", ""), row.get("PatientBirth", "")),
                sex=normalize_sex(row.get("PatientSex_DICOM")),
                view=normalize_view(row.get("ViewPosition_DICOM")),
                projection=normalize_projection(row["Projection"]),
                modality=clean_text(row.get("Modality_DICOM", "")).upper() or None,
                findings=findings,
                labeler=_LABELERS.get(row.get("MethodLabel", "").strip().lower()),
            )
        )
    return result


def _folder(raw: str) -> str:
    text = raw.strip()
    try:
        return str(int(float(text)))
    except ValueError:
        return text


def _age(study_date: str, birth_year: str) -> int | None:
    """Study year minus birth year; the dates themselves are never kept."""
    try:
        study_year = int(float(study_date.strip())) // 10000
        birth = int(float(birth_year.strip()))
    except ValueError:
        return None
    age = study_year - birth
    return age if 0 <= age <= 120 else None


def parse_findings(row: dict[str, str]) -> tuple[list[Finding] | None, str]:
    """Findings from LabelsLocalizationsBySentence, or from Labels + Localizations when that cell is blank.

    Returns (findings, layout) where layout is "nested", "flat" or "labels-only"; findings is None when no
    label cell is filled. A by-sentence cell that names no label (`[nan]`, `[]`) defers to a filled Labels cell,
    so labels are never lost to "no findings". Raises ListTextError when a cell is filled but malformed."""
    by_sentence = row.get("LabelsLocalizationsBySentence", "").strip()
    labels = row.get("Labels", "").strip()
    if by_sentence:
        items = parse_list_text(by_sentence)
        findings = findings_from_items(items)
        if findings or not labels:
            return findings, "nested" if any(isinstance(x, list) for x in items) else "flat"
    if not labels:
        return None, ""
    names = [clean_text(x) for x in _flatten(parse_list_text(labels))]
    return [Finding(n) for n in names if n and not n.startswith(LOCATION_PREFIX)], "labels-only"


def findings_from_items(items: list[ListValue]) -> list[Finding]:
    """Turn either layout into findings. Each nested list is a sentence; runs of top-level strings (the flat
    layout) form one stream. Within a sentence or stream, a run of locations belongs to every label since the
    previous run of locations. Pseudo-labels take no locations. Repeats are kept in order."""
    findings: list[Finding] = []
    stream: list[str] = []
    for item in items:
        if isinstance(item, list):
            findings += _sentence(stream)
            stream = []
            findings += _sentence(_flatten(item))
        elif isinstance(item, str):
            stream.append(item)
    return findings + _sentence(stream)


def _flatten(items: list[ListValue]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, list):
            out += _flatten(item)
        elif isinstance(item, str):
            out.append(item)
    return out


def _sentence(items: list[str]) -> list[Finding]:
    findings: list[Finding] = []
    labels: list[str] = []  # labels since the last location run
    locations: list[str] = []
    owners: list[str] = []  # labels the current location run belongs to

    def flush() -> None:
        findings.extend(
            Finding(label, () if is_pseudo_label(label) else tuple(locations)) for label in owners
        )

    for raw in items:
        text = raw.strip()
        if "  " in text:
            text = clean_text(text)
        if not text:
            continue
        if text.lower().startswith(LOCATION_PREFIX):
            if labels:  # a new location run starts: it belongs to the labels gathered since the last one
                flush()
                owners, labels, locations = labels, [], []
            location = text[len(LOCATION_PREFIX) :].strip()
            if location and location not in locations:
                locations.append(location)
        else:
            if locations or owners:
                flush()
                owners, locations = [], []
            labels.append(text)
    flush()
    findings.extend(Finding(label) for label in labels)
    return findings
