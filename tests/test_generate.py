import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrgen.cli import main
from cxrgen.generate import conditions as cond
from cxrgen.generate import dicom, runner
from cxrgen.generate.config import GenerateConfig
from cxrgen.model.loading import ModelConfig
from cxrgen.model.random_weights import make_random_lora

# the IPTC term for AI-made images, spelled out here rather than taken from the code under test
AI_MADE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture
def run_dir(smoke_run):
    return smoke_run


def generate(out, *args, base=("--steps", "3", "--batch-size", "3")):
    return main(["generate", "--out", str(out), *base, *args])


def rows(out, split="train"):
    return [json.loads(x) for x in (Path(out) / split / "metadata.jsonl").read_text().splitlines()]


def pixels(out):
    return {r["id"]: np.asarray(Image.open(Path(out) / "train" / r["file_name"])) for r in rows(out)}


def dicoms(out):
    return [pydicom.dcmread(Path(out) / "train" / r["dicom_file"]) for r in rows(out)]


def digital_source_type(image):
    return image.getxmp()["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"]


def test_names_the_training_data_never_uses_are_refused(run_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert generate(tmp_path, "--run", str(run_dir), "--finding", "pacemakr", "--n", "1") == 1
    err = capsys.readouterr().err
    assert "unknown finding 'pacemakr'" in err and "closest known: pacemaker" in err and "cxrgen vocab" in err
    assert not (tmp_path / "train").exists()
    assert (
        generate(
            tmp_path,
            "--run",
            str(run_dir),
            "--finding",
            "Pleural Effusion right side",
            "pleural effusion",
            "--n",
            "1",
            base=("--steps", "1"),
        )
        == 0
    )
    (row,) = rows(tmp_path)
    assert row["findings"] == [{"label": "pleural effusion", "locations": ["right"]}]  # mapped, stated once
    assert "finding 'Pleural Effusion right side' read as 'pleural effusion' at right (side)" in caplog.text


def test_flags_mode_with_run(run_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert (
        generate(
            tmp_path,
            "--run",
            str(run_dir),
            "--age",
            "60",
            "--sex",
            "F",
            "--projection",
            "PA",
            "--finding",
            "Pleural Effusion@left,costophrenic angle",
            "pacemakr",
            "--n",
            "4",
            "--dicom",
            "--allow-unknown-names",
        )
        == 0
    )
    r = rows(tmp_path)
    assert len(r) == 4 and all(x["synthetic"] for x in r) and len({x["seed"] for x in r}) == 4
    assert r[0]["text"].startswith("chest x-ray, age 60 female, projection PA, diagnosis pleural effusion, loc left")
    assert r[0]["findings"][0] == {"label": "pleural effusion", "locations": ["left", "costophrenic angle"]}
    assert r[0]["adapters"][0]["path"].endswith("lora") and len(r[0]["adapters"][0]["sha256"]) == 16
    assert r[0]["sampler"]["name"] == "dpmsolver++" and r[0]["sampler"]["steps"] == 3
    assert "unknown finding 'pacemakr'" in caplog.text and "closest known: pacemaker" in caplog.text
    assert "finding 'Pleural Effusion' read as 'pleural effusion' (spelling)" in caplog.text
    im = Image.open(tmp_path / "train" / r[0]["file_name"])
    assert im.mode == "L" and im.size == (64, 64) and "SYNTHETIC" in im.text["Description"]
    prov = json.loads(im.text["cxrgen:provenance"])
    assert prov["seed"] == r[0]["seed"] and prov["prompt"] == r[0]["text"]
    assert digital_source_type(im) == AI_MADE
    ds = pydicom.dcmread(tmp_path / "train" / r[0]["dicom_file"])
    assert ds.ConversionType == "SYN" and ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert ds.PatientAge == "060Y" and ds.PatientSex == "F" and np.array_equal(ds.pixel_array, np.asarray(im))
    # Type 2 attributes present, empty where a real image would say who
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == "" and ds.ReferringPhysicianName == ""
    assert ds.InstanceNumber == r[0]["index"] + 1  # one condition set: one series, numbered in plan order
    gen = json.loads((tmp_path / "generate.json").read_text())
    assert gen["synthetic"] and gen["images"] == 4 and gen["prompt_settings"]["level"] == "full"


def test_dicom_set_is_one_study_with_a_series_per_condition_set(run_dir, tmp_path):
    (tmp_path / "plan.csv").write_text(
        "age,sex,view,projection,modality,findings,count\n"
        "60,F,PA,PA,DX,pleural effusion@left,2\n"
        "30,M,,AP,,,1\n"
        "60,F,PA,PA,DX,pleural effusion@left,1\n"  # the first condition set again: its series, not a new one
    )
    assert generate(tmp_path, "--run", str(run_dir), "--conditions", str(tmp_path / "plan.csv"), "--dicom") == 0
    ds = dicoms(tmp_path)
    assert len({d.StudyInstanceUID for d in ds}) == 1 and len({d.SOPInstanceUID for d in ds}) == 4
    assert len({(d.StudyDate, d.StudyTime, d.StudyID) for d in ds}) == 1 and ds[0].StudyDate and ds[0].StudyID
    assert [(d.SeriesNumber, d.InstanceNumber) for d in ds] == [(1, 1), (1, 2), (2, 1), (1, 3)]
    assert len({d.SeriesInstanceUID for d in ds}) == 2 and ds[0].SeriesInstanceUID == ds[3].SeriesInstanceUID
    assert ds[0].SeriesDescription == "SYNTHETIC 60Y F view PA proj PA DX: pleural effusion (left)"
    assert ds[2].SeriesDescription == "SYNTHETIC 30Y M proj AP" and ds[2].PatientSex == "M"
    d = ds[0]
    assert str(d.PatientName) == "SYNTHETIC^CXRGEN" and d.PatientID == "SYNTHETIC" and d.PatientAge == "060Y"
    assert "ViewPosition" not in d and "Laterality" not in d and d.BodyPartExamined == "CHEST"
    (equipment,) = [e for e in d.ContributingEquipmentSequence if e.Manufacturer == "cxrgen"]  # and highdicom
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"  # DCM: Synthesizing Equipment
    assert AI_MADE in equipment.ContributionDescription and AI_MADE in d.DerivationDescription
    assert json.loads(d.ImageComments.split(" | ", 1)[1])["seed"] == rows(tmp_path)[0]["seed"]


def test_dicom_study_record_16_bit_pixels_and_long_descriptions(tmp_path, monkeypatch):
    hours = iter(range(100))
    monkeypatch.setattr(dicom, "_now", lambda: datetime.datetime(2030, 1, 1) + datetime.timedelta(hours=next(hours)))
    study = dicom.open_study(tmp_path / ".journal", "0123456789abcdef")
    assert dicom.open_study(tmp_path / ".journal", "0123456789abcdef") == study  # read back, not made again
    assert dicom.open_study(tmp_path / ".journal", "fedcba9876543210").uid != study.uid  # other settings
    findings = [{"label": f"finding {k}", "locations": ["left upper lobe"]} for k in range(5)]
    labels = {"age": 47, "sex": "M", "view": None, "projection": None, "modality": None, "findings": findings}
    (place,) = dicom.plan_series([labels], ["unused: the labels name the series"])
    assert len(place.description) <= 64 and place.description.startswith("SYNTHETIC 47Y M: finding 0 (left")
    assert place.description.endswith("...")
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    ds = pydicom.dcmread(dicom.save_dicom(tmp_path / "x.dcm", pixels, {"index": 0}, labels, study, place))
    assert ds.BitsStored == 16 and np.array_equal(ds.pixel_array, pixels) and ds.StudyDate == "20300101"


def test_dicom_passes_dciodvfy(run_dir, tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not found: apt-get install dicom3tools")
    flags = ["--age", "60", "--sex", "F", "--view", "PA", "--projection", "PA", "--finding", "pleural effusion"]
    assert generate(tmp_path, "--run", str(run_dir), *flags, "--dicom", base=("--steps", "1")) == 0
    (row,) = rows(tmp_path)
    check = subprocess.run([dciodvfy, str(tmp_path / "train" / row["dicom_file"])], capture_output=True, text=True)
    report = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()]
    assert not [line for line in report if "Error" in line or "Warning" in line], "\n".join(report)


def test_dicom_needs_highdicom_before_the_model_loads(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    loaded = []
    monkeypatch.setattr(runner, "load_sampling_pipeline", lambda *a, **k: loaded.append(a))
    assert generate(tmp_path, "--run", str(run_dir), "--age", "60", "--dicom") == 2
    assert "pip install 'cxrgen[dicom]'" in capsys.readouterr().err and not loaded


def test_sharded_and_resumed_dicom_set_stays_one_study(run_dir, tmp_path, monkeypatch, capsys):
    # each launch's clock an hour later than the last: a study opened per launch would show in its date and UIDs
    hours = iter(range(100))
    monkeypatch.setattr(dicom, "_now", lambda: datetime.datetime(2030, 1, 1) + datetime.timedelta(hours=next(hours)))
    common = ["--run", str(run_dir), "--prompt", "chest x-ray", "a bird sitting on a tree", "--n", "2", "--dicom"]
    one = ("--steps", "2", "--batch-size", "1")  # batches 0, 1, 2, 3: shard 0 makes 0 and 2, shard 1 makes 1 and 3
    assert generate(tmp_path, *common, "--shard", "1/2", base=one) == 0
    real, calls = runner.sample_images, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "sample_images", interrupted)
    assert generate(tmp_path, *common, "--shard", "0/2", base=one) == 130  # image 0 made, image 2 not
    monkeypatch.setattr(runner, "sample_images", real)
    capsys.readouterr()
    assert generate(tmp_path, *common, "--shard", "0/2", base=one) == 0
    assert "generated 1 image(s)" in capsys.readouterr().out
    ds = dicoms(tmp_path)
    assert {(d.StudyInstanceUID, d.StudyDate, d.StudyTime, d.StudyID) for d in ds} == {
        (ds[0].StudyInstanceUID, "20300101", "000000", ds[0].StudyID)
    }
    assert [(d.SeriesNumber, d.InstanceNumber) for d in ds] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [d.SeriesDescription for d in ds[1:3]] == [
        "SYNTHETIC prompt: chest x-ray",
        "SYNTHETIC prompt: a bird sitting on a tree",
    ]
    # an image made again (its PNG was touched) is the same bytes, in both files
    dcm = tmp_path / "train" / rows(tmp_path)[3]["dicom_file"]
    before = dcm.read_bytes(), dcm.with_suffix(".png").read_bytes()
    os.utime(dcm.with_suffix(".png"), ns=(0, 0))
    assert generate(tmp_path, *common, "--shard", "1/2", base=one) == 0
    assert "generated 1 image(s)" in capsys.readouterr().out
    assert (dcm.read_bytes(), dcm.with_suffix(".png").read_bytes()) == before


def test_same_seed_same_images_and_other_seed_differs(run_dir, tmp_path):
    assert generate(tmp_path / "a", "--run", str(run_dir), "--n", "4") == 0
    assert generate(tmp_path / "b", "--run", str(run_dir), "--n", "4") == 0
    assert generate(tmp_path / "c", "--run", str(run_dir), "--n", "4", "--seed", "1") == 0
    a, b, c = pixels(tmp_path / "a"), pixels(tmp_path / "b"), pixels(tmp_path / "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_shards_union_equals_unsharded(run_dir, tmp_path, capsys):
    common = ["--run", str(run_dir), "--prompt", "chest x-ray", "a bird sitting on a tree", "--n", "4"]
    assert generate(tmp_path / "whole", *common) == 0
    assert generate(tmp_path / "sharded", *common, "--shard", "1/2") == 0
    assert "remain for other shards" in capsys.readouterr().out
    assert not (tmp_path / "sharded" / "train" / "metadata.jsonl").exists()
    assert generate(tmp_path / "sharded", *common, "--shard", "0/2") == 0
    assert rows(tmp_path / "sharded") == rows(tmp_path / "whole")
    whole, sharded = pixels(tmp_path / "whole"), pixels(tmp_path / "sharded")
    assert whole.keys() == sharded.keys() and all(np.array_equal(whole[k], sharded[k]) for k in whole)


@pytest.mark.parametrize("overlap", [False, True], ids=["inline-writes", "writes-on-a-thread"])
def test_resume_skips_finished_images(run_dir, tmp_path, monkeypatch, overlap):
    monkeypatch.setattr(runner.Generator, "overlap_writes", overlap)
    real = runner.sample_images
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "sample_images", flaky)
    assert generate(tmp_path / "r", "--run", str(run_dir), "--n", "7") == 130
    assert len(list((tmp_path / "r" / "train").rglob("*.png"))) == 3 and not list((tmp_path / "r").rglob(".*.tmp*"))
    stale = tmp_path / "r" / "train" / runner.image_file(5)  # what a SIGKILL mid-write leaves
    stale = stale.with_name(f".{stale.name}.tmp4242")
    stale.write_bytes(b"partial")
    calls["n"] = -100
    assert generate(tmp_path / "r", "--run", str(run_dir), "--n", "7") == 0
    assert calls["n"] == -100 + 2  # only the two unfinished batches (3 + 1 images) were sampled
    assert not stale.exists()
    assert generate(tmp_path / "w", "--run", str(run_dir), "--n", "7") == 0
    a, b = pixels(tmp_path / "r"), pixels(tmp_path / "w")
    assert all(np.array_equal(a[k], b[k]) for k in b) and rows(tmp_path / "r") == rows(tmp_path / "w")


def test_resume_redoes_images_whose_plan_changed(run_dir, tmp_path, capsys):
    common = ["--run", str(run_dir), "--n", "2"]
    assert generate(tmp_path, *common, "--prompt", "chest x-ray, pleural effusion") == 0
    assert generate(tmp_path, *common, "--prompt", "chest x-ray, pneumothorax") == 0  # same count, other prompt
    assert "generated 2 image(s)" in capsys.readouterr().out
    assert [r["text"] for r in rows(tmp_path)] == ["chest x-ray, pneumothorax"] * 2
    assert generate(tmp_path, *common, "--prompt", "chest x-ray, pneumothorax", "--dicom") == 0
    assert "generated 2 image(s)" in capsys.readouterr().out and all("dicom_file" in r for r in rows(tmp_path))
    assert generate(tmp_path, *common, "--prompt", "chest x-ray, pneumothorax", "--dicom") == 0
    assert "generated 0 image(s)" in capsys.readouterr().out
    # a smaller plan without DICOM: the files only the earlier plan listed go with it
    assert generate(tmp_path, "--run", str(run_dir), "--n", "1", "--prompt", "chest x-ray, pneumothorax") == 0
    assert sorted(p.name for p in (tmp_path / "train").rglob("syn*")) == ["syn0000000.png"]


def test_rerun_never_keeps_what_another_run_changed(run_dir, tmp_path, monkeypatch, capsys):
    common = ["--run", str(run_dir), "--n", "2"]
    assert generate(tmp_path / "a", *common, "--prompt", "chest x-ray, pleural effusion") == 0
    fresh = pixels(tmp_path / "a")
    # another run, interrupted after it replaced image 0 but before its journal line: the first run's journal row
    # must no longer stand for that file
    first, second = (tmp_path / "a" / "train" / runner.image_file(i) for i in (0, 1))
    first.write_bytes(second.read_bytes())
    # another run, interrupted at its first batch: the finished run's metadata must not outlive its images
    monkeypatch.setattr(runner, "sample_images", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert generate(tmp_path / "a", *common, "--prompt", "chest x-ray, pneumothorax") == 130
    assert not (tmp_path / "a" / "train" / "metadata.jsonl").exists()
    assert not (tmp_path / "a" / "generate.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert generate(tmp_path / "a", *common, "--prompt", "chest x-ray, pleural effusion") == 0
    assert "generated 2 image(s)" in capsys.readouterr().out
    again = pixels(tmp_path / "a")
    assert all(np.array_equal(fresh[k], again[k]) for k in fresh)


def test_extending_a_run_keeps_its_whole_batches(run_dir, tmp_path, capsys):
    common = ["--run", str(run_dir), "--prompt", "chest x-ray"]  # batches of 3
    assert generate(tmp_path / "grown", *common, "--n", "7") == 0
    capsys.readouterr()
    assert generate(tmp_path / "grown", *common, "--n", "10") == 0
    # 0-2 and 3-5 keep their batches; 6 was alone in its batch and now shares one with 7 and 8
    assert "generated 4 image(s)" in capsys.readouterr().out
    assert generate(tmp_path / "fresh", *common, "--n", "10") == 0
    assert rows(tmp_path / "grown") == rows(tmp_path / "fresh")
    grown, fresh = pixels(tmp_path / "grown"), pixels(tmp_path / "fresh")
    assert all(np.array_equal(grown[k], fresh[k]) for k in fresh)


def test_shards_add_up_whatever_each_launch_process_count():
    batches = [list(range(i, min(23, i + 2))) for i in range(0, 23, 2)]  # 23 images in batches of 2

    def made(shard: tuple[int, int], processes: int) -> list[list[int]]:
        return [b for rank in range(processes) for b in runner.assign_batches(batches, shard, rank, processes)]

    both = made((0, 2), 2) + made((1, 2), 1)  # two machines, launched with different process counts
    assert sorted(both) == batches


def test_conditions_file_csv_and_jsonl(run_dir, tmp_path):
    seed = 8020960032736784054  # a recorded 63-bit seed, copied back: a float would round it
    (tmp_path / "plan.csv").write_text(
        f"age,sex,findings,count,seed\n70,M,cardiomegaly@cardiac,2,{seed}\n\n30,F,,1,\n\n"  # blank lines skipped
    )
    assert generate(tmp_path / "csv", "--run", str(run_dir), "--conditions", str(tmp_path / "plan.csv")) == 0
    r = rows(tmp_path / "csv")
    assert [x["age"] for x in r] == [70, 70, 30] and r[0]["seed"] == seed and r[0]["origin"] == "plan.csv:2"
    assert r[0]["findings"] == [{"label": "cardiomegaly", "locations": ["cardiac"]}]
    effusion = {
        "label": "pleural effusion",
        "locations": "left, costophrenic angle",
    }  # a string: the text form
    (tmp_path / "plan.jsonl").write_text(
        json.dumps({"prompt": "a bird sitting on a tree", "count": 2})
        + "\n"
        + json.dumps({"findings": [{"label": "nodule", "locations": ["left upper lobe"]}]})
        + "\n"
        + json.dumps({"findings": [effusion], "seed": seed})
        + "\n"
    )
    assert (
        generate(
            tmp_path / "jsonl",
            "--run",
            str(run_dir),
            "--conditions",
            str(tmp_path / "plan.jsonl"),
            "--allow-unknown-names",
        )
        == 0
    )
    r = rows(tmp_path / "jsonl")
    assert [x["text"] for x in r[:2]] == ["a bird sitting on a tree"] * 2 and "nodule" in r[2]["text"]
    assert r[3]["findings"] == [{"label": "pleural effusion", "locations": ["left", "costophrenic angle"]}]
    assert r[3]["seed"] == seed


@pytest.mark.parametrize(
    "content,message",
    [
        ("age,sex\n70,M\nabc,F\n", "plan.csv line 3: age 'abc' is not an age"),
        ("age,count\n70,0\n", "plan.csv line 2: count must be a whole number from 1"),
        ("age,count\n70,100000000\n", "plan.csv line 2: count must be a whole number from 1"),
        ("age,count\n70,inf\n", "plan.csv line 2: count 'inf' is not a whole number"),
        ("age,seed\n70,1e30\n", "plan.csv line 2: seed '1e30' is not exact"),
        ("age,seed\n70,-1\n", "plan.csv line 2: seed '-1' is outside"),
        (
            "age,findings\n70,pleural effusion@left,costophrenic angle\n",
            "plan.csv line 2: 3 values for 2 columns",
        ),
        (
            '{"findings": [{"label": "nodule", "locations": 3}]}',
            "plan.jsonl line 1: locations must be a list",
        ),
        (b"findings\nn\xf3dulo\n", "byte 0xf3 is not UTF-8"),
        ("age\n70\n".encode("utf-16"), "is UTF-16 text"),
        ("age,weight\n70,80\n", "plan.csv line 2: unknown column(s) weight"),
        ("sex\nX\n", "plan.csv line 2: sex 'X'"),
        ("findings\n[broken\n", "plan.csv line 2: findings is not valid JSON"),
    ],
)
def test_conditions_file_errors_name_line_and_reason(run_dir, tmp_path, capsys, content, message):
    plan = tmp_path / ("plan.jsonl" if message.startswith("plan.jsonl") else "plan.csv")
    plan.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert generate(tmp_path / "o", "--run", str(run_dir), "--conditions", str(plan)) == 1
    assert message in capsys.readouterr().err


def test_like_dataset_keeps_and_reweights_the_distribution(run_dir, tiny_dataset, tmp_path):
    assert (
        generate(
            tmp_path / "like",
            "--run",
            str(run_dir),
            "--like",
            str(tiny_dataset),
            "--n",
            "30",
            "--steps",
            "1",
            base=("--batch-size", "10"),
        )
        == 0
    )
    real = [json.loads(x) for x in (tiny_dataset / "train" / "metadata.jsonl").read_text().splitlines()]
    real_conditions = {json.dumps([x["age"], x["sex"], x["findings"]]) for x in real}
    made = rows(tmp_path / "like")
    assert len(made) == 30 and all(json.dumps([x["age"], x["sex"], x["findings"]]) in real_conditions for x in made)
    # each image names the row it was drawn from: with source_index.csv, the way back to a report
    real_ids = {x["id"] for x in real}
    assert all(x["origin"].split("#")[0] == f"like:{tiny_dataset.name}" for x in made)
    assert {x["origin"].split("#")[1] for x in made} <= real_ids
    assert (
        generate(
            tmp_path / "re",
            "--run",
            str(run_dir),
            "--like",
            str(tiny_dataset),
            "--n",
            "30",
            "--steps",
            "1",
            "--reweight",
            "pacemaker=50",
            base=("--batch-size", "10"),
        )
        == 0
    )

    def share(rs):
        return np.mean([any(f["label"] == "pacemaker" for f in x["findings"]) for x in rs])

    p = share(real)  # weight 50 makes a pacemaker row 50 times as likely to be drawn
    expected = 50 * p / (50 * p + 1 - p)
    assert share(rows(tmp_path / "re")) > max(0.5, 3 * share(made))  # 30 images: a loose check end to end
    drawn = cond.like_dataset(tiny_dataset, "train", 4000, 0, {"pacemaker": 50.0})
    assert abs(share([item.conditions.structured() for item in drawn]) - expected) < 0.05
    other_spelling = cond.like_dataset(tiny_dataset, "train", 4000, 0, {"Pace Maker": 50.0})
    assert [i.conditions for i in other_spelling] == [i.conditions for i in drawn]


def test_reweight_counts_a_finding_once_whatever_its_locations(tmp_path):

    (tmp_path / "train").mkdir()
    both_sides = [{"label": "pleural effusion", "locations": [side]} for side in ("left", "right")]
    (tmp_path / "train" / "metadata.jsonl").write_text(
        json.dumps({"age": 70, "findings": both_sides})
        + "\n"
        + json.dumps({"age": 40, "findings": [{"label": "pleural effusion", "locations": []}]})
        + "\n"
    )
    drawn = cond.like_dataset(tmp_path, "train", 4000, 0, {"pleural effusion": 10.0})
    assert 0.45 < np.mean([item.conditions.age == 70 for item in drawn]) < 0.55


def test_keep_findings_ranks_by_the_training_counts(tiny_model, tmp_path):
    """A prompt that must drop a finding keeps the rarest one, counted in the data as prepare counted it."""
    (tmp_path / "data" / "train").mkdir(parents=True)
    heart = {"label": "cardiomegaly", "locations": []}
    data = [{"findings": [heart]}] * 9 + [{"age": 50, "findings": [heart, {"label": "pneumothorax", "locations": []}]}]
    (tmp_path / "data" / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    common = [
        "--model.base",
        str(tiny_model),
        "--like",
        str(tmp_path / "data"),
        "--reweight",
        "pneumothorax=1000",
        "--n",
        "1",
        "--prompts.max-tokens",
        "20",
    ]
    for keep, kept in [("first", "cardiomegaly"), ("rarest", "pneumothorax"), ("commonest", "cardiomegaly")]:
        assert generate(tmp_path / keep, *common, "--prompts.keep-findings", keep) == 0
        assert rows(tmp_path / keep)[0]["text"] == f"chest x-ray, age 50, diagnosis {kept}"


def test_image_seeds_do_not_repeat_at_scale():
    from cxrgen.model.sampling import image_seed

    seeds = [image_seed(0, i) for i in range(200_000)]
    assert len(set(seeds)) == len(seeds) and max(seeds) >= 2**32 and max(seeds) < 2**63


def test_base_model_with_loras_and_raw_prompts(run_dir, tiny_model, tmp_path):
    lora = run_dir / "lora" / "lora_kohya.safetensors"
    assert (
        generate(
            tmp_path,
            "--model.base",
            str(tiny_model),
            "--loras",
            f"{lora}:0.5",
            "--prompt",
            "chest x-ray",
            "--n",
            "2",
            "--bits",
            "16",
            "--sampler",
            "ddim",
        )
        == 0
    )
    r = rows(tmp_path)
    assert r[0]["adapters"][0]["weight"] == 0.5 and r[0]["sampler"]["name"] == "ddim"
    assert np.asarray(Image.open(tmp_path / "train" / r[0]["file_name"])).dtype == np.uint16


def test_names_unchecked_without_training_data_say_so(tiny_model, tmp_path, caplog):
    assert generate(tmp_path, "--model.base", str(tiny_model), "--finding", "pneumothorax", base=("--steps", "1")) == 0
    assert "finding names are not checked against the training data" in caplog.text


def test_merged_loras_give_the_images_of_adapter_layers(tiny_model, tmp_path):
    lora = make_random_lora(tiny_model, tmp_path / "lora")
    text = make_random_lora(tiny_model, tmp_path / "text", scale=0.1, text_encoder=True)  # UNet and text encoder
    loras = ["--loras", f"{lora}:0.5", f"{text}:0.7"]
    common = ["--model.base", str(tiny_model), "--prompt", "chest x-ray", "--n", "3"]
    assert generate(tmp_path / "none", *common) == 0
    assert generate(tmp_path / "layers", *common, *loras, "--no-merge-loras") == 0
    assert generate(tmp_path / "merged", *common, *loras) == 0
    none, layers, merged = (pixels(tmp_path / name) for name in ("none", "layers", "merged"))
    assert all(np.abs(layers[k].astype(int) - merged[k]).max() <= 1 for k in layers)  # weights kept
    assert all(np.abs(none[k].astype(int) - merged[k]).mean() > 2 for k in none)  # the LoRA was applied
    assert rows(tmp_path / "merged")[0]["sampler"]["loras_merged"] is True
    assert rows(tmp_path / "layers")[0]["sampler"]["loras_merged"] is False


def test_loras_merge_at_full_precision_then_cast(tiny_model, tmp_path, monkeypatch):
    """In fp16/bf16 the merged weights are the fp32 merge cast once, not a second rounding onto the low grid."""
    import torch

    lora = make_random_lora(tiny_model, tmp_path / "lora", scale=0.01)

    def unet_weights(dtype):
        from cxrgen.model.source import ModelSource, load_sampling_pipeline

        source = ModelSource(ModelConfig(base=str(tiny_model)), [(str(lora), 1.0)])
        pipe, _, merged = load_sampling_pipeline(source, "dpmsolver++", dtype, "cpu")
        assert merged
        return pipe.unet.state_dict()

    full, half = unet_weights(torch.float32), unet_weights(torch.float16)
    assert full.keys() == half.keys() and not any("lora" in k for k in half)
    assert all(half[k].dtype == torch.float16 and torch.equal(half[k], full[k].half()) for k in full)


def test_small_v_prediction_model_generates(tmp_path):
    """The learning benchmark's architecture: make-tiny-model --arch small with v-prediction, sampled as such."""
    model = tmp_path / "small"
    assert main(["make-tiny-model", "--out", str(model), "--arch", "small", "--prediction-type", "v_prediction"]) == 0
    assert json.loads((model / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    out = tmp_path / "out"
    assert generate(out, "--model.base", str(model), "--prompt", "chest x-ray", "--n", "1") == 0
    assert Image.open(out / "train" / rows(out)[0]["file_name"]).size == (64, 64)


@pytest.mark.parametrize("sampler", ["euler", "pndm"])
def test_other_samplers(run_dir, tmp_path, sampler):
    assert generate(tmp_path, "--run", str(run_dir), "--sampler", sampler, "--n", "1") == 0


def test_long_prompt_images_do_not_depend_on_their_batch(run_dir, tmp_path):
    long = ", ".join(["diagnosis pleural effusion, loc right"] * 15)
    common = ["--run", str(run_dir), "--long-prompts", "--n", "1", "--batch-size", "2"]
    assert generate(tmp_path / "mixed", *common, "--prompt", "chest x-ray", long, "chest x-ray, cardiomegaly") == 0
    # the same short prompts without the long one: a batch of the same size (a batch of another size may differ
    # in the last bit on a CPU, whatever the prompts)
    assert generate(tmp_path / "short", *common, "--prompt", "chest x-ray", "chest x-ray, cardiomegaly") == 0
    mixed, short = pixels(tmp_path / "mixed"), pixels(tmp_path / "short")
    assert np.array_equal(mixed["syn0000000"], short["syn0000000"])  # batched with the third, not the long one
    # a negative prompt longer than the prompts pads them to its length instead of failing
    assert generate(tmp_path / "negative", *common, "--prompt", "chest x-ray", "--negative-prompt", long) == 0


def test_sampling_keeps_long_and_short_prompts_apart(tiny_model):
    """Training's sample grids mix prompt lengths in one call: each image must be the one generate makes."""
    import torch

    from cxrgen.model.loading import ModelConfig, load_components
    from cxrgen.model.sampling import make_pipeline, sample_images

    m = load_components(ModelConfig(base=str(tiny_model)), torch.float32)
    pipe = make_pipeline(m, "dpmsolver++")
    long = ", ".join(["diagnosis pleural effusion, loc right"] * 15)

    def sample(prompts, seeds):
        return sample_images(pipe, prompts, seeds, steps=2, long_prompts=True, resolution=64)

    mixed = sample(["chest x-ray", long, "chest x-ray, cardiomegaly"], [1, 2, 3])
    short, alone = sample(["chest x-ray", "chest x-ray, cardiomegaly"], [1, 3]), sample([long], [2])
    assert np.array_equal(mixed[[0, 2]], short) and np.array_equal(mixed[1], alone[0])


def test_long_prompt_warning_counts_once(run_dir, tmp_path, caplog):
    long = ", ".join(["diagnosis pleural effusion, loc right"] * 15)
    assert (
        generate(
            tmp_path,
            "--run",
            str(run_dir),
            "--prompt",
            long,
            long + ", x",
            "short",
            "--n",
            "1",
            "--steps",
            "1",
        )
        == 0
    )
    assert caplog.text.count("exceed 77 tokens") == 1 and "2 prompt(s) exceed" in caplog.text
    caplog.clear()
    assert (
        generate(
            tmp_path / "l",
            "--run",
            str(run_dir),
            "--prompt",
            long,
            "--n",
            "1",
            "--steps",
            "1",
            "--long-prompts",
        )
        == 0
    )
    assert "exceed 77 tokens" not in caplog.text
    assert (
        generate(
            tmp_path / "n",
            "--run",
            str(run_dir),
            "--prompt",
            "short",
            "--negative-prompt",
            long,
            "--n",
            "1",
            base=("--steps", "1"),
        )
        == 0
    )
    assert "the negative prompt exceeds 77 tokens" in caplog.text


def test_bad_inputs(run_dir, tmp_path, capsys):
    assert generate(tmp_path, "--model.base", str(tmp_path / "nope"), "--n", "1") == 1
    assert "cannot load base model" in (err := capsys.readouterr().err) and "no such folder" in err  # not the hub's
    assert generate(tmp_path, "--run", str(tmp_path), "--n", "1") == 2
    assert "no run.json" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--loras", str(tmp_path / "missing.safetensors")) == 2
    assert "missing.safetensors: no such file or folder" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--loras", "runs/typo/lora") == 2
    assert "runs/typo/lora: no such file or folder" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    assert generate(tmp_path, "--run", str(run_dir), "--loras", str(tmp_path / "bad.safetensors")) == 1
    assert "cannot load LoRA" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--dtype", "fp16") == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--age", "3", "--prompt", "x") == 2
    assert "choose one of" in capsys.readouterr().err
    assert generate(tmp_path, "--n", "1") == 2
    assert "--run RUN_FOLDER or --model.base" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--like", str(tmp_path), "--n", "1") == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "metadata.jsonl").write_text("")
    assert generate(tmp_path, "--run", str(run_dir), "--like", str(tmp_path / "empty"), "--n", "1") == 1
    assert "has no rows to draw from" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--prompt", " ") == 2
    assert "a prompt is empty" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--reweight", "pneumothorax=5") == 2
    assert "give --like too" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--conditions", "plan.csv", "--n", "3") == 2
    assert "give each row a count column" in capsys.readouterr().err
    assert generate(tmp_path, "--run", str(run_dir), "--age", "-5") == 1
    assert "--age -5: give an age in years" in capsys.readouterr().err
    # a model trained on captions has no words for structured conditions
    assert generate(tmp_path, "--run", str(run_dir), "--age", "60", "--prompts.level", "caption") == 2
    assert "makes no words from these conditions" in capsys.readouterr().err


def test_two_processes_split_the_work(run_dir, tmp_path):
    import torch

    common = [
        "generate",
        "--run",
        str(run_dir),
        "--prompt",
        "chest x-ray, " + "pleural effusion, " * 30,  # over 77 tokens: one warning, not one per process
        "--n",
        "6",
        "--steps",
        "2",
        "--batch-size",
        "2",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs: thread count changes float summation order on CPUs
    try:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "cxrgen",
        *common,
        "--out",
        str(tmp_path / "two"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "two" / ".journal").glob("*.jsonl"))) == 2
    assert result.stderr.count("exceed 77 tokens") == 1, result.stderr[-3000:]
    a, b = pixels(tmp_path / "one"), pixels(tmp_path / "two")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_compiled_model_generates_the_same_images(run_dir, tiny_model, tmp_path, monkeypatch, capsys):
    import torch

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend="eager"))  # no inductor: seconds
    lora = make_random_lora(tiny_model, tmp_path / "lora")
    common = ["--model.base", str(tiny_model), "--loras", str(lora), "--prompt", "chest x-ray", "--n", "7"]
    assert generate(tmp_path / "eager", *common) == 0
    assert generate(tmp_path / "compiled", *common, "--compile") == 0  # merged, so q, k, v fuse into one product
    assert "img/s" in capsys.readouterr().out
    a, b = pixels(tmp_path / "eager"), pixels(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(np.abs(a[k].astype(int) - b[k]).max() <= 1 for k in a)
    assert rows(tmp_path / "compiled")[0]["sampler"]["compiled"] is True
    summary = runner.Generator(
        GenerateConfig(
            out=str(tmp_path / "again"),
            model=ModelConfig(base=str(tiny_model)),
            prompt=["chest x-ray"],
            n=5,
            steps=2,
            batch_size=2,
        )
    ).run()
    assert summary.made == 5 and summary.steady_images_per_s > 0  # batches after the first (warm-up)
