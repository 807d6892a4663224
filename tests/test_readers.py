import gzip
import json

import pytest
from helpers import QUIRK_ROWS, REJECTED_ROWS, write_dicom, xray

from cxrgen.phantom import padchest_row, write_padchest_csv
from cxrgen.prepare.readers import read_source
from cxrgen.prepare.readers.mimic import MimicOptions
from cxrgen.prepare.readers.padchest import read_padchest
from cxrgen.records import Finding, PatientKeyer, Record
from cxrgen.tables import TableError

KEYER = PatientKeyer("test-salt")


def findings(pairs):
    return [Finding(label, tuple(locs)) for label, locs in pairs]


@pytest.fixture(scope="module")
def padchest(quirk_release):
    _, csv = quirk_release
    result = read_padchest(csv, KEYER)
    return {r.image.split("/")[-1]: r for r in result.records}, result


@pytest.mark.parametrize("name,fields,expected", QUIRK_ROWS, ids=[q[0] for q in QUIRK_ROWS])
def test_padchest_quirks(padchest, name, fields, expected):
    records, _ = padchest
    r = records[fields["ImageID"]]
    for key, value in expected.items():
        got = getattr(r, key)
        assert (got == findings(value)) if key == "findings" else (got == value), f"{name}: {key}={got!r}"


def test_padchest_rejections_and_paths(padchest):
    records, result = padchest
    reasons = {rej.path.split("/")[-1]: rej.reason for rej in result.rejections}
    for _, fields, reason in REJECTED_ROWS:
        assert reasons[fields["ImageID"]].startswith(reason)
    assert records["flat_b2.png"].image == "7/flat_b2.png"
    assert result.stats["layout nested"] >= 1 and result.stats["layout flat"] >= 1
    assert result.stats["rows"] == len(records) + len(result.rejections)


def test_patient_keys_are_keyed_hashes(padchest):
    records, _ = padchest
    assert records["flat_b2.png"].patient_key == records["flat2_k11.png"].patient_key
    assert records["flat_b2.png"].patient_key != records["nested_a1.png"].patient_key
    assert "p2" not in records["flat_b2.png"].patient_key
    assert PatientKeyer("other")("padchest", "p2") != records["flat_b2.png"].patient_key


def test_image_ids_are_keyed_too():
    """An unsalted hash of a source path could be looked up by anyone holding the release's tables."""
    import hashlib

    path = "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg"
    one, other = KEYER.image_fields("chexpert", path), PatientKeyer("other").image_fields("chexpert", path)
    assert one["id"] != other["id"] and len(one["id"]) == 20
    assert hashlib.sha256(f"chexpert\0{path}".encode()).hexdigest()[:20] not in (one["id"], other["id"])
    assert one["order_key"] == other["order_key"]  # what subsets rank by: the same whatever the salt


def test_no_identifiers_or_dates_in_metadata(padchest):
    records, _ = padchest
    text = json.dumps([r.metadata() for r in records.values()])
    for forbidden in ("20150602", "1950", '"p1"', "PatientID", "nested_a1"):
        assert forbidden not in text


def test_plain_and_gzipped_csv_agree(tmp_path):
    rows = [padchest_row(ImageID=f"i{i}.png", PatientID=f"p{i}") for i in range(3)]
    plain = write_padchest_csv(tmp_path / "a.csv", rows)
    gz = tmp_path / "b.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a = read_padchest(plain, KEYER).records
    b = read_padchest(gz, KEYER).records
    assert [r.metadata() for r in a] == [r.metadata() for r in b]


def test_padchest_missing_columns(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TableError, match="lacks column.*ImageID"):
        read_padchest(tmp_path / "x.csv", KEYER)


def test_source_needs_csv():
    with pytest.raises(TableError, match="--csv"):
        read_source("padchest", KEYER)


def label_values(**values):
    return ",".join(values.get(name, "") for name in LABELS.split(","))


LABELS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
    "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)


def test_mimic(tmp_path):
    (tmp_path / "meta.csv").write_text(
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ViewCodeSequence_CodeMeaning\n"
        "d1,10000032,50414267,CHEST,PA,3056,2544,21800506,213014,postero-anterior\n"
        "d2,10000032,50414267,CHEST,LATERAL,3056,2544,21800506,213014,lateral\n"
        "d3,10000764,57375967,CHEST,AP,3056,2544,21320101,1,antero-posterior\n"
        "d4,10000999,59999999,CHEST,,3056,2544,21320101,1,\n"
        "d5,10000764,57375967,CHEST,,3056,2544,21320101,1,left lateral\n"
    )
    (tmp_path / "chexpert.csv").write_text(
        f"subject_id,study_id,{LABELS}\n"
        "10000032,50414267,"
        f"{label_values(Cardiomegaly='1.0', **{'Pleural Effusion': '-1.0', 'Support Devices': '1.0'})}\n"
        f"10000764,57375967,{label_values(**{'No Finding': '1.0'})}\n"
    )
    (tmp_path / "split.csv").write_text(
        "dicom_id,study_id,subject_id,split\nd1,50414267,10000032,validate\nd3,57375967,10000764,test\n"
    )
    (tmp_path / "sections.csv").write_text(
        'study,impression,findings\ns50414267,"No acute  process.",Lungs clear.\ns57375967,,Small effusion.\n'
    )
    (tmp_path / "patients.csv").write_text(
        "subject_id,gender,anchor_age,anchor_year,anchor_year_group\n10000032,F,52,2180,2014 - 2016\n"
    )
    r = read_source(
        "mimic",
        KEYER,
        csv=tmp_path / "meta.csv",
        options=MimicOptions(
            labels_csv=str(tmp_path / "chexpert.csv"),
            split_csv=str(tmp_path / "split.csv"),
            sections_csv=str(tmp_path / "sections.csv"),
            patients_csv=str(tmp_path / "patients.csv"),
        ),
    )
    by = {x.image.split("/")[-1]: x for x in r.records}
    d1 = by["d1.jpg"]
    assert d1.image == "files/p10/p10000032/s50414267/d1.jpg"
    assert (d1.age, d1.sex, d1.view, d1.projection) == (52, "F", "PA", "PA")
    assert d1.findings == [Finding("cardiomegaly"), Finding("support devices")]  # -1 ignored
    assert d1.official_split == "val" and d1.caption == "No acute process."
    assert by["d2.jpg"].projection == "L"
    assert (by["d5.jpg"].view, by["d5.jpg"].projection) == ("LL", "L")  # from the View Code Sequence
    assert by["d3.jpg"].findings == [Finding("normal")] and by["d3.jpg"].caption == "Small effusion."
    assert by["d3.jpg"].age is None
    assert [x.reason for x in r.rejections] == ["labels: study not in the label file"]
    options = MimicOptions(labels_csv=str(tmp_path / "chexpert.csv"), uncertain="positive")
    positive = read_source("mimic", KEYER, csv=tmp_path / "meta.csv", options=options)
    assert Finding("pleural effusion") in positive.records[0].findings
    assert d1.labeler == "chexpert-labeler"
    (tmp_path / "mimic-cxr-2.0.0-negbio.csv").write_text((tmp_path / "chexpert.csv").read_text())
    options = MimicOptions(labels_csv=str(tmp_path / "mimic-cxr-2.0.0-negbio.csv"))
    negbio = read_source("mimic", KEYER, csv=tmp_path / "meta.csv", options=options)
    assert {x.labeler for x in negbio.records} == {"negbio"}  # the same studies, another labeler


def test_chexpert(tmp_path):
    (tmp_path / "train.csv").write_text(
        f"Path,Sex,Age,Frontal/Lateral,AP/PA,{LABELS}\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
        f"{label_values(**{'No Finding': '1.0', 'Support Devices': '1.0'})}\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,"
        f"{label_values(**{'No Finding': '1.0'})}\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Unknown,0,Frontal,PA,"
        f"{label_values(Cardiomegaly='1.0', **{'Pleural Effusion': '-1.0'})}\n"
        f"CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Unknown,0,Lateral,LL,{label_values(Cardiomegaly='1.0')}\n"
        f"CheXpert-v1.0-small/train/nobody/view1_frontal.jpg,Male,40,Frontal,PA,{label_values()}\n"
    )
    r = read_source("chexpert", KEYER, csv=tmp_path / "train.csv")
    a, b, c, d = r.records
    assert (a.sex, a.age, a.projection, a.view) == ("F", 68, "AP", "AP")
    assert a.findings == [Finding("normal"), Finding("support devices")]
    assert (b.projection, b.view) == ("L", "LATERAL") and a.patient_key == b.patient_key != c.patient_key
    assert c.sex is None and c.findings == [Finding("cardiomegaly")]  # -1 (uncertain) ignored
    assert (d.projection, d.view) == ("L", "LL")
    assert "patient00001" not in a.id and r.rejections[0].reason.startswith("metadata")


def test_folder_with_captions(tmp_path):
    from helpers import save_png

    save_png(tmp_path / "imgs" / "a.png", xray(seed=1))
    save_png(tmp_path / "imgs" / "sub" / "b.png", xray(seed=2, bits=8))
    (tmp_path / "imgs" / "metadata.jsonl").write_text(
        json.dumps(
            {
                "file_name": "a.png",
                "text": "chest x-ray,  left effusion",
                "age": "47",
                "sex": "male",
                "findings": "pleural effusion@left,costophrenic angle; pacemaker",
                "patient_id": "x",
            }
        )
        + "\n"
        + json.dumps({"file_name": "sub/b.png", "findings": [{"label": "nodule", "locations": ["right upper lobe"]}]})
        + "\n"
        + json.dumps({"text": "no file"})
        + "\n"
        + json.dumps({"file_name": "c.png", "findings": 7})
        + "\n"
    )
    r = read_source("folder", KEYER, images=tmp_path / "imgs")
    a, b = r.records
    assert a.caption == "chest x-ray, left effusion" and a.age == 47 and a.sex == "M"
    assert a.findings == [Finding("pleural effusion", ("left", "costophrenic angle")), Finding("pacemaker")]
    assert b.findings == [Finding("nodule", ("right upper lobe",))] and b.patient_key is None
    assert [x.reason.split(":")[0] for x in r.rejections] == ["metadata", "metadata"]


def test_folder_without_captions_reads_dicom_headers(tmp_path):
    write_dicom(
        tmp_path / "x" / "one.dcm",
        xray(bits=8).astype("uint16") * 16,
        PatientAge="047Y",
        PatientSex="F",
        ViewPosition="PA",
        PatientID="secret-id",
    )
    write_dicom(tmp_path / "x" / "IM000002", xray(bits=8).astype("uint16"), PatientSex="M")  # a PACS export name
    write_dicom(tmp_path / "x" / "1.2.840.99.3", xray(bits=8).astype("uint16"), PatientSex="M")  # named by its UID
    (tmp_path / "x" / "README").write_text("not an image")
    r = read_source("folder", KEYER, images=tmp_path / "x")
    rec = next(rec for rec in r.records if rec.image == "one.dcm")
    assert (rec.age, rec.sex, rec.view, rec.modality) == (47, "F", "PA", "DX")
    assert rec.patient_key == KEYER("folder", "secret-id")
    assert sorted(rec.image for rec in r.records) == ["1.2.840.99.3", "IM000002", "one.dcm"]
    # a captions file that names DICOMs: the header fills what it leaves out, the patient above all
    (tmp_path / "x" / "captions.csv").write_text("file_name,text,sex\none.dcm,left effusion,M\nIM000002,,\n")
    r = read_source("folder", KEYER, images=tmp_path / "x")
    one, two = sorted(r.records, key=lambda rec: rec.image)[::-1]
    assert one.patient_key == KEYER("folder", "secret-id") and (one.age, one.sex) == (
        47,
        "M",
    )  # the file wins
    assert one.caption == "left effusion" and two.sex == "M"


def test_record_metadata_roundtrip(padchest):
    records, _ = padchest
    r = records["flat_b2.png"]
    back = Record.from_metadata(r.metadata())
    assert back.findings == r.findings and back.patient_key == r.patient_key


@pytest.mark.parametrize(
    "raw,view,projection",
    [
        ("postero-anterior", "PA", "PA"),
        ("antero-posterior", "AP", "AP"),
        ("Left Lateral", "LL", "L"),
        ("AP Supine", "AP", "AP_horizontal"),
        ("L", "LATERAL", "L"),
        ("AP semi erect", "AP", "AP"),
        ("XTABLE LATERAL", "XTABLE LATERAL", "L"),
        ("?", None, None),
        ("GENERICA", "GENERICA", "GENERICA"),
    ],
)
def test_views_and_projections_read_every_spelling_alike(raw, view, projection):
    """One table of view spellings: a projection read from a view agrees with the view read from it."""
    from cxrgen.records import normalize_projection, normalize_view

    assert (normalize_view(raw), normalize_projection(raw)) == (view, projection)
