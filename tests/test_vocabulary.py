"""A dataset's vocabulary: names read through it, spellings unified, counts per split, and `cxrgen vocab`."""

import json

import numpy as np

from cxrgen.cli import main
from cxrgen.evaluate.adherence import adherence
from cxrgen.records import Conditions, Finding
from cxrgen.vocabulary import Vocabulary, load_vocabulary, split_side, standard_key, unify_spellings


def vocab():
    train = [
        Conditions(findings=[Finding("pleural effusion", ("right",)), Finding("COPD signs")]),
        Conditions(findings=[Finding("pleural effusion", ("bilateral", "costophrenic angle"))]),
        Conditions(findings=[Finding("normal")]),
    ]
    test = [Conditions(findings=[Finding("COPD signs", ("basal",))])]
    return Vocabulary.from_conditions(
        {"train": train, "test": test}, {"pleural effusion": ["pleural effusion right side"]}
    )


def test_counts_per_split_and_json_roundtrip():
    v = vocab()
    assert v.labels["pleural effusion"].counts == {"train": 2} and v.labels["COPD signs"].counts == {
        "train": 1,
        "test": 1,
    }
    assert v.locations["bilateral"].counts == {"train": 1}
    assert v.label_counts() == {"pleural effusion": 2, "COPD signs": 2, "normal": 1}
    back = Vocabulary.from_json(json.loads(json.dumps(v.to_json())))
    assert back == v and back.labels["pleural effusion"].synonyms == ["pleural effusion right side"]


def test_names_are_read_through_the_vocabulary():
    v = vocab()
    assert (v.resolve_label("pleural effusion").how, v.resolve_label("Pleural_Effusion").how) == (
        "exact",
        "spelling",
    )
    side = v.resolve_label("Pleural Effusion left side")
    assert (side.name, side.side, side.how) == ("pleural effusion", "left", "side")
    assert v.resolve_label("effusion").name == "pleural effusion"  # a synonym other releases use
    assert v.resolve_label("no finding").name == "normal"
    unknown = v.resolve_label("COPD sings")
    assert unknown.name is None and unknown.closest == ["COPD signs"]
    assert v.resolve_location("loc Right").name == "right" and v.resolve_location("both sides").name == "bilateral"
    finding, notes, missing = v.resolve_finding(Finding("pleural effusion both sides", ("Costophrenic Angle", "apex")))
    assert finding == Finding("pleural effusion", ("bilateral", "Costophrenic Angle".lower(), "apex"))
    assert len(notes) == 2 and missing == ["unknown location 'apex': the training data never uses it"]


def test_sides_and_standard_keys():
    assert split_side("hypoexpansion both side") == ("hypoexpansion", "bilateral")
    assert split_side("pleural effusion right side") == ("pleural effusion", "right")
    assert split_side("right sided aortic arch") == ("right sided aortic arch", None)
    assert standard_key("Pleural_Effusion left side") == standard_key("effusion") == "pleural effusion"


def test_one_spelling_per_name():
    records = [Conditions(findings=[Finding("COPD signs", ("Left",))]) for _ in range(3)]
    records.append(Conditions(findings=[Finding("copd  signs", ("left",))]))
    variants = unify_spellings(records)
    assert {f.label for r in records for f in r.findings} == {"COPD signs"}
    assert {x for r in records for f in r.findings for x in f.locations} == {"Left"}
    assert variants == {"COPD signs": ["copd  signs"], "Left": ["left"]}


def test_adherence_maps_labels_as_the_vocabulary_reads_them():
    rows = [
        {"findings": [{"label": "pleural effusion right side"}]},
        {"findings": [{"label": "Effusion"}]},
        {"findings": []},
        {"findings": [{"label": "normal"}]},
    ]
    result = adherence(rows, np.array([[0.9], [0.8], [0.1], [0.2]]), ("Effusion",))
    effusion = result["per_finding"]["Effusion"]
    assert (effusion["auroc"], effusion["positives"], effusion["negatives"]) == (1.0, 2, 1)  # [] states nothing


def test_vocab_command(tiny_dataset, capsys):
    assert main(["vocab", str(tiny_dataset), "--kind", "labels"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tiny_dataset / "prepare.json").read_text())["vocabulary"]
    first = next(iter(summary["labels"]))
    assert "labels" in out and first in out and "train" in out and "locations\n" not in out
    assert main(["vocab", str(tiny_dataset), "--name", "Pleural Effusion left side", "pacemakr"]) == 1
    out = capsys.readouterr().out
    assert "the label 'pleural effusion' at left (side)" in out and "closest: pacemaker" in out
    assert main(["vocab", str(tiny_dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary
    assert load_vocabulary(tiny_dataset) == Vocabulary.from_json(summary)
    assert main(["vocab", str(tiny_dataset / "nothing")]) == 2


def test_synonyms_work_both_ways_and_sides_are_locations_to_check():
    """A dataset written as NIH writes it (Effusion, Edema, no locations) answers to PadChest's names, and a side
    written into a name is a location the data must use too."""
    nih = Vocabulary.from_conditions({"train": [Conditions(findings=[Finding("Effusion"), Finding("Edema")])]})
    assert nih.resolve_label("pleural effusion").name == "Effusion"
    assert nih.resolve_label("pulmonary edema").name == "Edema"
    finding, notes, missing = nih.resolve_finding(Finding("pleural effusion right side"))
    assert finding.label == "Effusion" and missing == ["unknown location 'right': the training data never uses it"]
    padchest = vocab()
    assert padchest.resolve_finding(Finding("Effusion right side"))[0] == Finding("pleural effusion", ("right",))


def test_every_source_states_a_label_once_with_its_side_as_a_location():
    from cxrgen.prepare.readers.folder import parse_findings
    from cxrgen.records import Record
    from cxrgen.vocabulary import settle_findings

    r = Record(
        findings=parse_findings("Pneumonia/Viral;pneumonia@basal;Pleural Effusion right side@costophrenic angle")
    )
    settle_findings([r])
    assert r.findings == [
        Finding("Pneumonia", ("basal",)),
        Finding("Viral"),
        Finding("Pleural Effusion", ("right", "costophrenic angle")),
    ]
    assert r.label_notes == ("side variant: Pleural Effusion right side", "repeat")
