"""Write a PadChest-format release: the real 37-column CSV (image-level labels, both layouts of the sentence
column and the other quirks of the real file) and 16-bit PNGs in numbered folders, from phantom images whose
findings are known.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .render import render

PADCHEST_COLUMNS = [
    "",
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "ViewPosition_DICOM",
    "Projection",
    "MethodProjection",
    "Pediatric",
    "Modality_DICOM",
    "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM",
    "BitsStored_DICOM",
    "WindowCenter_DICOM",
    "WindowWidth_DICOM",
    "Rows_DICOM",
    "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM",
    "ExposureInuAs_DICOM",
    "ExposureTime",
    "RelativeXRayExposure_DICOM",
    "ReportID",
    "Report",
    "MethodLabel",
    "Labels",
    "Localizations",
    "LabelsLocalizationsBySentence",
    "labelCUIS",
    "LocalizationsCUIS",
]

# Findings a phantom can show, with the locations PadChest writes for them.
_FINDING_LOCATIONS = {
    "cardiomegaly": ("cardiac",),
    "pleural effusion": ("left", "right"),
    "pacemaker": (),
    "nodule": ("right upper lobe", "left upper lobe", "right lower lobe", "left lower lobe"),
}
_BACKGROUND = ("COPD signs", "chronic changes", "scoliosis", "aortic elongation", "unchanged")  # not drawn


def padchest_row(**fields: Any) -> dict[str, str]:
    """One CSV row with every column present; unspecified ones get plausible values."""
    row = {c: "" for c in PADCHEST_COLUMNS}
    row.update(
        {
            "ImageDir": "0",
            "StudyDate_DICOM": "20150602",
            "PatientBirth": "1950.0",
            "PatientSex_DICOM": "M",
            "ViewPosition_DICOM": "POSTEROANTERIOR",
            "Projection": "PA",
            "MethodProjection": "Manual review of DICOM fields",
            "Pediatric": "No",
            "Modality_DICOM": "CR",
            "PhotometricInterpretation_DICOM": "MONOCHROME2",
            "PixelRepresentation_DICOM": "0",
            "BitsStored_DICOM": "12",
            "WindowCenter_DICOM": "2048",
            "WindowWidth_DICOM": "4096",
            "MethodLabel": "Physician",
            "Report": "informe sin hallazgos",
            "Labels": "['normal']",
            "Localizations": "[]",
            "LabelsLocalizationsBySentence": "[['normal']]",
        }
    )
    row.update({k: str(v) for k, v in fields.items()})
    return row


def write_padchest_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows with PadChest's columns (the first unnamed, holding a pandas-style index); gzip if the name
    ends in .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PADCHEST_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for i, row in enumerate(rows):
        writer.writerow({**row, "": row.get("") or str(i)})
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@dataclass
class PhantomStudy:
    image_id: str
    image_dir: int
    patient: int
    age: int
    sex: str
    projection: str
    findings: list[tuple[str, tuple[str, ...]]]
    year: int = 2015  # of the study: a patient's later study is later


def _label_cells(findings: list[tuple[str, tuple[str, ...]]], rng: np.random.Generator) -> dict[str, str]:
    """Labels, Localizations and LabelsLocalizationsBySentence as PadChest writes them. `Labels` is the image-level
    set; the sentence column labels report sentences, with its quirks: nested or flat layout, leading spaces,
    a label repeated in a later sentence, the odd bare nan, a sentence about a normal structure labelled `normal`
    beside findings, a side written into the label ("pleural effusion left side"). Normal studies sometimes
    have an image-level cell that names no label (`['']`, `nan`), their label being only in the sentences."""

    def q(s: str) -> str:
        return repr((" " if rng.random() < 0.3 else "") + s)

    def sentence(label: str, locs: tuple[str, ...]) -> list[str]:
        if len(locs) == 1 and locs[0] in ("left", "right") and rng.random() < 0.5:
            return [q(f"{label} {locs[0]} side")]  # the side variant carries its location
        return [q(label)] + [q("loc " + loc) for loc in locs]

    sentences = [sentence(label, locs) for label, locs in findings] or [[q("normal")]]
    if findings and rng.random() < 0.2:  # "normal heart size": a normal sentence in a study with findings
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), [q("normal")])
    if rng.random() < 0.15 and findings:  # a label repeated in a later sentence
        sentences.append([q(findings[0][0])])
    labels = "[" + ", ".join(q(x) for x in [label for label, _ in findings] or ["normal"]) + "]"
    if not findings and rng.random() < 0.04:  # an image-level cell that names nothing
        labels, sentences = str(rng.choice(["['']", "nan"])), [[q("normal")]]
    if rng.random() < 0.5:
        by_sentence = "[" + ", ".join("[" + ", ".join(s) + "]" for s in sentences) + "]"
        if rng.random() < 0.05:
            by_sentence = "[nan, " + by_sentence[1:]
    else:
        by_sentence = "[" + ", ".join(item for s in sentences for item in s) + "]"
    locations = ["loc " + loc for _, locs in findings for loc in locs]
    return {
        "Labels": labels,
        "Localizations": "[" + ", ".join(q(x) for x in locations) + "]",
        "LabelsLocalizationsBySentence": by_sentence,
    }


def draw_studies(
    n: int,
    seed: int,
    findings_rate: float = 0.6,
    max_findings: int = 2,
    background: float = 0.3,
    patients: bool = True,
    repeats: float = 0.2,
) -> list[PhantomStudy]:
    """The studies of a release. A share `repeats` of the images are another study of the previous patient; with
    `patients` that study keeps the patient's sex and an age a few years on (its image, the patient's body),
    else it draws them afresh as if a stranger had the patient's id."""
    rng = np.random.default_rng(seed)
    later = np.random.default_rng([seed, 0x5EED])  # years between studies: apart, so the draws above stay as they were
    studies: list[PhantomStudy] = []
    patient = 0
    for i in range(n):
        first = i == 0 or rng.random() > repeats
        if first:
            patient += 1
        findings: list[tuple[str, tuple[str, ...]]] = []
        if rng.random() < findings_rate:
            for label in rng.choice(list(_FINDING_LOCATIONS), size=rng.integers(1, max_findings + 1), replace=False):
                places = _FINDING_LOCATIONS[str(label)]
                locs = (str(rng.choice(places)),) if places else ()
                findings.append((str(label), locs))
            if rng.random() < background:  # a label the renderer does not draw, as reports have
                findings.append((str(rng.choice(_BACKGROUND)), ()))
        projection = str(rng.choice(["PA", "PA", "PA", "L", "AP_horizontal", "AP"]))
        image_id = f"{seed:04d}{i:08d}_{rng.integers(16**6):06x}.png"
        age, sex = int(rng.integers(18, 95)), str(rng.choice(["M", "F"]))
        if patients and not first:
            years = int(later.integers(0, 3))
            previous = studies[-1]
            studies.append(
                PhantomStudy(
                    image_id,
                    i % 55,
                    patient,
                    previous.age + years,
                    previous.sex,
                    projection,
                    findings,
                    previous.year + years,
                )
            )
            continue
        studies.append(PhantomStudy(image_id, i % 55, patient, age, sex, projection, findings))
    return studies


def write_release(
    out: str | Path,
    n: int = 64,
    seed: int = 0,
    size: int = 256,
    gz: bool = True,
    findings_rate: float = 0.6,
    max_findings: int = 2,
    background: float = 0.3,
    aspect: tuple[float, float] = (0.8, 1.0),
    patients: bool = True,
    repeats: float = 0.2,
) -> Path:
    """A phantom PadChest release under `out`: the CSV and `<ImageDir>/<ImageID>` 16-bit PNGs. With `patients`
    a patient's studies show one body (so re-identification can be tested); without, every image is a stranger."""
    out = Path(out)
    rng = np.random.default_rng(seed + 1)
    rows = []
    studies = draw_studies(n, seed, findings_rate, max_findings, background, patients, repeats)
    for i, s in enumerate(tqdm(studies, desc="phantom", unit="img")):
        height = size
        width = int(size * rng.uniform(*aspect))  # width / height, as films vary
        body = seed * 1_000_003 + s.patient if patients else None
        pixels = render(height, width, s.findings, seed=seed * 1_000_003 + i, patient=body)
        target = out / str(s.image_dir) / s.image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target)
        view = {"PA": "POSTEROANTERIOR", "L": "LATERAL", "AP": "AP", "AP_horizontal": ""}[s.projection]
        rows.append(
            padchest_row(
                ImageID=s.image_id,
                ImageDir=s.image_dir,
                StudyID=f"st{i}",
                PatientID=f"pt{s.patient}",
                StudyDate_DICOM=f"{s.year}0602",
                PatientBirth=f"{s.year - s.age}.0",
                PatientSex_DICOM=s.sex,
                ViewPosition_DICOM=view if rng.random() > 0.4 else "",
                Projection=s.projection,
                Rows_DICOM=height,
                Columns_DICOM=width,
                **_label_cells(s.findings, rng),
            )
        )
    write_padchest_csv(out / ("phantom_padchest.csv.gz" if gz else "phantom_padchest.csv"), rows)
    return out
