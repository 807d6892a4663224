"""DICOM Secondary Capture objects of a generated set, built with highdicom, laid out as a PACS expects.

A set is one study; each condition set (the structured labels; a raw prompt for images without them) is one series,
numbered in order of first appearance in the plan, its images numbered in plan order. The study's identity lives in
one small record in the journal folder, made by the first process to get there (any shard, any launch) and read by
all the others and by reruns, so a set written by shards, or resumed after an interruption, stays one study. UIDs are
derived from that record and the image's provenance, so a file rewritten by a rerun has the same bytes.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ConfigError
from ..fileio import atomic_path
from ..synthetic_mark import DIGITAL_SOURCE_TYPE, SYNTHETIC_NOTE

INSTALL = "pip install 'cxrgen[dicom]'"
# what the contributing equipment did, read by people; the URI is the IPTC term tools search for
CONTRIBUTION = f"synthetic image: made by a trained generative model; IPTC digital source type {DIGITAL_SOURCE_TYPE}"


def require_highdicom() -> None:
    """Fail before any work when --dicom is asked for and highdicom is missing, not after an hour of sampling."""
    try:
        import highdicom  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--dicom writes DICOM with highdicom, which is not installed: {INSTALL}") from e


@dataclass(frozen=True)
class Study:
    uid: str
    study_id: str  # the settings digest (16 hex digits): ties the study to its journal rows
    started: datetime.datetime  # UTC, whole seconds: when the set's generation began


@dataclass(frozen=True)
class SeriesPlace:
    """Where an image sits in the study: its series (by condition set) and its number within it."""

    key: str  # the condition set, as canonical JSON
    number: int
    instance: int
    description: str


def open_study(folder: Path, settings_digest: str) -> Study:
    """The study record of the set made with these settings: created once, read by every writer after.

    Keyed by the settings digest, as the journal rows are: other settings make other images, hence another study.
    The record is written beside its name and hard-linked into place; a link fails where the name exists, so of
    several shards starting together exactly one wins, and none reads half a file."""
    path = folder / f"study-{settings_digest}.json"
    if not path.exists():
        started = _now()
        record = {
            "settings": settings_digest,
            "started": started.isoformat(),
            "study_uid": _uid("study", settings_digest, started.isoformat()),
        }
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(record, indent=2) + "\n")
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: theirs stands
        finally:
            os.unlink(tmp)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Study(record["study_uid"], settings_digest, datetime.datetime.fromisoformat(record["started"]))
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{path} is damaged ({e}): delete it and the DICOM files of {folder.parent}") from e


def plan_series(labels: list[dict[str, Any]], prompts: list[str]) -> list[SeriesPlace]:
    """Each image's series: one per condition set (or per raw prompt), numbered by first appearance in the plan."""
    numbers: dict[str, int] = {}
    counts: dict[str, int] = {}
    places = []
    for conditions, prompt in zip(labels, prompts, strict=True):
        key = json.dumps(conditions if conditions else {"prompt": prompt}, sort_keys=True)
        number = numbers.setdefault(key, len(numbers) + 1)
        counts[key] = counts.get(key, 0) + 1
        places.append(SeriesPlace(key, number, counts[key], series_description(conditions, prompt)))
    return places


def series_description(conditions: dict[str, Any], prompt: str) -> str:
    """The condition set in a few words (SeriesDescription, at most 64 characters), e.g.
    `SYNTHETIC 60Y F view PA proj PA DX: pleural effusion (left)`."""
    if not conditions:
        return _fit(f"SYNTHETIC prompt: {prompt}")
    words = ["SYNTHETIC"]
    if conditions.get("age") is not None:
        words.append(f"{conditions['age']}Y")
    words += [conditions[k] for k in ("sex",) if conditions.get(k)]
    words += [f"{name} {conditions[k]}" for k, name in (("view", "view"), ("projection", "proj")) if conditions.get(k)]
    words += [conditions["modality"]] if conditions.get("modality") else []
    findings = [
        f["label"] + (f" ({', '.join(f['locations'])})" if f.get("locations") else "")
        for f in conditions.get("findings") or []
    ]
    return _fit(" ".join(words) + (": " + ", ".join(findings) if findings else ""))


def save_dicom(
    path: Path,
    pixels: np.ndarray,
    provenance: dict[str, Any],
    conditions: dict[str, Any],
    study: Study,
    series: SeriesPlace,
) -> Path:
    """A Secondary Capture object marked synthetic (ConversionType SYN) that identifies no one."""
    from highdicom import ContributingEquipment
    from highdicom.sc import SCImage
    from pydicom.sr.codedict import codes

    when = study.started
    provenance_json = json.dumps(provenance, sort_keys=True)
    equipment = ContributingEquipment(
        manufacturer="cxrgen",
        purpose_of_reference=codes.DCM.SynthesizingEquipment,  # DCM 109100, CID 7005
        software_versions=__version__,
        contribution_datetime=when,
        contribution_description=CONTRIBUTION,
    )
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds = SCImage(
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation="MONOCHROME2",
        bits_allocated=bits,
        coordinate_system="PATIENT",
        study_instance_uid=study.uid,
        series_instance_uid=_uid("series", study.uid, series.key),
        series_number=series.number,
        sop_instance_uid=_uid("image", study.uid, provenance_json),
        instance_number=series.instance,
        manufacturer="cxrgen",
        software_versions=__version__,
        # a valid person name (family^given) that no person has; the id names the kind of object, not a patient
        patient_name="SYNTHETIC^CXRGEN",
        patient_id="SYNTHETIC",
        patient_sex=conditions.get("sex") if conditions.get("sex") in ("M", "F", "O") else None,
        study_id=study.study_id,
        study_date=when.date(),
        study_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        content_date=when.date(),
        content_time=when.time(),
        series_description=series.description,
        contributing_equipment=[equipment],
        # highdicom requires an orientation for a PATIENT image; it is cleared below
        patient_orientation=("L", "F"),
        specific_character_set="ISO_IR 192",  # UTF-8: finding names and prompts need not be ASCII
    )
    # Type 2 attributes (PatientBirthDate, AccessionNumber, ReferringPhysicianName) stay empty: nothing real stands
    # behind them. The orientation is emptied (Type 2C allows it): a generated image follows no verified one.
    ds.PatientOrientation = None
    # A chest is not a paired body part: with BodyPartExamined CHEST, Laterality (General Series, Type 2C) must be
    # absent; dciodvfy reports it missing without the body part, and present-but-empty as an error with it.
    ds.BodyPartExamined = "CHEST"
    if conditions.get("age") is not None:
        ds.PatientAge = f"{int(conditions['age']):03d}Y"
    ds.ConversionType = "SYN"  # synthetic image (highdicom writes DI, digitized interface)
    ds.BurnedInAnnotation = "NO"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image: no patient"
    ds.DerivationDescription = CONTRIBUTION
    ds.ImageComments = (SYNTHETIC_NOTE + " | " + provenance_json)[:10240]
    # every date is the study's, not the clock's: a rerun rewriting an image writes the same bytes
    ds.InstanceCreationDate = ds.DateOfSecondaryCapture = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    for item in ds.ContributingEquipmentSequence:  # highdicom adds itself as processing equipment, dated now
        item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _now() -> datetime.datetime:
    """UTC, whole seconds (DICOM times are written with TimezoneOffsetFromUTC +0000)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0, tzinfo=None)


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["cxrgen", *parts])


def _fit(text: str, limit: int = 64) -> str:
    """A DICOM LO value: at most 64 characters, cut at a word with an ellipsis."""
    text = " ".join(text.replace("\\", "/").split())
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(",:;") + "..."
