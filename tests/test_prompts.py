from collections import Counter

import pytest

from cxrgen.config import ConfigError
from cxrgen.prompts import PromptBuilder, PromptConfig
from cxrgen.records import Conditions, Finding

PAPER = Conditions(
    age=47,
    sex="M",
    view="PA",
    projection="PA",
    modality="DX",
    findings=[Finding("calcified granuloma", ("right upper lobe",))],
)


def build(c, **kw):
    return PromptBuilder(PromptConfig(**kw)).build(c)


def test_full_level_is_the_papers_format():
    p = build(PAPER)
    assert p.text == (
        "chest x-ray, age 47 male, view PA, projection PA, modality DX, "
        "diagnosis calcified granuloma, loc right upper lobe"
    )
    assert p.tokens == p.tokens_full and p.dropped == []


def test_levels_and_missing_fields():
    assert build(PAPER, level="simple").text == "chest x-ray"
    assert build(PAPER, level="demographic").text == "chest x-ray, age 47 male"
    c = Conditions(age=None, sex="F", view=None, projection="AP", findings=[])
    assert build(c, level="demographic").text == "chest x-ray, female"
    assert build(c).text == "chest x-ray, female, projection AP"
    assert build(Conditions(caption="small left effusion"), level="caption").text == "small left effusion"


def test_template_fields_and_errors():
    c = Conditions(age=60, sex="O", findings=[Finding("nodule", ("left",)), Finding("nodule")])
    assert build(c, template="xray of [a {sex}] patient, {labels}").text == "xray of patient, nodule"
    with pytest.raises(ConfigError, match="unknown"):
        PromptConfig(template="{weight}")
    with pytest.raises(ConfigError, match="part of its own"):
        PromptConfig(template="chest x-ray, findings: {findings}")
    with pytest.raises(ConfigError, match="unbalanced"):
        PromptConfig(template="[age {age}")
    for template in ("x], [y {age}", "a [b [c {age}] d]"):
        with pytest.raises(ConfigError, match="balanced and not nested"):
            PromptConfig(template=template)
    with pytest.raises(ConfigError, match="not a plain"):
        PromptConfig(template="chest x-ray, [age {age:03d}]")  # would print the braces in every prompt


LONG = Conditions(
    age=70,
    sex="F",
    view="PA",
    projection="PA",
    modality="CR",
    findings=[
        Finding("COPD signs", ("right",)),
        Finding("unchanged"),
        Finding("pleural effusion", ("left", "pleural")),
        Finding("COPD signs", ("left",)),
        Finding("normal"),
        Finding("scoliosis", ("thoracic spine",)),
    ]
    + [Finding(f"finding number {i}", ("loc a b", "loc c d")) for i in range(6)],
)


def test_fitting_order_and_record():
    p = build(LONG, max_tokens=77, pseudo_labels="keep")
    assert p.tokens_full > 77 >= p.tokens
    kinds = [d.split(":")[0] for d in p.dropped]
    order = ["pseudo", "location", "finding", "truncated"]
    assert kinds == sorted(kinds, key=order.index)
    assert kinds[0] == "pseudo" and "pseudo: normal" in p.dropped
    assert p.text.startswith("chest x-ray, age 70 female, view PA, projection PA, modality CR")


def test_a_label_is_stated_once_however_long_the_prompt():
    """A repeated label is merged before any fitting, its locations joining the first mention."""
    whole = build(LONG, max_tokens=1000)
    assert whole.text.count("diagnosis COPD signs") == 1 and whole.dropped == []
    assert "diagnosis COPD signs, loc right, loc left" in whole.text
    short = build(Conditions(findings=[Finding("COPD signs")] * 3 + [Finding("nodule")]))
    assert short.text == "chest x-ray, diagnosis COPD signs, diagnosis nodule"


def test_pseudo_label_policies():
    study = Conditions(findings=[Finding("pacemaker"), Finding("normal"), Finding("unchanged"), Finding("exclude")])
    normal = Conditions(findings=[Finding("normal"), Finding("unchanged"), Finding("suboptimal study")])
    assert build(study).text == "chest x-ray, diagnosis pacemaker"  # normal beside a finding is not a normal study
    assert build(normal).text == "chest x-ray, diagnosis normal"
    assert build(study, pseudo_labels="keep").text == (
        "chest x-ray, diagnosis pacemaker, diagnosis normal, diagnosis unchanged, diagnosis exclude"
    )
    assert build(normal, pseudo_labels="drop").text == "chest x-ray"
    with pytest.raises(ConfigError):
        PromptConfig(pseudo_labels="some")


def test_view_codes_that_name_no_view_are_left_out():
    generic = Conditions(view="GENERICA", projection="AP_horizontal", findings=[Finding("pacemaker")])
    assert build(generic).text == "chest x-ray, projection AP_horizontal, diagnosis pacemaker"
    assert build(Conditions(view="LL")).text == "chest x-ray, view LL"


def test_drops_only_as_much_as_needed():
    p = build(LONG, max_tokens=110)
    assert p.tokens <= 110
    assert all(not d.startswith("finding") for d in p.dropped)
    assert build(LONG, max_tokens=1000).dropped == []


def test_keep_findings_policies():
    counts = Counter({f"finding number {i}": n for i, n in enumerate([100, 50, 40, 30, 20, 1])})
    c = Conditions(findings=[Finding(f"finding number {i}") for i in range(6)] * 3)
    rare = PromptBuilder(PromptConfig(keep_findings="rarest", max_tokens=20), label_counts=counts).build(c)
    common = PromptBuilder(PromptConfig(keep_findings="commonest", max_tokens=20), label_counts=counts).build(c)
    first = PromptBuilder(PromptConfig(keep_findings="first", max_tokens=20)).build(c)
    assert "finding number 5" in rare.text and "finding number 0" not in rare.text
    assert "finding number 0" in common.text and "finding number 5" not in common.text
    assert "finding number 0" in first.text


def test_keep_strategy_keeps_everything():
    p = build(LONG, fit="keep")
    assert p.tokens > 77 and p.dropped == []


def test_truncation_never_cuts_inside_a_word():
    words = "the cardiac silhouette is enlarged with bilateral interstitial opacities " * 12
    p = build(Conditions(caption=words), level="caption")
    assert p.tokens <= 77 and p.dropped[-1].startswith("truncated")
    assert words.startswith(p.text) and words[len(p.text)] == " "


def test_fitting_drops_only_what_the_template_shows():
    demographic = build(LONG, level="demographic", max_tokens=8)
    assert demographic.tokens <= 8 and [d.split(":")[0] for d in demographic.dropped] == ["truncated"]
    assert demographic.text == "chest x-ray"  # "age 70 female" does not fit whole, and "age" alone says nothing
    labels = build(LONG, template="chest x-ray, {labels}", max_tokens=30)
    assert labels.tokens <= 30 and not any(d.startswith(("location", "repeat")) for d in labels.dropped)
    assert labels.text.startswith("chest x-ray, COPD signs")


def test_truncation_keeps_whole_field_parts_before_a_caption():
    words = "the cardiac silhouette is enlarged with bilateral interstitial opacities " * 12
    p = build(Conditions(age=47, sex="M", caption=words), template="chest x-ray, [age {age}] [{sex}], {caption}")
    assert p.text.startswith("chest x-ray, age 47 male, the cardiac silhouette") and p.tokens <= 77
