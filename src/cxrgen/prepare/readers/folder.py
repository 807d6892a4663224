"""A plain folder of images (PNG, JPEG, TIFF, DICOM), with an optional table of captions and metadata.

The table is CSV or JSON Lines: `--captions FILE`, or metadata.jsonl, metadata.csv, captions.jsonl or
captions.csv in the folder. Its columns are matched ignoring case, spaces, underscores and hyphens:

- the image file (relative to the folder): `file_name`, `filename`, `file`, `path`, `image`, `image_path`,
  `Image Index` (NIH ChestX-ray14); with `folder`, the subfolder it is in (the ieee8023 covid-chestxray-dataset:
  `<folder>/<filename>`). A name not found as given is looked for in its `folder`, then by a base name that is
  unique among the files under the folder (prepare.json's `reader` counts both);
- `patient_id` (`Patient ID`), `sex` (`gender`, `Patient Gender`), `age` (`Patient Age`, also DICOM's `047Y`);
- `view` (`View Position`), `projection`, `modality` (`X-ray` says no more than a radiograph; CT, MR, US, ...
  are kept in the record for the filters to drop). Without a projection, a known view gives it (`L` is a
  lateral, `AP Supine` is AP_horizontal); a view that names no radiographic projection (`Axial`) gives none;
- `findings` (`finding`, `labels`, `Finding Labels`): a JSON list of names or {label, locations}, or text of
  names separated by `/`, `;` or `|` (`Pneumonia/Viral/COVID-19`, `Cardiomegaly|Effusion`), each name
  optionally followed by its locations (`pleural effusion@left,costophrenic angle`); `No Finding` is read
  as `normal`, as other releases write it;
- `text` or `caption`: a caption.

Placeholder values ('?', 'todo', 'unknown', 'nan', 'n/a', ...) are missing. Other columns (dates, notes, URLs)
are ignored. A table none of whose rows names an existing image, or one without rows, is an error. Without a
table, every image under the folder is taken. DICOM files contribute their header fields either way, where the
table leaves them out: the patient id above all, which keeps a patient's images in one split.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from ...config import option
from ...contracts import METADATA_FILE
from ...imaging.decode import is_dicom
from ...records import (
    Finding,
    PatientKeyer,
    Record,
    Rejection,
    clean_text,
    findings_from_value,
    is_known_view,
    is_missing,
    normalize_modality,
    normalize_projection,
    normalize_sex,
    normalize_view,
    parse_age,
    study_label,
)
from ...tables import TableError, is_jsonl, read_csv, read_jsonl
from ...vocabulary import settle_findings
from .base import READERS, ReadResult, ReleaseReader, resolve_image, with_progress

log = logging.getLogger(__name__)

SOURCE = "folder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DEFAULT_CAPTION_FILES = (METADATA_FILE, "metadata.csv", "captions.jsonl", "captions.csv")  # an imagefolder too
# The table's column names for each field, in order of preference: a row's value is the first one filled.
COLUMNS: dict[str, tuple[str, ...]] = {
    "file": ("file_name", "filename", "file", "path", "image", "image_path", "Image Index"),
    "folder": ("folder",),
    "patient_id": ("patient_id", "Patient ID"),
    "sex": ("sex", "gender", "Patient Gender", "Patient Sex"),
    "age": ("age", "Patient Age"),
    "view": ("view", "View Position"),
    "projection": ("projection",),
    "modality": ("modality",),
    "findings": ("findings", "finding", "labels", "Finding Labels"),
    "caption": ("text", "caption"),
}
# DICOM dates an age is counted to when PatientAge is absent, the study's first
_DICOM_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def find_captions(root: Path) -> Path | None:
    for name in DEFAULT_CAPTION_FILES:
        if (root / name).is_file():
            return root / name
    return None


def column_key(name: str) -> str:
    """How column names are compared: "Patient ID", "patient_id" and "PatientID" are one."""
    return re.sub(r"[\s_\-]+", "", name).lower()


@lru_cache(maxsize=256)  # one entry for a CSV; JSON Lines rows may differ in their keys
def match_columns(names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each field's columns among `names`, in order of preference."""
    by_key: dict[str, str] = {}
    for name in names:
        by_key.setdefault(column_key(name), name)
    matched = {}
    for field, aliases in COLUMNS.items():
        found = tuple(dict.fromkeys(by_key[k] for a in aliases if (k := column_key(a)) in by_key))
        if found:
            matched[field] = found
    return matched


def read_folder(root: str | Path, keyer: PatientKeyer, captions: str | Path | None = None) -> ReadResult:
    root = Path(root)
    if not root.is_dir():
        raise TableError(f"image folder {root} does not exist")
    captions = Path(captions) if captions else find_captions(root)
    if captions is None:
        return _from_files(root, keyer)
    result = _from_table(root, captions, keyer)
    settle_findings(result.records)  # a table may repeat a label or write a side into it, as PadChest's does
    return result


def _from_table(root: Path, table: Path, keyer: PatientKeyer) -> ReadResult:
    header, rows = _open_table(table)
    result = ReadResult()
    files = _Files(root)
    seen_columns: dict[str, None] = dict.fromkeys(header)
    file_columns: dict[str, None] = {}
    example = ""
    for row_no, row in with_progress(rows, SOURCE):
        result.stats["rows"] += 1
        seen_columns.update(dict.fromkeys(row))
        fields = _fields(row)
        file_columns.update(dict.fromkeys(match_columns(tuple(row)).get("file", ())))
        if "file" not in fields:
            result.rejections.append(Rejection(row_no, "", f"metadata: no {' / '.join(COLUMNS['file'])} value"))
            continue
        example = example or str(fields["file"])
        name, how = files.find(str(fields["file"]), fields.get("folder"))
        result.stats[f"files {how}"] += 1
        path = root / name
        if how.startswith("found") and is_dicom(path):
            fields = {**dicom_fields(path), **fields}
        try:
            result.records.append(_record(name, fields, row_no, keyer))
        except ValueError as exc:
            result.rejections.append(Rejection(row_no, name, f"metadata: {exc}"))
    _check_found(table, root, result, list(seen_columns), list(file_columns), example)
    return result


def _open_table(table: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    if is_jsonl(table):
        return [], read_jsonl(table, strict=True)
    return read_csv(table, strict=True)


def _check_found(
    table: Path, root: Path, result: ReadResult, columns: list[str], file_columns: list[str], example: str
) -> None:
    """A table that names no existing image is the wrong table or has its file column under another name:
    an error, not a run that rejects every row."""
    stats = result.stats
    if stats["rows"] == 0:
        if not columns:
            raise TableError(f"{table} has no rows")
        raise TableError(f"{table} has a header ({', '.join(c for c in columns if c)}) but no rows")
    for how in ("found in its folder column", "found by base name"):
        if stats[f"files {how}"]:
            log.warning("%s: %d image file names %s under %s", table.name, stats[f"files {how}"], how, root)
    if sum(stats[k] for k in stats if k.startswith("files found")):
        lost = stats["files not found"] + stats["files with an ambiguous base name"]
        if lost:
            log.warning("%s: %d rows name an image not found under %s (rejected as such)", table.name, lost, root)
        return
    accepted = ", ".join(COLUMNS["file"])
    names = ", ".join(c for c in columns if c)
    if not file_columns:
        raise TableError(
            f"{table} has no image file column; its columns: {names}; name one of: {accepted} "
            "(relative to the images folder, with `folder` for a subfolder)"
        )
    given = f"e.g. {example!r}" if example else "blank in every row"
    raise TableError(
        f"{table}: none of its {stats['rows']} rows names an image under {root} (column "
        f"{' / '.join(file_columns)}, {given}); its columns: {names}; a file column may be named {accepted}, "
        "relative to the images folder, with `folder` for a subfolder"
    )


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    """The row's values by field name, placeholders left out."""
    fields = {}
    for field, columns in match_columns(tuple(row)).items():
        value = next((v for c in columns if not _missing(v := row.get(c))), None)
        if value is not None:
            fields[field] = value.strip() if isinstance(value, str) else value
    return fields


def _missing(value: Any) -> bool:
    return value == [] or (not isinstance(value, list | dict) and is_missing(value))


class _Files:
    """Finds a table's file names under the root: as given, in the row's folder, or by a unique base name."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, list[str]] | None = None

    def find(self, name: str, folder: Any) -> tuple[str, str]:
        """(the name relative to the root, how it was found). A name that escapes the root is left as given
        (prepare refuses it)."""
        name = self._relative(name.replace("\\", "/"))
        path = PurePosixPath(name)
        if path.is_absolute() or posixpath.normpath(name).split("/")[0] == "..":
            return name, "outside the folder"
        if self._exists(name):
            return name, "found as given"
        joined = f"{clean_text(folder).strip('/')}/{name}" if folder is not None else name
        if joined != name and self._exists(joined):
            return joined, "found in its folder column"
        matches = self._index().get(path.name, [])
        if len(matches) == 1:
            return matches[0], "found by base name"
        # where the table says it is: the image stage reports it missing, and a rerun finds it there
        return joined, "with an ambiguous base name" if matches else "not found"

    def _relative(self, name: str) -> str:
        """An absolute path inside the root, as tables written on the same machine have: relative to it."""
        path = Path(name)
        if path.is_absolute():
            for root in (self.root, self.root.resolve()):
                if path.is_relative_to(root):
                    return path.relative_to(root).as_posix()
        return name

    def _exists(self, name: str) -> bool:
        """A file under the root, found as prepare will find it."""
        path = resolve_image(self.root, name)
        return path is not None and path.is_file()

    def _index(self) -> dict[str, list[str]]:
        """Every file under the root by its base name; listed once, when a name is first not found."""
        if self._by_name is None:
            self._by_name = {}
            for path in sorted(self.root.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    self._by_name.setdefault(path.name, []).append(path.relative_to(self.root).as_posix())
        return self._by_name


def _record(name: str, fields: dict[str, Any], row_no: int, keyer: PatientKeyer) -> Record:
    view = fields.get("view")
    given = fields.get("projection")
    projection = projection_of_view(view) if given is None else normalize_projection(_text(given))
    return Record(
        **keyer.image_fields(SOURCE, name),
        source=SOURCE,
        image=name,
        row=row_no,
        **keyer.fields(SOURCE, _text(fields.get("patient_id"))),
        age=parse_age(fields.get("age")),
        sex=normalize_sex(_text(fields.get("sex"))),
        view=normalize_view(_text(view)),
        projection=projection,
        modality=normalize_modality(_text(fields.get("modality"))),
        findings=parse_findings(fields.get("findings")),
        caption=_text(fields.get("caption")),
    )


def projection_of_view(raw: Any) -> str | None:
    """The projection a view states: a known radiographic view (`L` and `LL` are L, `AP Supine` is
    AP_horizontal, an oblique is itself); None for a word that names no projection (`Axial`, `Coronal`, a
    generic view), so the frontal filter counts such an image as unknown rather than as a projection."""
    text = _text(raw)
    view = normalize_view(text)
    return normalize_projection(text) if is_known_view(view) else None


def parse_findings(value: Any) -> list[Finding]:
    """Findings from a JSON list (or its text), or from text in `records.parse_finding_text`'s form (names
    separated by ';', '|', '/' or ',', with optional `@location,location`). Placeholder names ('todo', '?') are
    left out."""
    if value is None:
        return []
    findings = [f for f in findings_from_value(value) if not is_missing(f.label)]
    # "No Finding" (NIH, ieee8023, CheXpert) is the study-level label the other releases call normal
    return [f._replace(label=study_label(f.label)) for f in findings]


def _text(value: Any) -> str | None:
    if value is None or is_missing(value):
        return None
    return clean_text(value) or None


def _from_files(root: Path, keyer: PatientKeyer) -> ReadResult:
    result = ReadResult()
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))
    for row_no, path in enumerate(files, start=1):
        result.stats["rows"] += 1
        name = path.relative_to(root).as_posix()
        fields = dicom_fields(path) if is_dicom(path) else {}
        result.records.append(_record(name, fields, row_no, keyer))
    return result


def _is_image(path: Path) -> bool:
    """By suffix, or for a file without one (PACS and CD exports: IM000001, a UID) by its DICOM header."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return not path.name.startswith(".") and (path.suffix == "" or path.suffix[1:].isdigit()) and is_dicom(path)


def dicom_fields(path: Path) -> dict[str, Any]:
    """Demographics and acquisition from a DICOM header (pixels are not read here), placeholders left out.
    Dates are read only to count an age from, and never kept."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the image stage reports unreadable files with their reason
        return {}
    fields = {
        "age": ds.get("PatientAge") or dicom_age(ds.get("PatientBirthDate"), _dicom_dates(ds)),
        "sex": ds.get("PatientSex"),
        "view": ds.get("ViewPosition"),
        "modality": ds.get("Modality"),
        "patient_id": ds.get("PatientID"),
    }
    return {k: str(v).strip() if not isinstance(v, int) else v for k, v in fields.items() if not _missing(v)}


def _dicom_dates(ds: Any) -> Iterable[Any]:
    return (ds.get(keyword) for keyword in _DICOM_DATES)


def dicom_age(birth: Any, dates: Iterable[Any]) -> int | None:
    """Whole years from a DICOM birth date (YYYYMMDD) to the first valid date of `dates`."""
    born = _dicom_date(birth)
    if born is None:
        return None
    for raw in dates:
        when = _dicom_date(raw)
        if when is not None:
            years = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
            return years if years >= 0 else None
    return None


def _dicom_date(raw: Any) -> date | None:
    """A DICOM DA value (YYYYMMDD; the old YYYY.MM.DD too), or None."""
    digits = re.sub(r"\D", "", str(raw or ""))
    if len(digits) != 8:
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


@dataclass
class FolderOptions:
    captions: str | None = option(
        None, "CSV/JSONL of file_name and captions or fields (default: one found in the folder)", path=True
    )


@READERS.register
class FolderReader(ReleaseReader):
    name = "folder"
    help = "a folder of PNG/JPEG/DICOM images, with an optional table of captions or fields"
    Options = FolderOptions

    def read(self, csv: Path | None, images: Path | None, options: FolderOptions, keyer: PatientKeyer) -> ReadResult:
        if images is None:
            raise TableError("a folder source needs --images DIR")
        return read_folder(images, keyer, options.captions)

    def input_name(self, csv: Path | None, images: Path | None, options: FolderOptions) -> str:
        return str(options.captions) if options.captions else f"the image folder {images}"
