"""The record of one image: demographics, acquisition, findings with locations, and where it came from.

Every reader produces `Record`s; every later stage reads them back from a prepared dataset's metadata.jsonl.
`Conditions` is the part a prompt is built from, shared with generation, which has conditions but no source image.
No patient identifier, birth date or study date is ever stored: patients are known only by a keyed hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

# Labels that describe the study rather than a finding in it (PadChest).
PSEUDO_LABELS = ("normal", "unchanged", "exclude", "suboptimal study")
SEX_WORDS = {"M": "male", "F": "female"}
# What other releases write for a study without findings (CheXpert, NIH, ieee8023): PadChest's "normal"
NO_FINDING = frozenset({"no finding", "no findings"})
LOCATION_PREFIX = "loc "  # PadChest writes locations "loc right"
FRONTAL_PROJECTIONS = ("PA", "AP", "AP_horizontal")

# What tables write for "not known": treated as missing wherever a value is read.
PLACEHOLDERS = frozenset(
    {"", "?", "??", "-", "--", "nan", "none", "null", "n/a", "na", "unknown", "todo", "tbd", "not available"}
)
# ViewPosition spellings that mean the same view ("AP Supine": an AP view taken lying down).
_VIEW_ALIASES = {
    "POSTEROANTERIOR": "PA",
    "ANTEROPOSTERIOR": "AP",
    "LATERAL": "LATERAL",
    "LAT": "LATERAL",
    "L": "LATERAL",
    "AP SUPINE": "AP",
    "SUPINE AP": "AP",
    "AP ERECT": "AP",
    "AP SEMI ERECT": "AP",
    "AP SEMI-ERECT": "AP",
    "AP UPRIGHT": "AP",
    "PA ERECT": "PA",
    "PA UPRIGHT": "PA",
    # DICOM's View Code Sequence meanings (MIMIC's ViewCodeSequence_CodeMeaning)
    "POSTERO-ANTERIOR": "PA",
    "ANTERO-POSTERIOR": "AP",
    "LEFT LATERAL": "LL",
    "RIGHT LATERAL": "RL",
}
# View codes a prompt states: DICOM's ViewPosition terms, MIMIC's, PadChest's OBLICUA. Others (PadChest's
# GENERICA, "generic") are kept in the metadata but say nothing about the image, so prompts leave them out.
KNOWN_VIEWS = frozenset(
    {
        "PA",
        "AP",
        "LATERAL",
        "LL",
        "RL",
        "LLD",
        "RLD",
        "LLO",
        "RLO",
        "LAO",
        "RAO",
        "LPO",
        "RPO",
        "OBLICUA",
        "AP AXIAL",
        "AP LLD",
        "AP RLD",
        "PA LLD",
        "PA RLD",
        "XTABLE LATERAL",
        "SWIMMERS",
    }
)
# Projections in PadChest's reviewed vocabulary; other sources' projections and views are mapped onto it (a view
# through _VIEW_ALIASES first, so both read every spelling alike).
_PADCHEST_PROJECTIONS = {
    "PA": "PA",
    "AP": "AP",
    "AP_HORIZONTAL": "AP_horizontal",
    "AP HORIZONTAL": "AP_horizontal",
    "L": "L",
    "COSTAL": "COSTAL",
    "EXCLUDE": "EXCLUDE",
    "UNK": "UNK",
}
_SUPINE_VIEWS = frozenset({"AP SUPINE", "SUPINE AP"})  # an AP view taken lying down: PadChest's AP_horizontal
_VIEW_PROJECTIONS = {"PA": "PA", "AP": "AP", "LATERAL": "L", "LL": "L", "RL": "L", "XTABLE LATERAL": "L"}
# Modalities: spellings of the DICOM codes, and the ones that are not a plain radiograph.
_MODALITY_ALIASES = {"MRI": "MR", "ULTRASOUND": "US", "PET": "PT", "CT SCAN": "CT", "MAMMOGRAPHY": "MG"}
# Written for a plain radiograph without saying how it was acquired: no DICOM code to state
_GENERIC_RADIOGRAPH = frozenset({"X-RAY", "XRAY", "X RAY", "XR", "RX", "CXR", "RADIOGRAPH", "RADIOGRAPHY"})
NON_RADIOGRAPH_MODALITIES = frozenset({"CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "ES", "OP"})


class Finding(NamedTuple):
    """One finding as the report states it: a label and the locations its sentence gives.

    A NamedTuple rather than a dataclass: a release makes a million of them, and tuples are built 5x faster."""

    label: str
    locations: tuple[str, ...] = ()

    @property
    def is_pseudo(self) -> bool:
        return is_pseudo_label(self.label)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "locations": list(self.locations)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Finding:
        if isinstance(data, str):
            return cls(data)
        return cls(str(data["label"]), tuple(str(x) for x in data.get("locations") or ()))


@lru_cache(maxsize=65536)  # a release has a few hundred names, met millions of times
def is_pseudo_label(label: str) -> bool:
    return label.strip().lower() in PSEUDO_LABELS


@lru_cache(maxsize=65536)
def name_key(name: str) -> str:
    """How two spellings of one label or location compare: case, underscores and runs of spaces aside."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def study_label(label: str) -> str:
    """ "normal" for a no-finding label as other releases write it; any other label as it is."""
    return "normal" if name_key(label) in NO_FINDING else label


def location_name(text: str) -> str:
    """A location without PadChest's "loc " prefix."""
    text = text.strip()
    return text[len(LOCATION_PREFIX) :].strip() if text[:4].lower() == LOCATION_PREFIX else text


def merge_repeats(findings: list[Finding]) -> tuple[list[Finding], bool]:
    """Each label once, where first stated, with the locations of every mention; and whether any repeated."""
    merged: dict[str, Finding] = {}
    for f in findings:
        k = name_key(f.label)
        first = merged.get(k)
        merged[k] = f if first is None else Finding(first.label, tuple(dict.fromkeys(first.locations + f.locations)))
    return list(merged.values()), len(merged) != len(findings)


@dataclass
class Conditions:
    """What a prompt says about an image: who, how it was taken, what it shows."""

    age: int | None = None
    sex: str | None = None  # "M", "F" or "O"
    view: str | None = None  # ViewPosition, normalised ("PA", "AP", "LATERAL", ...)
    projection: str | None = None  # PadChest vocabulary: PA, AP, AP_horizontal, L, COSTAL, EXCLUDE, UNK
    modality: str | None = None  # CR, DX
    findings: list[Finding] = field(default_factory=list)  # report order, repeats kept
    caption: str | None = None  # free text: a folder's caption or a report section

    @property
    def labels(self) -> list[str]:
        """Distinct labels in report order."""
        return list(dict.fromkeys(f.label for f in self.findings))

    def structured(self) -> dict[str, Any]:
        """The conditions as the structured labels a metadata row stores."""
        return {
            "age": self.age,
            "sex": self.sex,
            "view": self.view,
            "projection": self.projection,
            "modality": self.modality,
            "findings": [f.to_json() for f in self.findings],
        }

    @property
    def is_normal(self) -> bool:
        """Labelled normal and nothing but pseudo-labels besides."""
        names = {f.label.lower() for f in self.findings}
        return "normal" in names and all(is_pseudo_label(n) for n in names)


@dataclass
class Record(Conditions):
    """One source image. `image` is relative to the images root; `row` is the 1-based data row of its CSV."""

    id: str = ""
    source: str = ""
    image: str = ""
    patient_key: str | None = None
    labeler: str | None = None  # who labelled it: "physician", "rnn", "chexpert-labeler", ...
    official_split: str | None = None  # "train", "val" or "test" when the release defines one
    row: int | None = None
    split_key: str | None = None  # in memory only (never written): what the patient-level split is drawn from
    # in memory only (never written): the image's unsalted id, for seeded choices
    order_key: str | None = None
    # in memory only: how the reader settled the labels ("repeat", "sentences differ", ...), for prepare's audit
    label_notes: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        """The structured fields a prepared dataset stores (no source path, no row: those stay local)."""
        return {
            "id": self.id,
            "source": self.source,
            "patient_key": self.patient_key,
            **self.structured(),
            "labeler": self.labeler,
        }

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names and k != "findings"}
        kwargs["findings"] = [Finding.from_json(f) for f in data.get("findings") or []]
        return cls(**kwargs)


def age_band(age: int | None) -> str | None:
    """The decade an age falls in ("40-49"), as counts per age are shown."""
    return None if age is None else f"{age // 10 * 10}-{age // 10 * 10 + 9}"


@dataclass(frozen=True)
class Rejection:
    """A row or image that did not make it into the dataset, and why."""

    row: int | None
    path: str
    reason: str
    file_name: str = ""  # quality control's rejections: the converted image kept in the dataset (rejected/...)


class PatientKeyer:
    """Maps a source's patient id to a non-reversible key (HMAC-SHA256 with a secret salt)."""

    def __init__(self, salt: str):
        if not salt:
            raise ValueError("the patient-key salt must not be empty")
        self._salt = salt.encode()

    def __call__(self, source: str, patient_id: str | None) -> str | None:
        if patient_id is None or str(patient_id).strip() == "":
            return None
        message = f"{source}\0{str(patient_id).strip()}".encode()
        return hmac.new(self._salt, message, hashlib.sha256).hexdigest()[:16]

    def image_fields(self, source: str, image: str) -> dict[str, str]:
        """A record's image ids: the salted one it publishes (its file name), and an unsalted one kept in memory.
        Source paths name patients (CheXpert's patient00003, MIMIC's p10000032) or are listed in the release's
        tables next to birth and study dates, so an unsalted hash of one could be looked up by anyone holding the
        release. Seeded choices (subsets, one image per patient) rank by the unsalted one, so they do not change
        with the salt."""
        message = f"image\0{source}\0{image}".encode()
        return {
            "id": hmac.new(self._salt, message, hashlib.sha256).hexdigest()[:20],
            "order_key": hashlib.sha256(f"{source}\0{image}".encode()).hexdigest()[:20],
        }

    def fields(self, source: str, patient_id: str | None) -> dict[str, str | None]:
        """A record's patient fields: the salted key it publishes, and the split key it keeps in memory. Splits
        come from the latter so that every dataset prepared from one release with one seed puts a patient in the
        same split, whatever its salt, filters or shards."""
        if patient_id is None or str(patient_id).strip() == "":
            return {"patient_key": None, "split_key": None}
        split_key = hashlib.sha256(f"{source}\0{str(patient_id).strip()}".encode()).hexdigest()
        return {"patient_key": self(source, patient_id), "split_key": split_key}

    @classmethod
    def for_output(cls, out_dir: Path, salt: str | None) -> PatientKeyer:
        """Use the given salt, else the one kept in `out_dir`, else make one and keep it there (mode 600).

        The salt file lets a rerun or another shard writing to the same folder produce the same keys; it is
        not part of the dataset and should not be shared with it."""
        salt_file = Path(out_dir) / ".patient_key_salt"
        if salt:
            return cls(salt)
        if salt_file.is_file():
            return cls(salt_file.read_text().strip())
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        new = secrets.token_hex(16)
        try:
            fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another shard made it first
            return cls(salt_file.read_text().strip())
        with os.fdopen(fd, "w") as fh:
            fh.write(new + "\n")
        return cls(new)


def is_known_view(view: str | None) -> bool:
    """A view code that says how the image was taken (GENERICA, or no view, does not)."""
    return view is not None and view.upper() in KNOWN_VIEWS


def is_missing(raw: Any) -> bool:
    """Blank, or a placeholder such as '?', 'todo', 'unknown', 'nan'."""
    return raw is None or " ".join(str(raw).split()).lower() in PLACEHOLDERS


@lru_cache(maxsize=65536)  # a release spells these a few dozen ways, a million times
def normalize_view(raw: str | None) -> str | None:
    if is_missing(raw):
        return None
    text = " ".join(str(raw).split()).upper()
    return _VIEW_ALIASES.get(text, text)


@lru_cache(maxsize=65536)
def normalize_projection(raw: str | None) -> str | None:
    if is_missing(raw):
        return None
    text = " ".join(str(raw).split())
    upper = text.upper()
    if upper in _PADCHEST_PROJECTIONS:
        return _PADCHEST_PROJECTIONS[upper]
    if upper in _SUPINE_VIEWS:
        return "AP_horizontal"
    return _VIEW_PROJECTIONS.get(_VIEW_ALIASES.get(upper, upper), text)


@lru_cache(maxsize=65536)
def normalize_modality(raw: str | None) -> str | None:
    """A DICOM modality code ("CR", "DX", "CT", ...); None when unknown or only "X-ray" (no acquisition code)."""
    if is_missing(raw):
        return None
    text = " ".join(str(raw).split()).upper()
    if text in _GENERIC_RADIOGRAPH:
        return None
    return _MODALITY_ALIASES.get(text, text)


def is_radiograph(modality: str | None) -> bool | None:
    """True or False when the modality says; None when it is not known."""
    return None if modality is None else modality.upper() not in NON_RADIOGRAPH_MODALITIES


@lru_cache(maxsize=65536)
def normalize_sex(raw: str | None) -> str | None:
    if is_missing(raw):
        return None
    text = str(raw).strip().upper()
    if text in ("M", "MALE", "MAN"):
        return "M"
    if text in ("F", "FEMALE", "WOMAN"):
        return "F"
    if text in ("O", "OTHER"):
        return "O"
    return None


def parse_age(raw: Any) -> int | None:
    """An age in whole years from a number, '047Y' (DICOM AS), or text; None when blank or implausible."""
    if is_missing(raw):
        return None
    text = str(raw).strip().upper()
    unit = "Y"
    if text[-1] in "DWMY" and text[:-1].strip().replace(".", "", 1).isdigit():
        unit, text = text[-1], text[:-1]
    try:
        value = float(text)
    except ValueError:
        return None
    years = value / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[unit]
    if not 0 <= years <= 120:
        return None
    return int(years)


def clean_text(raw: Any) -> str:
    """Strip and collapse whitespace."""
    return " ".join(str(raw).split())


def parse_finding_text(text: str) -> list[Finding]:
    """Findings written by hand or in a table cell, one rule for every table: items separated by ';' or '|', each
    one or more labels (separated by '/' or ',') with optional '@location,location' for all of them.

    `pleural effusion@left,costophrenic angle; pacemaker` gives two findings, `Pneumonia/Viral/COVID-19` three and
    `cardiomegaly, pacemaker` two. A leading "loc " on a location is accepted and dropped, so PadChest spellings
    work too."""
    findings = []
    for item in text.replace("|", ";").split(";"):
        labels, _, where = item.partition("@")
        locations: list[str] = []
        for raw in where.split(","):
            location = location_name(clean_text(raw))
            if location and location not in locations:
                locations.append(location)
        for raw in labels.replace("/", ",").split(","):
            label = clean_text(raw)
            if label and not is_missing(label):  # '?', 'todo': a placeholder names nothing
                findings.append(Finding(label, tuple(locations)))
    return findings


def findings_from_value(value: Any) -> list[Finding]:
    """Findings from a metadata value: a list of {label, locations} or strings, a JSON string of one, or
    the hand-written text form of `parse_finding_text`."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"findings is not valid JSON: {exc.msg}") from exc
        else:
            return parse_finding_text(text)
    if not isinstance(value, list):
        raise ValueError(f"findings must be a list, not {type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, str):
            out += parse_finding_text(item)
        elif isinstance(item, dict) and "label" in item:
            locations = item.get("locations") or []
            if isinstance(locations, str):  # "left, costophrenic angle": the text form's list
                locations = locations.split(",")
            if not isinstance(locations, list):
                raise ValueError(f"locations must be a list of names, not {locations!r}")
            names = (clean_text(x) for x in locations)
            out.append(Finding(clean_text(item["label"]), tuple(x for x in names if x)))
        else:
            raise ValueError(f"a finding must be a string or {{label, locations}}, not {item!r}")
    return out
