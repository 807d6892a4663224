"""A plain folder of images (PNG, JPEG, TIFF, DICOM), with an optional captions file.

The captions file is CSV or JSON Lines with a `file_name` column (relative to the folder) and any of: `text`
(a caption), `age`, `sex`, `view`, `projection`, `modality`, `findings`, `labels`, `patient_id`. Without one,
every image under the folder is taken. DICOM files contribute their header fields either way, where the captions
file leaves them out: the patient id above all, which keeps a patient's images in one split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..imaging.decode import is_dicom
from ..records import (
    Finding,
    PatientKeyer,
    Record,
    Rejection,
    clean_text,
    findings_from_value,
    normalize_projection,
    normalize_sex,
    normalize_view,
    parse_age,
)
from .base import ReadResult
from .tables import TableError, read_table

SOURCE = "folder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DEFAULT_CAPTION_FILES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")
_FILE_COLUMNS = ("file_name", "file", "path", "image")


def find_captions(root: Path) -> Path | None:
    for name in DEFAULT_CAPTION_FILES:
        if (root / name).is_file():
            return root / name
    return None


def read_folder(root: str | Path, keyer: PatientKeyer, captions: str | Path | None = None) -> ReadResult:
    root = Path(root)
    if not root.is_dir():
        raise TableError(f"image folder {root} does not exist")
    captions = Path(captions) if captions else find_captions(root)
    if captions is None:
        return _from_files(root, keyer)
    result = ReadResult()
    for row_no, row in read_table(captions):
        result.stats["rows"] += 1
        name = next((str(row[c]).strip() for c in _FILE_COLUMNS if row.get(c)), "")
        if not name:
            result.rejections.append(Rejection(row_no, "", f"metadata: no {' / '.join(_FILE_COLUMNS)} value"))
            continue
        path = root / name
        if path.resolve().is_relative_to(root.resolve()) and path.is_file() and is_dicom(path):
            row = {**dicom_fields(path), **{k: v for k, v in row.items() if v not in (None, "")}}
        try:
            record = _record(name, row, row_no, keyer)
        except ValueError as exc:
            result.rejections.append(Rejection(row_no, name, f"metadata: {exc}"))
            continue
        result.records.append(record)
    return result


def _record(name: str, row: dict[str, Any], row_no: int, keyer: PatientKeyer) -> Record:
    findings = findings_from_value(row.get("findings"))
    if not findings and row.get("labels"):
        labels = row["labels"]
        names = labels if isinstance(labels, list) else str(labels).replace("|", ";").split(";")
        findings = [Finding(clean_text(n)) for n in names if clean_text(n)]
    caption = row.get("text") or row.get("caption")
    view = normalize_view(_text(row.get("view")))
    return Record(
        **keyer.image_fields(SOURCE, name),
        source=SOURCE,
        image=name,
        row=row_no,
        **keyer.fields(SOURCE, _text(row.get("patient_id"))),
        age=parse_age(row.get("age")),
        sex=normalize_sex(_text(row.get("sex"))),
        view=view,
        projection=normalize_projection(_text(row.get("projection"))),
        modality=(_text(row.get("modality")) or "").upper() or None,
        findings=findings,
        caption=clean_text(caption) if caption else None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = clean_text(value)
    return text or None


def _from_files(root: Path, keyer: PatientKeyer) -> ReadResult:
    result = ReadResult()
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))
    for row_no, path in enumerate(files, start=1):
        result.stats["rows"] += 1
        name = path.relative_to(root).as_posix()
        fields: dict[str, Any] = {}
        if is_dicom(path):
            fields = dicom_fields(path)
        result.records.append(_record(name, fields, row_no, keyer))
    return result


def _is_image(path: Path) -> bool:
    """By suffix, or for a file without one (PACS and CD exports: IM000001, a UID) by its DICOM header."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return (
        not path.name.startswith(".") and (path.suffix == "" or path.suffix[1:].isdigit()) and is_dicom(path)
    )


def dicom_fields(path: Path) -> dict[str, Any]:
    """Demographics and acquisition from a DICOM header (pixels are not read here)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the image stage reports unreadable files with their reason
        return {}
    return {
        "age": str(ds.get("PatientAge", "")) or None,
        "sex": str(ds.get("PatientSex", "")) or None,
        "view": str(ds.get("ViewPosition", "")) or None,
        "projection": str(ds.get("ViewPosition", "")) or None,
        "modality": str(ds.get("Modality", "")) or None,
        "patient_id": str(ds.get("PatientID", "")) or None,
    }
