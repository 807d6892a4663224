"""Writing synthetic images so that no one can mistake them for real ones: PNG text chunks and DICOM Secondary
Capture attributes say SYNTHETIC and carry the provenance (prompt, seed, model, adapters, sampler); an XMP packet in
the PNG declares the IPTC digital source type."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..fileio import atomic_path
from ..imaging.png import write_png
from ..synthetic_mark import SYNTHETIC_NOTE, png_marks

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def png_text(provenance: dict[str, Any]) -> dict[str, str]:
    return {
        **png_marks(),
        "cxrgen:synthetic": "true",
        "cxrgen:provenance": json.dumps(provenance, sort_keys=True),
    }


def save_png(path: Path, pixels: np.ndarray, provenance: dict[str, Any]) -> Path:
    return write_png(path, pixels, png_text(provenance))


def save_dicom(path: Path, pixels: np.ndarray, provenance: dict[str, Any], conditions: dict[str, Any]) -> Path:
    """A DICOM Secondary Capture object marked synthetic (ConversionType SYN) with no patient identity: the
    patient name and id say SYNTHETIC, dates are the creation date, and the conditions appear only as what they
    are (age, sex, view) plus the provenance in ImageComments."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[json.dumps(provenance, sort_keys=True)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now(datetime.UTC)
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", meta.MediaStorageSOPInstanceUID])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", meta.MediaStorageSOPInstanceUID])
    ds.Modality = "OT"
    ds.ConversionType = "SYN"  # synthetic image
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.PatientName = "SYNTHETIC"
    ds.PatientID = "SYNTHETIC"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image: no patient"
    if conditions.get("age") is not None:
        ds.PatientAge = f"{int(conditions['age']):03d}Y"
    ds.PatientSex = conditions["sex"] if conditions.get("sex") in ("M", "F", "O") else ""
    # the other Type 2 attributes of these modules must be present: empty, as nothing real stands behind them
    for keyword in (
        "PatientBirthDate",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientOrientation",
    ):
        setattr(ds, keyword, "")
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(provenance.get("index", 0)) + 1
    if conditions.get("view"):
        ds.ViewPosition = str(conditions["view"])[:16]
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Manufacturer = "cxrgen"
    ds.SoftwareVersions = __version__
    ds.ImageComments = (SYNTHETIC_NOTE + " | " + json.dumps(provenance, sort_keys=True))[:10240]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
