from collections import Counter

import pytest

from cxrgen.config import ConfigError
from cxrgen.prepare.filters import FilterConfig, apply_filters
from cxrgen.prepare.splits import SplitConfig, assign_splits
from cxrgen.records import Finding, Record


def make(n=200, **over):
    out = []
    for i in range(n):
        fields = dict(
            id=f"r{i:04d}",
            image=f"{i}.png",
            row=i,
            patient_key=f"pt{i // 3}",
            age=20 + i % 70,
            sex="MF"[i % 2],
            projection=["PA", "L", "AP_horizontal", "AP"][i % 4],
            modality=["CR", "DX"][i % 2],
            findings=[Finding("normal")] if i % 5 == 0 else [Finding("cardiomegaly"), Finding("unchanged")],
        )
        fields.update(over)
        out.append(Record(**fields))
    return out


def test_default_keeps_frontal_only():
    kept, rejected = apply_filters(make(), FilterConfig(), seed=0)
    assert {r.projection for r in kept} == {"PA", "AP", "AP_horizontal"}
    assert all(x.reason == "filter: projection L" for x in rejected)


def test_each_filter():
    records = make()
    cfg = FilterConfig(projections=None, sexes=["F"], min_age=30, max_age=50, modalities=["dx"])
    kept, _ = apply_filters(records, cfg, 0)
    assert kept and all(r.sex == "F" and 30 <= r.age <= 50 and r.modality == "DX" for r in kept)
    kept, _ = apply_filters(records, FilterConfig(projections=None, normal_only=True), 0)
    assert kept and all(r.is_normal for r in kept)
    kept, rej = apply_filters(records, FilterConfig(projections=None, exclude_labels=["Cardiomegaly"]), 0)
    assert all(r.is_normal for r in kept) and "excluded label cardiomegaly" in rej[0].reason
    kept, _ = apply_filters(records, FilterConfig(projections=None, include_labels=["cardiomegaly"]), 0)
    assert len(kept) == 160


def test_per_patient_and_subset_are_seeded():
    records = make()
    a, _ = apply_filters(records, FilterConfig(projections=None, per_patient=1), seed=1)
    b, _ = apply_filters(list(reversed(records)), FilterConfig(projections=None, per_patient=1), seed=1)
    c, _ = apply_filters(records, FilterConfig(projections=None, per_patient=1), seed=2)
    assert len(a) == len({r.patient_key for r in records}) and {r.id for r in a} == {r.id for r in b} != {
        r.id for r in c
    }
    s, rej = apply_filters(records, FilterConfig(projections=None, subset=25), seed=3)
    assert len(s) == 25 and len(rej) == 175 and "random subset" in rej[0].reason


def test_filter_on_a_field_no_record_has_is_skipped(caplog):
    kept, _ = apply_filters(make(10, projection=None), FilterConfig(), 0)
    assert len(kept) == 10 and "the projection filter could not apply and kept every image" in caplog.text
    kept, _ = apply_filters(make(10, age=None), FilterConfig(projections=None, min_age=30), 0)
    assert len(kept) == 10 and "no record has a age: the age filter is not applied" in caplog.text


def test_unknown_projections_are_kept_unless_strict():
    records = make(12)
    for r in records[8:]:
        r.projection = None
    kept, _ = apply_filters(records, FilterConfig(), 0)
    assert sum(r.projection is None for r in kept) == 4 and "L" not in {r.projection for r in kept}
    kept, rejected = apply_filters(records, FilterConfig(strict_projection=True), 0)
    assert all(r.projection is not None for r in kept)
    assert sum(x.reason == "filter: projection not known" for x in rejected) == 4
    kept, rejected = apply_filters(records, FilterConfig(projections=["PA"]), 0)  # asked for by name: strict
    assert {r.projection for r in kept} == {"PA"} and sum("not known" in x.reason for x in rejected) == 4


def test_known_non_radiographs_are_dropped():
    records = make(6, modality=None)
    records[0].modality, records[1].modality = "CT", "MR"
    kept, rejected = apply_filters(records, FilterConfig(projections=None), 0)
    assert len(kept) == 4 and [x.reason for x in rejected] == ["filter: modality CT", "filter: modality MR"]
    kept, _ = apply_filters(records, FilterConfig(projections=None, radiographs_only=False), 0)
    assert len(kept) == 6


def test_filter_values_in_other_words_and_values_no_record_has(caplog):
    records = make(40)
    kept, _ = apply_filters(records, FilterConfig(projections=["lateral"], sexes=["female"]), 0)
    assert kept and all(r.projection == "L" and r.sex == "F" for r in kept)
    kept, _ = apply_filters(records, FilterConfig(projections=["AP-horizontal"]), 0)
    assert not kept
    assert "no record has the projection 'AP-HORIZONTAL' (the records have: AP, AP_horizontal, L, PA)" in caplog.text


def test_unknown_label_warns_with_closest(caplog):
    apply_filters(make(10), FilterConfig(projections=None, include_labels=["cardiomegally"]), 0)
    assert "closest known: cardiomegaly" in caplog.text


def test_config_validation():
    with pytest.raises(ConfigError, match="min_age"):
        FilterConfig(min_age=50, max_age=10)
    with pytest.raises(ConfigError, match="sum to 1"):
        SplitConfig(train=0.9, val=0.2, test=0.1)


def test_splits_are_patient_level_deterministic_and_stable():
    records = make(3000)
    splits = assign_splits(records, SplitConfig(), seed=0)
    by_patient: dict[str, set] = {}
    for r in records:
        by_patient.setdefault(r.patient_key, set()).add(splits[r.id])
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits
    share = Counter(splits.values())
    assert 0.75 < share["train"] / 3000 < 0.85 and share["val"] > 200 and share["test"] > 200
    assert assign_splits(list(reversed(records)), SplitConfig(), 0) == splits
    subset = assign_splits(records[::7], SplitConfig(), 0)  # other filters: same patient, same split
    assert all(splits[k] == v for k, v in subset.items())
    assert assign_splits(records, SplitConfig(), seed=1) != splits


def test_official_split_wins():
    records = make(10, official_split="test")
    assert set(assign_splits(records, SplitConfig(), 0).values()) == {"test"}
    assert set(assign_splits(records, SplitConfig(official=False, train=1, val=0, test=0), 0).values()) == {"train"}


def test_official_split_holds_for_all_of_a_patients_images(caplog):
    import dataclasses

    records = make(300)  # three images per patient
    # the split file lists only each patient's first image; one patient is listed in two splits
    records = [dataclasses.replace(r, official_split="test" if i % 3 == 0 else None) for i, r in enumerate(records)]
    records[1] = dataclasses.replace(records[1], official_split="train")
    splits = assign_splits(records, SplitConfig(train=1, val=0, test=0), 0)
    assert set(splits.values()) == {"test"}  # the unlisted images follow the patient; the conflict goes held out
    assert "1 patient(s) have images in several official splits" in caplog.text


def test_split_does_not_depend_on_the_salt():
    from cxrgen.records import PatientKeyer

    a, b = PatientKeyer("salt-a").fields("padchest", "p42"), PatientKeyer("salt-b").fields("padchest", "p42")
    assert a["patient_key"] != b["patient_key"] and a["split_key"] == b["split_key"]
    ra, rb = Record(id="x", **a), Record(id="y", **b)
    assert assign_splits([ra], SplitConfig(), 7)["x"] == assign_splits([rb], SplitConfig(), 7)["y"]
