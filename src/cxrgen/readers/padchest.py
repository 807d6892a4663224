"""PadChest (BIMCV): the 36-column CSV with list-text labels, images at `<root>/<ImageDir>/<ImageID>`.

Labels come from the image-level `Labels` column; the report-sentence column gives them locations. Quirks
handled: an unnamed first column; `.csv` or gzipped; blank birth year, sex and view; LabelsLocalizationsBySentence
in two layouts (nested per sentence, or flat), with several labels sharing a sentence's locations, bare `nan`
items, `normal` sentences beside findings and side variants ("pleural effusion right side"); leading spaces;
repeated labels; `['']`, blank and `nan` label cells."""

from __future__ import annotations

from pathlib import Path

from ..records import (
    Finding,
    PatientKeyer,
    Record,
    Rejection,
    clean_text,
    is_pseudo_label,
    merge_repeats,
    name_key,
    normalize_modality,
    normalize_projection,
    normalize_sex,
    normalize_view,
)
from ..vocabulary import split_side
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
            findings, layout, notes = parse_findings(row)
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
                modality=normalize_modality(row.get("Modality_DICOM")),
                findings=findings,
                labeler=_LABELERS.get(row.get("MethodLabel", "").strip().lower()),
                label_notes=notes,
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


def parse_findings(row: dict[str, str]) -> tuple[list[Finding] | None, str, tuple[str, ...]]:
    """An image's findings, the layout of its sentence cell, and notes for the label audit.

    The label set is the image-level `Labels` cell, each label once, in its order. The sentence cell
    (LabelsLocalizationsBySentence) labels report sentences: a sentence about a normal structure says `normal`
    beside real findings, and some labels carry a side ("pleural effusion right side"). It gives the labels their
    locations (a side variant gives its side) and nothing else. A Labels cell that names no label (blank, `nan`,
    `['']`, `[]`) defers to the sentence cell. Findings are None when neither cell is filled; a filled but
    malformed cell raises ListTextError."""
    labels_text = _cell(row, "Labels")
    sentence_text = _cell(row, "LabelsLocalizationsBySentence")
    notes: list[str] = []
    sentence: list[Finding] | None = None
    layout = "labels-only"
    if sentence_text:
        items = parse_list_text(sentence_text)
        layout = "nested" if any(isinstance(x, list) for x in items) else "flat"
        sentence = [_with_side(f, notes) for f in findings_from_items(items)]
    names: list[str] = []
    if labels_text:
        names = [n for x in _flatten(parse_list_text(labels_text)) if (n := clean_text(x))]
        names = [n for n in names if not n.lower().startswith(LOCATION_PREFIX)]
    if not names:
        if sentence:
            notes.append("from sentences")
            return _once(sentence, notes), layout, tuple(notes)
        if sentence is None and not labels_text:
            return None, layout, ()
        return [], layout, tuple(notes)
    findings = _once([_with_side(Finding(n), notes) for n in names], notes)
    stated = {name_key(f.label) for f in findings}
    if sentence is not None:
        places: dict[str, list[str]] = {}
        for f in sentence:
            known = places.setdefault(name_key(f.label), [])
            known += [x for x in f.locations if x not in known]
        findings = [
            Finding(
                f.label,
                ()
                if is_pseudo_label(f.label)
                else tuple(dict.fromkeys(f.locations + tuple(places.get(name_key(f.label), ())))),
            )
            for f in findings
        ]
        said = [name_key(f.label) for f in sentence]
        if len(said) != len(set(said)) and "repeat" not in notes:
            notes.append("repeat")
        if set(said) != stated:
            notes.append("sentences differ")
            notes += dict.fromkeys(
                f"sentence only: {f.label}" for f in sentence if name_key(f.label) not in stated
            )
    if "normal" in stated and any(not is_pseudo_label(f.label) for f in findings):
        notes.append("normal beside finding")
    return findings, layout, tuple(notes)


def _cell(row: dict[str, str], column: str) -> str:
    """A label cell's text; '' when blank or `nan` (a table written back by pandas)."""
    text = row.get(column, "").strip()
    return "" if text.lower() in ("nan", "none") else text


def _with_side(finding: Finding, notes: list[str]) -> Finding:
    """ "pleural effusion right side" is the label "pleural effusion" at the location "right"."""
    if not finding.label.lower().endswith(("side", "sides")):
        return finding
    label, side = split_side(finding.label)
    if side is None:
        return finding
    notes.append(f"side variant: {finding.label}")
    return Finding(label, tuple(dict.fromkeys((side, *finding.locations))))


def _once(findings: list[Finding], notes: list[str]) -> list[Finding]:
    merged, repeated = merge_repeats(findings)
    if repeated and "repeat" not in notes:
        notes.append("repeat")
    return merged


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
