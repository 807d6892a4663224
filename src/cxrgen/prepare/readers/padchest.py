"""PadChest (BIMCV): the 36-column CSV with list-text labels, images at `<root>/<ImageDir>/<ImageID>`.

Labels come from the image-level `Labels` column; the report-sentence column gives them locations. Quirks
handled: an unnamed first column; `.csv` or gzipped; blank birth year, sex and view; LabelsLocalizationsBySentence
in two layouts (nested per sentence, or flat), with several labels sharing a sentence's locations, bare `nan`
items, `normal` sentences beside findings and side variants ("pleural effusion right side"); leading spaces;
repeated labels; `['']`, blank and `nan` label cells."""

from __future__ import annotations

from pathlib import Path

from ...records import (
    LOCATION_PREFIX,
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
from ...tables import read_csv
from ...vocabulary import split_side
from .base import READERS, ReadResult, ReleaseReader, with_progress
from .listtext import ListTextError, ListValue, parse_list_text

SOURCE = "padchest"
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
_LABELERS = {"physician": "physician", "rnn_model": "rnn"}


def read_padchest(csv_path: str | Path, keyer: PatientKeyer) -> ReadResult:
    _, rows = read_csv(csv_path, required=REQUIRED)
    result = ReadResult()
    stats = result.stats
    for row_no, row in with_progress(rows, SOURCE):
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
    names: list[str] = []
    if labels_text:
        names = [n for x in _flatten(parse_list_text(labels_text)) if (n := clean_text(x))]
        names = [n for n in names if not n.lower().startswith(LOCATION_PREFIX)]
    mentions: list[_Mention] | None = None
    layout = "labels-only"
    if sentence_text:
        try:
            items = parse_list_text(sentence_text)
        except ListTextError:
            if not names:
                raise
            notes.append("sentence cell malformed")  # it would only have given locations
            items = None
        if items is not None:
            layout = "nested" if any(isinstance(x, list) for x in items) else "flat"
            mentions = _mentions(items, notes)
    if not names:
        if mentions:
            notes.append("from sentences")
            # beside a finding, a normal sentence speaks of a normal structure, not of a normal study
            if any(not is_pseudo_label(label) for label, _ in mentions):
                normal = [m for m in mentions if name_key(m[0]) == "normal"]
                mentions = [m for m in mentions if name_key(m[0]) != "normal"]
                notes += ["sentence only: normal"] if normal else []
            findings = _once([Finding(label, tuple(places)) for label, places in mentions], notes)
            return findings, layout, tuple(notes)
        if mentions is None and not labels_text and "sentence cell malformed" not in notes:
            return None, layout, ()
        return [], layout, tuple(notes)
    # each label once; the sentences' locations gather in these lists
    named = [Finding(label, tuple(places)) for label, places in (_side(n, notes) for n in names)]
    stated = {name_key(f.label): (f.label, list(f.locations)) for f in _once(named, notes)}
    if mentions is not None:
        said: set[str] = set()
        only: dict[str, None] = {}
        for label, locations in mentions:
            k = name_key(label)
            if k in said and "repeat" not in notes:
                notes.append("repeat")
            said.add(k)
            target = stated.get(k)
            if target is None:
                only[f"sentence only: {label}"] = None
            elif locations and not is_pseudo_label(target[0]):
                target[1].extend(x for x in locations if x not in target[1])
        if said != stated.keys():
            notes.append("sentences differ")
            notes += only
    findings = [Finding(label, tuple(locations)) for label, locations in stated.values()]
    if "normal" in stated and any(not is_pseudo_label(f.label) for f in findings):
        notes.append("normal beside finding")
    return findings, layout, tuple(notes)


_Mention = tuple[str, list[str]]  # a label as a cell states it, and the locations stated with it


def _cell(row: dict[str, str], column: str) -> str:
    """A label cell's text; '' when blank or `nan` (a table written back by pandas)."""
    text = row.get(column, "").strip()
    return "" if text.lower() in ("nan", "none") else text


def _side(label: str, notes: list[str]) -> tuple[str, list[str]]:
    """A label and the locations it states: with a side written in ("pleural effusion right side"), the label
    alone at that side (noted for the audit)."""
    base, side = split_side(label)
    if side is None:
        return label, []
    notes.append(f"side variant: {label}")
    return base, [side]


def _once(findings: list[Finding], notes: list[str]) -> list[Finding]:
    """Each label once (`merge_repeats`), a repeat noted for the audit."""
    merged, repeated = merge_repeats(findings)
    if repeated and "repeat" not in notes:
        notes.append("repeat")
    return merged


def _mentions(items: list[ListValue], notes: list[str]) -> list[_Mention]:
    """The label mentions of a sentence cell, in either layout. Each nested list is a sentence; runs of top-level
    strings (the flat layout) form one stream. Within a sentence or stream, a run of locations belongs to every
    label since the previous run of locations; pseudo-labels take none. Repeats are kept in order."""
    out: list[_Mention] = []
    stream: list[str] = []
    for item in items:
        if isinstance(item, list):
            _stream(stream, out, notes)
            stream = []
            _stream(_flatten(item), out, notes)
        elif isinstance(item, str):
            stream.append(item)
    _stream(stream, out, notes)
    return out


def _stream(strings: list[str], out: list[_Mention], notes: list[str]) -> None:
    pending: list[_Mention] = []  # labels since the last run of locations
    owners: list[_Mention] = []  # the labels the current run of locations belongs to
    for raw in strings:
        text = raw.strip()
        if "  " in text:
            text = clean_text(text)
        if not text:
            continue
        if text[:4].lower() == LOCATION_PREFIX:
            if pending:  # a new run of locations: it belongs to the labels gathered since the last one
                owners, pending = [m for m in pending if not is_pseudo_label(m[0])], []
            location = text[len(LOCATION_PREFIX) :].strip()
            for _, locations in owners:
                if location and location not in locations:
                    locations.append(location)
        else:
            # split_side's own test, inlined: this loop meets every mention of a release (over a million)
            mention = _side(text, notes) if text[-4:].lower() in ("side", "ides") else (text, [])
            pending.append(mention)
            out.append(mention)


def _flatten(items: list[ListValue]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, list):
            out += _flatten(item)
        elif isinstance(item, str):
            out.append(item)
    return out


@READERS.register
class PadChestReader(ReleaseReader):
    name = "padchest"
    help = "PadChest (BIMCV): the labels CSV, 16-bit PNGs in numbered folders"
    main_table = "the PadChest labels CSV"

    def read(self, csv: Path | None, images: Path | None, options: None, keyer: PatientKeyer) -> ReadResult:
        return read_padchest(csv, keyer)  # type: ignore[arg-type]
