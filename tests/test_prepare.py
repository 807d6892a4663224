import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import BAD_IMAGE_ROWS, QUIRK_ROWS, REJECTED_ROWS, write_dicom, xray
from PIL import Image

from cxrgen.cli import main
from cxrgen.prepare import jobs as image_jobs
from cxrgen.records import FRONTAL_PROJECTIONS

SALT = ["--patient-key-salt", "fixed-test-salt"]
FRONTAL_QUIRKS = [q for q in QUIRK_ROWS if q[1].get("Projection", "PA") in FRONTAL_PROJECTIONS]


def prepare(release, out, *extra):
    root, csv_path = release
    args = [
        "prepare",
        "--source",
        "padchest",
        "--csv",
        str(csv_path),
        "--images",
        str(root),
        "--out",
        str(out),
        "--image.resolution",
        "64",
        "--workers",
        "1",
        "--qc.min-side",
        "64",
        *SALT,
        *extra,
    ]
    return main(args)


def metadata(out):
    rows = {}
    for split in ("train", "val", "test"):
        path = Path(out) / split / "metadata.jsonl"
        if path.exists():
            rows.update({r["id"]: dict(r, split=split) for r in map(json.loads, path.read_text().splitlines())})
    return rows


def rejected(out):
    with open(Path(out) / "rejected.csv") as fh:
        return list(csv.DictReader(fh))


def png_bytes(out):
    return {p.name: p.read_bytes() for p in Path(out).glob("*/??/*.png")}


@pytest.fixture(scope="module")
def prepared(quirk_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    assert prepare(quirk_release, out, "--workers", "2") == 0
    return out


def test_outputs(prepared):
    rows = metadata(prepared)
    assert len(rows) == len(FRONTAL_QUIRKS)
    for row in rows.values():
        image = Image.open(prepared / row["split"] / row["file_name"])
        assert image.mode == "L" and image.size == (64, 64)
        assert row["text"].startswith("chest x-ray") and row["tokens"] <= 77
        assert set(row) >= {
            "file_name",
            "text",
            "age",
            "sex",
            "view",
            "projection",
            "modality",
            "findings",
            "patient_key",
        }
    summary = json.loads((prepared / "prepare.json").read_text())
    assert summary["rows_read"] == len(QUIRK_ROWS) + len(REJECTED_ROWS) + len(BAD_IMAGE_ROWS)
    assert summary["kept"] == len(rows) and summary["config"]["patient_key_salt"] == "<redacted>"
    assert summary["tokens"]["before_fitting"]["prompts"] == len(rows)
    assert "sha256" in summary["inputs"]["csv"] and summary["data_hash"]
    assert (prepared / "contact_sheets" / "kept.png").exists()
    assert not list(prepared.rglob("*.tmp*"))


def test_every_bad_input_is_in_rejected_csv(prepared):
    reasons = {row["path"].split("/")[-1]: row["reason"] for row in rejected(prepared)}
    for name, reason in BAD_IMAGE_ROWS.items():
        assert reasons[name.split("/")[-1]].startswith(reason), (name, reasons[name.split("/")[-1]])
    for _, fields, reason in REJECTED_ROWS:
        assert reasons[fields["ImageID"]].startswith(reason)
    assert reasons["lateral_j10.png"] == "filter: projection L"
    assert (prepared / "rejected").is_dir() and (prepared / "contact_sheets" / "rejected.png").exists()
    # quality control's rejections name their kept copy (what the app shows); the others have none
    qc = [row for row in rejected(prepared) if row["reason"].startswith("qc:")]
    assert qc and all((prepared / row["file_name"]).is_file() for row in qc)
    assert all(row["file_name"].startswith("rejected/") for row in qc)
    assert all(not row["file_name"] for row in rejected(prepared) if not row["reason"].startswith("qc:"))


def test_no_patient_in_two_splits(prepared):
    seen = {}
    for row in metadata(prepared).values():
        assert seen.setdefault(row["patient_key"], row["split"]) == row["split"]


def test_no_identifiers_in_outputs(prepared):
    text = "".join(p.read_text() for p in prepared.glob("*/metadata.jsonl")) + (prepared / "prepare.json").read_text()
    for forbidden in ("20150602", "20160101", "1950.0", '"p1"', "fixed-test-salt", "nested_a1"):
        assert forbidden not in text
    assert all(len(p.stem) == 20 for p in prepared.glob("*/??/*.png"))


def test_loads_as_huggingface_imagefolder(prepared):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("imagefolder", data_dir=str(prepared))
    assert sum(len(ds[s]) for s in ds) == len(metadata(prepared))
    first = ds[next(iter(ds))][0]
    assert first["image"].size == (64, 64) and "findings" in first


def test_metadata_only(quirk_release, tmp_path):
    assert prepare(quirk_release, tmp_path, "--metadata-only") == 0
    rows = metadata(tmp_path)
    # no lateral, costal or excluded projections, no escaping path; bad images unread
    assert len(rows) == len(FRONTAL_QUIRKS) + len(BAD_IMAGE_ROWS) - 1
    assert not list(tmp_path.glob("*/??/*.png"))
    assert json.loads((tmp_path / "prepare.json").read_text())["metadata_only"] is True


def test_resume_after_interruption_equals_uninterrupted(quirk_release, tmp_path, monkeypatch, prepared):
    real = image_jobs.run_job
    calls = {"n": 0}

    def flaky(job, config=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(job, config)

    monkeypatch.setattr(image_jobs, "run_job", flaky)
    assert prepare(quirk_release, tmp_path) == 130
    assert not (tmp_path / "train" / "metadata.jsonl").exists()
    journal = (tmp_path / ".journal" / "main.jsonl").read_text().splitlines()
    assert len(journal) == 4
    (tmp_path / ".journal" / "main.jsonl").write_text("\n".join(journal) + '\n{"id": "cut off mid-li')
    # what a SIGKILL mid-write leaves: a temporary file beside each image still to convert
    for png in (p for split in ("train", "val", "test") for p in (prepared / split).rglob("*.png")):
        unfinished = tmp_path / png.relative_to(prepared)
        if not unfinished.exists():
            unfinished.parent.mkdir(parents=True, exist_ok=True)
            unfinished.with_name(f".{png.name}.tmp4242").write_bytes(b"partial")
    monkeypatch.setattr(image_jobs, "run_job", real)
    calls["n"] = 0
    assert prepare(quirk_release, tmp_path) == 0
    assert not list(tmp_path.rglob(".*.tmp*"))
    assert metadata(tmp_path) == metadata(prepared)
    assert png_bytes(tmp_path) == png_bytes(prepared)


def test_rerun_converts_nothing_and_qc_change_moves_files(prepared, quirk_release, caplog):
    before = metadata(prepared)
    journal = [json.loads(line) for line in (prepared / ".journal" / "main.jsonl").read_text().splitlines()]
    contrasts = sorted(e["stats"]["contrast"] for e in journal if e["status"] == "ok")
    caplog.set_level("INFO")
    assert prepare(quirk_release, prepared, "--qc.min-contrast", str(contrasts[len(contrasts) // 2])) == 0
    assert "0 to convert" in caplog.text
    assert len(metadata(prepared)) < len(before)
    assert prepare(quirk_release, prepared) == 0
    assert metadata(prepared) == before


def test_shards_union_equals_unsharded(quirk_release, tmp_path, prepared, caplog):
    caplog.set_level("INFO")
    assert prepare(quirk_release, tmp_path, "--shard", "0/2") == 0
    assert prepare(quirk_release, tmp_path, "--shard", "1/2") == 0
    assert not (tmp_path / "train" / "metadata.jsonl").exists()
    caplog.clear()
    assert prepare(quirk_release, tmp_path) == 0
    assert "images: 0 to convert" in caplog.text
    assert metadata(tmp_path) == metadata(prepared) and png_bytes(tmp_path) == png_bytes(prepared)


def test_folder_source_with_dicom(tmp_path):
    folder = tmp_path / "in"
    pixels = xray(200, 160, bits=8).astype(np.uint16) * 16
    write_dicom(folder / "a.dcm", 4095 - pixels, monochrome1=True, PatientSex="M", PatientAge="060Y", PatientID="x1")
    write_dicom(folder / "b.dcm", pixels, PatientSex="F", PatientAge="030Y", PatientID="x2")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--source",
                "folder",
                "--images",
                str(folder),
                "--out",
                str(out),
                "--image.resolution",
                "64",
                "--qc.min-side",
                "64",
                "--splits.train",
                "1",
                "--splits.val",
                "0",
                "--splits.test",
                "0",
            ]
        )
        == 0
    )
    rows = sorted(metadata(out).values(), key=lambda r: r["age"])
    assert [r["text"] for r in rows] == [
        "chest x-ray, age 30 female, modality DX",
        "chest x-ray, age 60 male, modality DX",
    ]
    a, b = (np.asarray(Image.open(out / "train" / r["file_name"]), dtype=int) for r in rows)
    assert np.abs(a - b).mean() < 3  # MONOCHROME1 inverted back to the same picture


def test_cli_errors(tmp_path, capsys):
    assert (
        main(
            [
                "prepare",
                "--source",
                "padchest",
                "--csv",
                str(tmp_path / "no.csv"),
                "--out",
                str(tmp_path),
                "--metadata-only",
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "prepare",
                "--source",
                "padchest",
                "--csv",
                "x",
                "--out",
                str(tmp_path),
                "--metadata-only",
                "--shard",
                "2/2",
            ]
        )
        == 2
    )
    assert "0 <= i < n" in capsys.readouterr().err
    assert main(["prepare", "--source", "padchest", "--csv", "x", "--out", str(tmp_path)]) == 2
    assert "--images is required" in capsys.readouterr().err


def test_an_unwritable_output_is_one_line(quirk_release, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert prepare(quirk_release, tmp_path / "afile" / "out", "--metadata-only") == 1
    err = capsys.readouterr().err
    assert err.startswith("cxrgen prepare: error:") and "Traceback" not in err


def test_missing_images_are_tried_again_and_old_copies_go(quirk_release, tmp_path):
    """An image not there yet (a zip not unpacked) is rejected for this run only; and after a change of image
    settings, each image lives in one folder, the newest conversion."""
    import shutil

    root = shutil.copytree(quirk_release[0], tmp_path / "release")
    release = (root, root / quirk_release[1].name)
    pngs = sorted(root.rglob("*.png"))
    pngs[0].rename(tmp_path / "held-back.png")
    out = tmp_path / "out"
    assert prepare(release, out) == 0
    missing = [r for r in rejected(out) if r["reason"] == "image: file not found"]
    before = len(metadata(out))
    (tmp_path / "held-back.png").rename(pngs[0])
    assert prepare(release, out) == 0
    assert len(metadata(out)) == before + 1
    assert len([r for r in rejected(out) if r["reason"] == "image: file not found"]) == len(missing) - 1
    reject_all = ["--qc.min-contrast", "0.9"]
    assert prepare(release, out, *reject_all) == 1  # every image moves to rejected/: an empty dataset fails
    assert prepare(release, out, "--image.resolution", "96", *reject_all) == 1  # converted again, rejected again
    names = [p.name for p in out.glob("*/??/*.png")]
    assert len(names) == len(set(names)) and all(Image.open(p).size[0] == 96 for p in out.glob("*/??/*.png"))
    # back to the first settings: their journal entries stand only for their own PNGs, which are 96 px now
    assert prepare(release, out) == 0
    assert all(Image.open(p).size[0] == 64 for p in out.glob("*/??/*.png"))


def test_a_shard_that_missed_an_image_does_not_outlive_the_run_that_found_it(quirk_release, tmp_path):
    import shutil

    root = shutil.copytree(quirk_release[0], tmp_path / "release")
    release = (root, root / quirk_release[1].name)
    held = sorted(root.rglob("*.png"))[0]
    held.rename(tmp_path / "held-back.png")
    out = tmp_path / "out"
    assert prepare(release, out, "--shard", "0/2") == 0 and prepare(release, out, "--shard", "1/2") == 0
    (tmp_path / "held-back.png").rename(held)
    for _ in range(2):  # main.jsonl sorts before the shards' journals: order of files must not decide
        assert prepare(release, out) == 0
        missing = [r["path"] for r in rejected(out) if r["reason"] == "image: file not found"]
        assert missing == ["0/missing_y8.png"]  # the fixture's image that never exists; not the one held back


def test_mimic_and_chexpert_outputs_name_no_one(tmp_path):
    """Subject, study and patient folder names, and study dates, stay out of what prepare publishes."""
    from helpers import save_png

    mimic_image = "files/p10/p10000032/s50414267/d1.jpg"
    chexpert_image = "CheXpert-v1.0-small/train/patient00042/study1/view1_frontal.jpg"
    for relative in (mimic_image, chexpert_image):
        save_png(tmp_path / "images" / relative, xray(200, 160, bits=8))
    (tmp_path / "meta.csv").write_text(
        "dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime\nd1,10000032,50414267,PA,21800506,213014\n"
    )
    (tmp_path / "labels.csv").write_text("subject_id,study_id,Cardiomegaly,No Finding\n10000032,50414267,1.0,\n")
    (tmp_path / "chexpert.csv").write_text(
        f"Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly,No Finding\n{chexpert_image},Female,68,Frontal,PA,1.0,\n"
    )
    common = [
        "--images",
        str(tmp_path / "images"),
        "--image.resolution",
        "64",
        "--qc.min-side",
        "64",
        "--splits.train",
        "1",
        "--splits.val",
        "0",
        "--splits.test",
        "0",
    ]
    sources = {
        "mimic": ["--csv", str(tmp_path / "meta.csv"), "--mimic.labels-csv", str(tmp_path / "labels.csv")],
        "chexpert": ["--csv", str(tmp_path / "chexpert.csv")],
    }
    for source, args in sources.items():
        out = tmp_path / source
        assert main(["prepare", "--source", source, *args, *common, "--out", str(out)]) == 0
        assert len(metadata(out)) == 1
        published = "".join(p.read_text() for p in out.glob("*/metadata.jsonl")) + (out / "prepare.json").read_text()
        published += " ".join(p.name for p in out.rglob("*.png"))
        for forbidden in ("10000032", "50414267", "21800506", "patient00042", "d1.jpg", "view1_frontal"):
            assert forbidden not in published, (source, forbidden)


def _dies_on_one(job, config=None):
    """A worker the OOM killer takes on one image."""
    import os
    import signal

    if job.id == "id3":
        os.kill(os.getpid(), signal.SIGKILL)
    return image_jobs.JobResult(job.id, "digest", "ok")


def test_a_killed_worker_stops_the_run_with_a_message(tmp_path, monkeypatch):
    from cxrgen.imaging import ImageConfig

    monkeypatch.setattr(image_jobs, "run_job", _dies_on_one)
    jobs = [image_jobs.Job(f"id{i}", "source.png", str(tmp_path / f"{i}.png")) for i in range(8)]
    with pytest.raises(ChildProcessError, match="an image worker died"):  # a Pool waited for it forever
        image_jobs.run_jobs(jobs, ImageConfig(), tmp_path / "journal.jsonl", workers=2)


def test_labels_are_the_image_level_labels_each_once(prepared):
    """PadChest's sentence column says 'normal' about normal structures beside findings and writes sides into
    labels: the image-level column wins, the sentences give locations, and no label is stated twice."""
    by_name = {}
    index = {row["id"]: row for row in csv.DictReader(open(prepared / "source_index.csv"))}
    for row in metadata(prepared).values():
        by_name[index[row["id"]]["source_path"].split("/")[-1]] = row
    device = by_name["device_r18.png"]
    assert [f["label"] for f in device["findings"]] == ["pacemaker", "dual chamber device"]
    assert "normal" not in device["text"]
    sides = by_name["sides_s19.png"]["findings"]
    assert sides == [
        {"label": "pleural effusion", "locations": ["right", "costophrenic angle"]},
        {"label": "hypoexpansion", "locations": ["bilateral"]},
    ]
    for row in by_name.values():
        labels = [f["label"].lower() for f in row["findings"]]
        assert len(labels) == len(set(labels)) and row["text"].count("diagnosis COPD signs") <= 1
    assert by_name["nanlab_v22.png"]["findings"] == [{"label": "exclude", "locations": []}]
    assert "diagnosis" not in by_name["nanlab_v22.png"]["text"]  # exclude is not a diagnosis (kept in metadata)
    assert by_name["blanklab_t20.png"]["text"].endswith("diagnosis normal")
    summary = json.loads((prepared / "prepare.json").read_text())
    audit = summary["label_audit"]
    assert audit["images"] == len(by_name) and audit["labels_stated_twice"] == 0
    assert audit["labelled_from_sentences"] == 3 and audit["side_variants_mapped"] == 1
    assert audit["as_image_level_labels"] == len(by_name) - 3
    assert by_name["blankfind_w23.png"]["findings"] == [{"label": "cardiomegaly", "locations": ["cardiac"]}]
    assert by_name["badsent_z24.png"]["findings"] == [{"label": "pacemaker", "locations": []}]
    # differ: two with a normal sentence beside findings, one whose sentence cell holds only nan
    assert audit["sentence_labels_agree"] == len(by_name) - 3
    assert summary["tokens"]["pseudo_labels_left_out"]["exclude"] == 2
    vocabulary = summary["vocabulary"]["labels"]
    assert vocabulary["pleural effusion"]["synonyms"] == ["pleural effusion right side"]
    assert sum(vocabulary["pleural effusion"]["images"].values()) == 3


def test_the_audit_trail_maps_every_kept_row_back(prepared, quirk_release):
    """source_index.csv leads from an output id to the release's row (and so its report), and stays local."""
    _, csv_path = quirk_release
    import gzip

    with gzip.open(csv_path, "rt", newline="") as fh:
        source_rows = list(csv.DictReader(fh))
    index = list(csv.DictReader(open(prepared / "source_index.csv")))
    rows = metadata(prepared)
    assert {r["id"] for r in index} == set(rows)
    for entry in index:
        source = source_rows[int(entry["source_row"]) - 1]
        assert entry["source_path"] == f"{source['ImageDir']}/{source['ImageID']}"
        assert entry["split"] == rows[entry["id"]]["split"] and entry["file_name"] == rows[entry["id"]]["file_name"]
    assert (prepared / "source_index.csv").stat().st_mode & 0o777 == 0o600
    assert not list(prepared.glob("*/source_index.csv"))  # never inside a split folder that gets shared
    assert "do not share" in json.loads((prepared / "prepare.json").read_text())["source_index"]["note"]


def test_a_label_filter_finds_side_variants_and_other_spellings(quirk_release, tmp_path, caplog):
    caplog.set_level("INFO")
    assert prepare(quirk_release, tmp_path, "--metadata-only", "--filters.include-labels", "Pleural Effusion") == 0
    names = {row["text"] for row in metadata(tmp_path).values()}
    assert len(names) == 3 and all("pleural effusion" in text for text in names)
    assert "'Pleural Effusion' read as the label 'pleural effusion' (spelling)" in caplog.text
    right = tmp_path / "right"  # a side variant filters for the label at that side
    side = ["--metadata-only", "--filters.include-labels"]
    assert prepare(quirk_release, right, *side, "pleural effusion right side") == 0
    assert len(metadata(right)) == 3
    assert prepare(quirk_release, tmp_path / "left", *side, "pleural effusion left side") == 1  # none: an error
    assert not metadata(tmp_path / "left")


def test_a_table_without_rows_is_an_error(tmp_path, capsys):
    from cxrgen.phantom import write_padchest_csv

    csv_path = write_padchest_csv(tmp_path / "empty.csv", [])
    assert prepare((tmp_path, csv_path), tmp_path / "out", "--metadata-only") == 1
    assert "has no data rows" in capsys.readouterr().err
