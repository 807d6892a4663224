"""Folder sources as real folders come: the ieee8023 covid-chestxray-dataset layout, an NIH ChestX-ray14 table,
DICOM headers, plain folders of PNGs; and prepare's workers end when prepare is killed."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import GREY_PALETTE, colour_photo, save_grey_rgb_jpeg, save_png, write_dicom, xray
from PIL import Image

from cxrgen.cli import main
from cxrgen.prepare.readers import read_source
from cxrgen.prepare.readers.folder import FolderOptions, dicom_age, parse_findings
from cxrgen.records import Finding, PatientKeyer

SALT = "x"
KEYER = PatientKeyer(SALT)
COMMON = ["--image.resolution", "64", "--workers", "1", "--qc.min-side", "64", "--patient-key-salt", SALT]
IEEE_HEADER = (  # the real metadata.csv's first line
    "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes"
)
IEEE_COLUMNS = IEEE_HEADER.split(",")


def grey(seed: int = 0) -> np.ndarray:
    return xray(120, 100, seed=seed, bits=8)


def ieee_row(patientid: str, filename: str, **fields: str) -> dict[str, str]:
    """A row as the real metadata.csv has them: most columns blank, dates and places with commas, notes with
    quotes and line breaks."""
    row = dict.fromkeys(IEEE_COLUMNS, "")
    row.update(
        patientid=patientid,
        offset="0",
        sex="M",
        age="65",
        finding="Pneumonia/Viral/COVID-19",
        RT_PCR_positive="Y",
        view="PA",
        modality="X-ray",
        date="January 22, 2020",
        location="Cho Ray Hospital, Ho Chi Minh City, Vietnam",
        folder="images",
        filename=filename,
        doi="10.1056/nejmc2001272",
        url="https://www.nejm.org/doi/full/x",
        license="CC BY-NC-SA",
        clinical_notes='On January 22, 2020, a 65-year-old man with a "history" of hypertension\npresented ...',
    )
    row.update(fields)
    return row


# (file under the root, how it is written, its row's changes, what prepare must do with it)
IEEE_CASES = {
    "pa": ("images/pa.png", "grey", {"patientid": "2"}, "kept"),
    "pa_followup": ("images/pa_followup.png", "grey", {"patientid": "2", "offset": "3"}, "kept"),
    "ap_rgb": ("images/ap_rgb.jpg", "grey rgb jpeg", {"patientid": "3", "view": "AP", "sex": "F"}, "kept"),
    "rgba": ("images/rgba.png", "grey rgba png", {"patientid": "4", "finding": "No Finding"}, "kept"),
    "palette": (
        "images/palette.png",
        "grey palette png",
        {"patientid": "5", "finding": "todo", "sex": "?", "age": "", "view": "AP semi erect", "modality": "?"},
        "kept",
    ),
    "supine": (
        "images/supine.png",
        "grey la png",
        {"patientid": "6", "view": "AP Supine", "finding": "Tuberculosis"},
        "kept",
    ),
    "colour": ("images/colour.jpg", "colour jpeg", {"patientid": "7"}, "image: colour"),
    "lateral": ("images/lateral.jpg", "grey rgb jpeg", {"patientid": "2", "view": "L"}, "filter: projection L"),
    "ct_slice": (
        "images/ct_slice.jpg",
        "grey",
        {"patientid": "8", "view": "Axial", "modality": "CT"},
        "filter: modality CT",
    ),
    "ct_volume": (
        "volumes/ct.nii.gz",
        "nifti",
        {"patientid": "9", "view": "Coronal", "modality": "CT", "folder": "volumes"},
        "filter: modality CT",
    ),
    "moved": ("images/extra/moved.png", "grey", {"patientid": "10"}, "kept"),
    "missing": ("images/missing.png", None, {"patientid": "11"}, "image: file not found"),
}


def write_image(path: Path, how: str | None, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = grey(seed)
    if how == "grey":  # PNG or JPEG, by its suffix
        save_png(path, pixels)
    elif how == "grey rgb jpeg":
        save_grey_rgb_jpeg(path, pixels, seed)
    elif how == "grey rgba png":
        alpha = np.full(pixels.shape, 255, np.uint8)
        alpha[:, :20] = 0  # a transparent margin: black
        Image.fromarray(np.stack([pixels, pixels, pixels, alpha], axis=2), "RGBA").save(path)
    elif how == "grey palette png":
        image = Image.new("P", (pixels.shape[1], pixels.shape[0]))
        image.putpalette(GREY_PALETTE)
        image.putdata(pixels.ravel().tolist())
        image.save(path)
    elif how == "grey la png":
        Image.fromarray(np.stack([pixels, np.full_like(pixels, 255)], axis=2), "LA").save(path)
    elif how == "colour jpeg":
        Image.fromarray(colour_photo(120, 100)).save(path, quality=90)
    elif how == "nifti":
        path.write_bytes(b"\x1f\x8b" + bytes(100))  # a CT volume: never decoded, the filter drops it first
    else:
        assert how is None


def write_ieee8023(root: Path) -> Path:
    rows = []
    for i, (file, how, changes, _) in enumerate(IEEE_CASES.values()):
        write_image(root / file, how, i)
        folder, _, name = file.partition("/")
        rows.append(ieee_row(filename=name, **{"folder": folder, **changes}))
    rows[IEEE_ROW["moved"]]["filename"] = "moved.png"  # the table says images/moved.png; it was moved
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, IEEE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


IEEE_ROW = {name: i for i, name in enumerate(IEEE_CASES)}


def image_id(relative: str) -> str:
    return KEYER.image_fields("folder", relative)["id"]


def prepare(images: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "--source", "folder", "--images", str(images), "--out", str(out), *COMMON, *extra])


def outputs(out: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Kept rows by id (with their split), and rejection reasons by source path."""
    kept = {}
    for split in ("train", "val", "test"):
        path = out / split / "metadata.jsonl"
        if path.exists():
            kept.update({r["id"]: dict(r, split=split) for r in map(json.loads, path.read_text().splitlines())})
    with open(out / "rejected.csv", newline="") as fh:
        rejected = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
    return kept, rejected


@pytest.fixture(scope="module")
def ieee(tmp_path_factory):
    root = write_ieee8023(tmp_path_factory.mktemp("covid-chestxray-dataset"))
    out = tmp_path_factory.mktemp("prepared")
    assert prepare(root, out) == 0
    kept, rejected = outputs(out)
    return root, out, kept, rejected


def test_ieee8023_every_row_ends_as_it_should(ieee):
    _, _, kept, rejected = ieee
    for name, (file, _, _, expected) in IEEE_CASES.items():
        if expected == "kept":
            assert image_id(file) in kept, (name, rejected.get(file))
        else:
            assert rejected[file].startswith(expected), (name, rejected[file])
    assert len(kept) == sum(case[3] == "kept" for case in IEEE_CASES.values())


def test_ieee8023_ct_is_rejected_by_modality_and_laterals_by_projection(ieee):
    _, _, _, rejected = ieee
    assert rejected["images/ct_slice.jpg"] == rejected["volumes/ct.nii.gz"] == "filter: modality CT"
    assert rejected["images/lateral.jpg"] == "filter: projection L"


def test_ieee8023_grey_in_colour_containers_is_kept_and_colour_is_not(ieee):
    _, out, kept, rejected = ieee
    for file in ("images/ap_rgb.jpg", "images/rgba.png", "images/palette.png", "images/supine.png"):
        row = kept[image_id(file)]
        image = Image.open(out / row["split"] / row["file_name"])
        assert image.mode == "L" and image.size == (64, 64)
    assert rejected["images/colour.jpg"].startswith("image: colour RGB image")


def test_ieee8023_fields(ieee):
    _, _, kept, _ = ieee
    pa, followup, rgb, rgba, palette, supine = (
        kept[image_id(IEEE_CASES[n][0])] for n in ("pa", "pa_followup", "ap_rgb", "rgba", "palette", "supine")
    )
    assert [f["label"] for f in pa["findings"]] == ["Pneumonia", "Viral", "COVID-19"]
    assert (pa["sex"], pa["age"], pa["view"], pa["projection"], pa["modality"]) == ("M", 65, "PA", "PA", None)
    assert pa["patient_key"] == followup["patient_key"] == KEYER("folder", "2") and pa["split"] == followup["split"]
    assert (rgb["sex"], rgb["view"], rgb["projection"]) == ("F", "AP", "AP")
    assert [f["label"] for f in rgba["findings"]] == ["normal"]  # "No Finding", as other releases say normal
    # placeholders: 'todo' finding, '?' sex and modality, blank age
    assert (palette["findings"], palette["sex"], palette["age"], palette["modality"]) == (
        [],
        None,
        None,
        None,
    )
    assert (palette["view"], palette["projection"]) == ("AP", "AP")  # "AP semi erect"
    assert (supine["view"], supine["projection"]) == ("AP", "AP_horizontal")  # "AP Supine"
    assert [f["label"] for f in supine["findings"]] == ["Tuberculosis"]
    for row in kept.values():
        assert "todo" not in row["text"] and "?" not in row["text"] and "X-ray" not in row["text"]
    published = json.dumps(
        [{k: v for k, v in r.items() if k not in ("id", "patient_key", "file_name")} for r in kept.values()]
    )
    assert "2020" not in published and "Vietnam" not in published and "history" not in published


def test_ieee8023_files_found_by_folder_and_base_name(ieee):
    _, out, kept, rejected = ieee
    assert image_id("images/extra/moved.png") in kept
    reader = json.loads((out / "prepare.json").read_text())["reader"]
    assert reader["files found in its folder column"] == len(IEEE_CASES) - 2
    assert reader["files found by base name"] == 1 and reader["files not found"] == 1
    assert rejected["images/missing.png"] == "image: file not found"  # where the table says it is


def test_nih_table_with_images_in_subfolders(tmp_path):
    root = tmp_path / "nih"
    for i, name in enumerate(("00000001_000.png", "00000001_001.png", "00000002_000.png")):
        save_png(root / f"images_00{i // 2 + 1}" / "images" / name, grey(i))
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
        "00000001_001.png,No Finding,1,1,58,M,AP,2894,2729,0.143,0.143,\n"
        "00000002_000.png,Hernia,0,2,81,F,PA,2500,2048,0.168,0.168,\n"
    )
    out = tmp_path / "out"
    assert prepare(root, out, "--folder.captions", str(table)) == 0
    kept, _ = outputs(out)
    a, b, c = (
        kept[image_id(f"images_00{i // 2 + 1}/images/{n}")]
        for i, n in enumerate(("00000001_000.png", "00000001_001.png", "00000002_000.png"))
    )
    assert [f["label"] for f in a["findings"]] == ["Cardiomegaly", "Emphysema"]
    assert (a["age"], a["sex"], a["view"], a["projection"]) == (58, "M", "PA", "PA")
    assert (b["age"], b["view"], c["age"], c["sex"]) == (58, "AP", 81, "F")
    assert a["patient_key"] == b["patient_key"] == KEYER("folder", "1") != c["patient_key"]


@pytest.mark.parametrize(
    "table,expected",
    [
        (
            "filename,sex\nnope.png,M\nnada.png,F\n",
            ["none of its 2 rows names an image", "'nope.png'", "sex"],
        ),
        ("name,sex\na.png,M\n", ["has no image file column", "name, sex", "Image Index"]),
        (
            "patientid,sex,finding,filename\n",
            ["has a header (patientid, sex, finding, filename) but no rows"],
        ),
    ],
    ids=["no file exists", "no file column", "header only"],
)
def test_tables_that_name_no_image_are_errors(tmp_path, capsys, table, expected):
    save_png(tmp_path / "in" / "a.png", grey())
    (tmp_path / "in" / "metadata.csv").write_text(table)
    assert prepare(tmp_path / "in", tmp_path / "out") == 1
    err = capsys.readouterr().err.split("\n", 1)[-1]  # after the reading bar's line
    assert err.startswith("cxrgen prepare: error:") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    if "rows names" in expected[0]:
        assert "file_name, filename, file, path, image, image_path, Image Index" in err


def test_plain_folder_without_metadata_keeps_every_image(tmp_path, capsys):
    for i in range(17):
        save_png(tmp_path / "my_xrays" / f"img{i:02d}.png", grey(i))
    out = tmp_path / "out"
    assert prepare(tmp_path / "my_xrays", out) == 0
    kept, rejected = outputs(out)
    assert len(kept) == 17 and not rejected
    assert all(row["projection"] is None for row in kept.values())
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["kept"] == 17 and summary["unknown_projection_kept"]["images"] == 17
    assert len(summary["unknown_projection_kept"]["files"]) == 17
    assert "17 images of unknown view and projection kept" in capsys.readouterr().out


def test_findings_text_forms():
    assert parse_findings("Pneumonia/Viral/COVID-19") == [
        Finding("Pneumonia"),
        Finding("Viral"),
        Finding("COVID-19"),
    ]
    assert parse_findings("Cardiomegaly|Effusion; nodule") == [
        Finding("Cardiomegaly"),
        Finding("Effusion"),
        Finding("nodule"),
    ]
    assert parse_findings("pleural effusion@left,loc costophrenic angle; todo") == [
        Finding("pleural effusion", ("left", "costophrenic angle"))
    ]
    assert parse_findings("a/b@right upper lobe") == [
        Finding("a", ("right upper lobe",)),
        Finding("b", ("right upper lobe",)),
    ]
    assert parse_findings('[{"label": "nodule", "locations": ["left/right"]}]') == [Finding("nodule", ("left/right",))]
    assert parse_findings(["Hernia"]) == [Finding("Hernia")] and parse_findings("?") == []
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_findings("[oops")


def test_jsonl_table_with_aliases_and_a_placeholder_file(tmp_path):
    save_png(tmp_path / "a.png", grey())
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"Image Path": "a.png", "Gender": "female", "AGE": 47, "View": "pa", "labels": ["nodule"]})
        + "\n"
        + json.dumps({"image_path": "?", "gender": "M"})
        + "\n"
    )
    r = read_source("folder", KEYER, images=tmp_path)
    (a,) = r.records
    assert (a.image, a.sex, a.age, a.view, a.projection, a.findings) == (
        "a.png",
        "F",
        47,
        "PA",
        "PA",
        [Finding("nodule")],
    )
    assert r.rejections[0].reason.startswith("metadata: no file_name / filename")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        read_source("folder", KEYER, images=tmp_path, options=FolderOptions(captions=str(tmp_path / "empty.jsonl")))


def test_dicom_age_from_birth_and_study_dates(tmp_path):
    pixels = xray(bits=8).astype(np.uint16) * 16
    write_dicom(tmp_path / "a.dcm", pixels, PatientBirthDate="19600615", StudyDate="20200614", PatientID="p")
    write_dicom(tmp_path / "b.dcm", pixels, PatientBirthDate="19600615", SeriesDate="20200615")
    write_dicom(tmp_path / "c.dcm", pixels, PatientBirthDate="19600615", StudyDate="", ContentDate="20000101")
    write_dicom(tmp_path / "d.dcm", pixels, PatientBirthDate="19600615", StudyDate="20200614", PatientAge="030Y")
    write_dicom(tmp_path / "e.dcm", pixels, PatientBirthDate="", StudyDate="20200614")
    records = {r.image: r for r in read_source("folder", KEYER, images=tmp_path).records}
    ages = {name: records[name].age for name in ("a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm")}
    assert ages == {"a.dcm": 59, "b.dcm": 60, "c.dcm": 39, "d.dcm": 30, "e.dcm": None}
    stored = json.dumps([r.structured() for r in records.values()])
    assert "1960" not in stored and "2020" not in stored
    assert dicom_age("1960.06.15", ["bad", "20200615"]) == 60 and dicom_age("19600615", ["19500101"]) is None
    # a table that names the DICOM: the header's age still fills its blank age
    (tmp_path / "metadata.csv").write_text("file,age,sex\na.dcm,,F\n")
    (one,) = read_source("folder", KEYER, images=tmp_path).records
    assert (one.age, one.sex, one.patient_key) == (59, "F", KEYER("folder", "p"))


def test_one_rule_for_findings_text_in_every_table(tmp_path):
    """A folder's table and a conditions file read the same cell the same way."""
    from cxrgen.generate.conditions import from_file

    cells = ["Cardiomegaly|Effusion", "Pneumonia/Viral/COVID-19", "cardiomegaly, pacemaker", "nodule@left,apical; ?"]
    (tmp_path / "plan.jsonl").write_text("".join(json.dumps({"labels": cell}) + "\n" for cell in cells))
    planned = [item.conditions.findings for item in from_file(tmp_path / "plan.jsonl")]
    assert planned == [parse_findings(cell) for cell in cells]
    assert planned[2] == [Finding("cardiomegaly"), Finding("pacemaker")]
    assert planned[3] == [Finding("nodule", ("left", "apical"))]  # '?' is a placeholder
