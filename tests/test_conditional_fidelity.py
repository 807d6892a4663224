"""Fidelity by finding: the whole-set distances between the real and generated images of each finding."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import xray
from PIL import Image

from cxrgen.cli import main
from cxrgen.config import ConfigError
from cxrgen.contracts import MetricsDocument
from cxrgen.evaluate import conditional_fidelity, fidelity
from cxrgen.evaluate.imagesets import ImageSet
from cxrgen.evaluate.labels import finding_names, images_by_finding
from cxrgen.evaluate.metric import METRICS, EvaluationContext

DIM = 8
OPTIONS = fidelity.FidelityOptions(groups=10, min_per_finding=30)


def measure(options: fidelity.FidelityOptions = OPTIONS):
    return lambda real, generated: fidelity.distances(real, generated, options, seed=0, warn=False)


def labelled(counts: dict[str, int], spellings: dict[str, str] | None = None) -> list[dict]:
    """Metadata rows: counts[label] images stating each label (as `spellings` writes it, if given)."""
    spellings = spellings or {}
    return [
        {"findings": [{"label": spellings.get(k, k), "locations": []}]} for k, n in counts.items() for _ in range(n)
    ]


def features(counts: dict[str, int], rng: np.random.Generator, shift: dict[str, float] | None = None) -> np.ndarray:
    """Gaussian features, each label's mean 3 along its own axis (in `counts`' order), moved by `shift[label]` along
    every axis where given."""
    shift = shift or {}
    blocks = []
    for k, (name, n) in enumerate(counts.items()):
        blocks.append(rng.normal(size=(n, DIM)) + 3.0 * np.eye(DIM)[k] + shift.get(name, 0.0))
    return np.concatenate(blocks)


def contains(figure: dict, value: float) -> bool:
    return figure["low"] <= value <= figure["high"]


# -- labels -------------------------------------------------------------------------------------------------------


def test_findings_are_named_as_the_vocabulary_compares_them():
    rows = [
        {"findings": [{"label": "Pleural_Effusion", "locations": ["left"]}, {"label": "unchanged"}]},
        {"findings": [{"label": "effusion"}, {"label": "Cardiomegaly"}]},
        {"findings": [{"label": "No Finding"}]},
        {"findings": []},
        {"text": "a raw prompt"},
        {"findings": [{"label": "exclude"}, {"label": "suboptimal study"}]},
    ]
    assert finding_names(rows[0]) == {"pleural effusion"}
    groups = images_by_finding(rows)
    assert {k: v.tolist() for k, v in groups.items()} == {
        "pleural effusion": [0, 1],
        "cardiomegaly": [1],
        "normal": [2],
    }


# -- the distances ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(30, 40), (60, 25)])
def test_frechet_in_the_sets_own_size_matches_the_feature_space_one(sizes):
    """The small-set route (an n x n problem) gives the dim x dim route's FID, with groups left out of either set."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(sizes[0], 50)), rng.normal(size=(sizes[1], 50)) * 1.3 + 0.2
    gram, full = fidelity._FrechetByGram(a, b), fidelity._FrechetByGroups(a, b)
    assert gram() == pytest.approx(fidelity.fid(a, b), rel=1e-7)
    for left_a, left_b in ((np.array([1, 5, 7]), None), (None, np.array([0, sizes[1] - 1]))):
        assert gram(left_a, left_b) == pytest.approx(full(left_a, left_b), rel=1e-7)
    left_a, left_b = np.array([2, 3]), np.array([4])
    assert gram(left_a, left_b) == pytest.approx(fidelity.fid(np.delete(a, left_a, 0), np.delete(b, left_b, 0)))
    assert isinstance(fidelity._frechet_by_groups(a, b), fidelity._FrechetByGram)
    assert isinstance(fidelity._frechet_by_groups(a[:, :4], b[:, :4]), fidelity._FrechetByGroups)


def test_a_set_against_itself_is_zero_for_every_finding():
    counts = {"normal": 60, "pleural effusion": 45, "cardiomegaly": 35}
    rng = np.random.default_rng(2)
    x, rows = features(counts, rng), labelled(counts)
    groups = images_by_finding(rows)
    between_findings = fidelity.kid(x[groups["normal"]], x[groups["pleural effusion"]])
    section = conditional_fidelity.by_finding(x, x, rows, rows, 30, measure())
    assert list(section["findings"]) == list(counts) and section["skipped"] == {}
    for name, f in section["findings"].items():
        assert f["real_images"] == f["generated_images"] == counts[name]
        assert f["fid"]["value"] < 1e-6 and f["headline"] == "kid" and "warning" not in f
        assert f["prdc"]["precision"]["value"] == f["prdc"]["recall"]["value"] == 1.0
        # the same images on both sides are not the independent sets KID is unbiased for: it is then exactly
        # -2 (mean k(x, x) - mean k(x, y)) / n, a little below 0
        own = x[groups[name]]
        kernel = (own @ own.T / DIM + 1) ** 3
        n = len(own)
        expected = -2 * (np.trace(kernel) / n - (kernel.sum() - np.trace(kernel)) / (n * (n - 1))) / n
        assert f["kid"]["value"] == pytest.approx(expected, rel=1e-9)
        assert -0.1 * between_findings < f["kid"]["value"] < 0


def test_fresh_draws_of_each_finding_are_zero_within_their_intervals():
    """Generated images drawn as the real ones were: 0 lies in about 95% of the KID and bias-corrected FID
    intervals (a broken interval, too narrow or off centre, would fall well short)."""
    counts = {"normal": 60, "pleural effusion": 45, "cardiomegaly": 35}
    rng = np.random.default_rng(3)
    rows = labelled(counts)
    kid_covers, fid_covers = [], []
    for _ in range(15):
        section = conditional_fidelity.by_finding(
            features(counts, rng), features(counts, rng), rows, rows, 30, measure()
        )
        for f in section["findings"].values():
            kid_covers.append(contains(f["kid"], 0.0))
            fid_covers.append(contains(f["fid_corrected"], 0.0))
            assert f["fid_corrected"]["low"] <= f["fid_corrected"]["high"]
    assert len(kid_covers) == 45 and np.mean(kid_covers) >= 0.9 and np.mean(fid_covers) >= 0.9


def test_a_shifted_finding_stands_out_from_one_drawn_like_the_real_images():
    counts = {"normal": 80, "pleural effusion": 60, "cardiomegaly": 60}
    rng = np.random.default_rng(3)
    real = features(counts, rng)
    generated = features(counts, rng, shift={"cardiomegaly": 0.6})  # the others drawn afresh, as the real ones
    spellings = {"normal": "No Finding", "pleural effusion": "effusion"}  # the generated rows' own spellings
    section = conditional_fidelity.by_finding(
        real, generated, labelled(counts), labelled(counts, spellings), 30, measure()
    )
    kid = {name: f["kid"] for name, f in section["findings"].items()}
    assert set(kid) == set(counts)
    assert contains(kid["normal"], 0.0) and contains(kid["pleural effusion"], 0.0)
    assert kid["cardiomegaly"]["low"] > max(kid["normal"]["high"], kid["pleural effusion"]["high"])
    assert section["findings"]["cardiomegaly"]["fid_corrected"]["low"] > 0


def test_findings_under_the_minimum_are_listed_with_their_counts():
    real_counts = {"normal": 40, "nodule": 12, "pleural effusion": 35}
    generated_counts = {"normal": 40, "nodule": 50, "pleural effusion": 20, "pneumothorax": 31}
    rng = np.random.default_rng(4)
    section = conditional_fidelity.by_finding(
        features(real_counts, rng),
        features(generated_counts, rng),
        labelled(real_counts),
        labelled(generated_counts),
        30,
        measure(),
    )
    assert list(section["findings"]) == ["normal"] and section["minimum"] == 30
    assert section["skipped"] == {
        "pleural effusion": {"real_images": 35, "generated_images": 20},
        "nodule": {"real_images": 12, "generated_images": 50},
        "pneumothorax": {"real_images": 0, "generated_images": 31},
    }
    lines = conditional_fidelity.summary_lines("xrv", section)
    assert lines[0] == "xrv by finding: 1 measured, 3 with fewer than 30 images in a set"
    assert lines[1].startswith("  normal (40 real, 40 generated): KID ")
    page = conditional_fidelity.report_html("xrv", section, {"value": 0.01}, fidelity.PRDC)
    assert "pneumothorax (0 real, 31 generated)" in page and "data:image/png" in page and "<td>normal</td>" in page


def test_the_minimum_is_checked():
    with pytest.raises(ConfigError, match="min-per-finding"):
        fidelity.FidelityOptions(min_per_finding=1)


# -- the metric ---------------------------------------------------------------------------------------------------


def context(real_rows: list[dict], generated_rows: list[dict], real: np.ndarray, generated: np.ndarray):
    config = SimpleNamespace(seed=0, fidelity=OPTIONS)
    sets = {
        "real": ImageSet("real", Path("real"), [Path(f"r{i}.png") for i in range(len(real))], real_rows),
        "generated": ImageSet(
            "generated", Path("gen"), [Path(f"g{i}.png") for i in range(len(generated))], generated_rows
        ),
    }
    extractor = SimpleNamespace(name="xrv", random=False)
    feats = {"xrv": {"real": real, "generated": generated}}
    return EvaluationContext(config, sets, [extractor], feats, {}, extractor, Path("out"), "cpu")


def test_the_metric_measures_each_extractor_by_finding_and_plain_folders_say_why_not():
    counts = {"normal": 40, "cardiomegaly": 35}
    rng = np.random.default_rng(5)
    real, generated, rows = features(counts, rng), features(counts, rng), labelled(counts)
    metric = METRICS["fidelity"]()
    doc = MetricsDocument(config={"fidelity": {"groups": 10}}, sets={})

    section = metric.compute(context(rows, rows, real, generated))
    assert list(section["xrv"]["by_finding"]["findings"]) == ["normal", "cardiomegaly"]
    assert "warning" in section["xrv"]  # the whole sets' own entry is as before
    printed = "\n".join(metric.summary_lines(section, doc))
    assert "xrv by finding: 2 measured" in printed and "cardiomegaly (35 real, 35 generated)" in printed
    page = metric.report_html(section, doc, Path("."))
    assert "xrv: by finding" in page and "<td>cardiomegaly</td>" in page

    plain = metric.compute(context([], rows, real, generated))
    assert "by_finding" not in plain["xrv"] and "metadata.jsonl" in plain["xrv"]["by_finding_skipped"]
    assert "by finding: not measured: the real set has no metadata.jsonl" in "\n".join(metric.summary_lines(plain, doc))
    assert "by finding: not measured" in metric.report_html(plain, doc, Path("."))
    unlabelled = metric.compute(context([{"text": "x"}] * len(real), rows, real, generated))
    assert unlabelled["xrv"]["by_finding_skipped"] == "no image of the real set states a finding"


def test_evaluate_reports_fidelity_by_finding(tmp_path, capsys):
    """The command end to end: labels spelled differently in the two sets meet; a rare finding is listed."""

    def write(path: Path, labels: list[str], seed: int) -> None:
        path.mkdir(parents=True)
        rows = []
        for i, label in enumerate(labels):
            Image.fromarray(xray(64, 64, seed=seed + i, bits=8)).save(path / f"{i:03d}.png")
            rows.append({"file_name": f"{i:03d}.png", "text": label, "findings": [{"label": label}]})
        (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "real", ["Pleural_Effusion"] * 8 + ["No Finding"] * 8, 0)
    write(tmp_path / "gen", ["pleural effusion"] * 8 + ["normal"] * 6 + ["cardiomegaly"] * 3, 100)
    args = ["evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen")]
    args += ["--out", str(tmp_path / "o"), "--extractors", "torchvision:resnet18"]
    args += ["--weights", "torchvision:resnet18=random", "--fidelity.groups", "3", "--diversity.pairs", "3"]
    assert main([*args, "--fidelity.min-per-finding", "6"]) == 0
    assert "torchvision:resnet18 by finding: 2 measured, 1 with fewer than 6" in capsys.readouterr().out
    entry = MetricsDocument.read(tmp_path / "o").sections["fidelity"]["torchvision:resnet18"]["by_finding"]
    assert list(entry["findings"]) == ["pleural effusion", "normal"]
    assert entry["findings"]["normal"]["real_images"] == 8 and entry["findings"]["normal"]["generated_images"] == 6
    assert "3 + 3 groups" in entry["findings"]["normal"]["kid"]["method"]
    assert entry["skipped"] == {"cardiomegaly": {"real_images": 0, "generated_images": 3}}
    assert "by finding" in (tmp_path / "o" / "report.html").read_text()
