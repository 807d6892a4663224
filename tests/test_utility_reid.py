"""Known-answer tests of the utility classifiers and the re-identification network, on prepared phantoms (whose
patients keep one body across studies) at 32 px with the small CNN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxrgen.cli import main as cli
from cxrgen.evaluate.imagesets import ImageSet, open_set
from cxrgen.evaluate.reid import ReidOptions, reidentify
from cxrgen.evaluate.utility import UtilityOptions, finding_labels, patient_fractions, utility
from cxrgen.phantom.render import render
from tests.helpers import save_png


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    release, data = root / "release", root / "prepared"
    args = [
        "phantom",
        "--out",
        str(release),
        "--n",
        "700",
        "--size",
        "64",
        "--seed",
        "21",
        "--square",
        "--repeats",
        "0.5",
    ]
    assert cli([*args, "--findings-rate", "0.7", "--max-findings", "1", "--background", "0"]) == 0
    prepare = ["prepare", "--source", "padchest", "--csv", str(release / "phantom_padchest.csv.gz")]
    prepare += ["--images", str(release), "--out", str(data), "--image.resolution", "64", "--no-image.crop-border"]
    prepare += ["--qc.min-side", "64", "--qc.contact-sheet", "0"]
    prepare += ["--splits.train", "0.6", "--splits.val", "0.15", "--splits.test", "0.25"]
    assert cli(prepare) == 0
    return data


def _context(cache: Path, seed: int = 0) -> SimpleNamespace:
    config = SimpleNamespace(cache_dir=str(cache), seed=seed, allow_pickle=False)
    return SimpleNamespace(config=config, device="cpu")


def _copy(images: ImageSet, folder: Path, relabel: np.random.Generator | None = None) -> ImageSet:
    """The set as another folder, in reverse order (so no training step sees the images in the original order);
    with `relabel`, each image gets another image's labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in reversed(images.rows)]
    files = list(reversed(images.files))
    if relabel is not None:
        findings = [r["findings"] for r in rows]
        for r, k in zip(rows, relabel.permutation(len(rows)), strict=True):
            r["findings"] = findings[k]
    for r, f in zip(rows, files, strict=True):
        (folder / r["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / r["file_name"])
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return open_set(folder, None, "generated")


SMALL = {"arch": "cnn", "size": 32, "steps": 120, "fractions": [1.0], "rounds": 300, "learning_rate": 3e-3}


def test_finding_labels_and_patient_fractions():
    rows = [
        {"findings": [{"label": "pleural effusion", "locations": ["left"]}], "patient_key": "a"},
        {"findings": [{"label": "normal", "locations": []}], "patient_key": "a"},
        {"findings": [{"label": "unchanged", "locations": []}], "patient_key": "b"},
        {"findings": [{"label": "Cardiomegaly", "locations": []}], "patient_key": "c"},
    ]
    assert finding_labels(rows, ["pleural effusion", "cardiomegaly"]).tolist() == [[1, 0], [0, 0], [-1, -1], [0, 1]]
    subsets = patient_fractions(rows, [0.25, 0.5, 1.0], seed=0)
    assert set(subsets[0.5]) <= set(subsets[1.0]) and len(subsets[1.0]) == 4
    assert {0, 1} <= set(subsets[0.5]) or not ({0, 1} & set(subsets[0.5]))  # a patient is in or out whole


def test_utility_known_answers(phantoms, tmp_path):
    """A copy of the real training set adds nothing beyond the noise of another seed; a copy with shuffled labels
    makes real + synthetic worse and synthetic alone near chance."""
    train, test = open_set(phantoms, "train", "train"), open_set(phantoms, "test", "real")
    o = UtilityOptions(enabled=True, **SMALL)
    same = utility(train, _copy(train, tmp_path / "copy"), test, o, _context(tmp_path / "cache"))
    assert same["findings"] == ["cardiomegaly", "nodule", "pacemaker", "pleural effusion"]
    other_seed = utility(train, _copy(train, tmp_path / "copy"), test, o, _context(tmp_path / "cache", seed=1))
    real = same["real"]["macro_auroc"]["value"]
    assert real > 0.75  # the classifier learns the phantoms' findings
    noise = abs(other_seed["real"]["macro_auroc"]["value"] - real)
    assert abs(same["difference"]["macro_auroc"]["value"]) <= 3 * noise + 0.03
    # twice the real set in wrong labels: a harm well beyond what run-to-run numerics move (with one copy the
    # interval's top sat near 0 in one full-suite run, the thread count and earlier tests' state changing the fit)
    first, second = (_copy(train, tmp_path / f"shuffled{k}", relabel=np.random.default_rng(k)) for k in (0, 1))
    shuffled = ImageSet("generated", tmp_path, first.files + second.files, first.rows + second.rows)
    wrong = utility(train, shuffled, test, o, _context(tmp_path / "cache"))
    assert wrong["real"] == same["real"]  # the same run, from the cache
    assert all(run["cached"] for key, run in wrong["runs"].items() if key.startswith("real@"))
    assert wrong["difference"]["macro_auroc"]["high"] < 0
    # near chance: far below what the real labels teach (0.67 was seen at chance on these few test images)
    real = same["real"]["macro_auroc"]["value"]
    assert wrong["synthetic"]["macro_auroc"]["value"] < min(0.72, real - 0.2)


def test_reid_links_copies_of_training_images(phantoms, tmp_path):
    """Verification on held-out phantom patients >= 0.9; copies of training images all above the threshold,
    images of new patients mostly below."""
    train, test = open_set(phantoms, "train", "train"), open_set(phantoms, "test", "real")
    strangers = open_set(phantoms, "val", "val")
    planted = [train.files[k] for k in range(0, 100, 10)]
    generated = ImageSet("generated", tmp_path, [*planted, *strangers.files])
    o = ReidOptions(enabled=True, arch="cnn", size=32, dim=64, steps=600)
    found = reidentify(train, generated, test, o, _context(tmp_path / "cache"))
    assert found["verification_auroc"]["value"] >= 0.9
    best = np.asarray(found["generated_best"])
    assert (best[:10] > found["threshold"]).all()
    assert (best[10:] > found["threshold"]).mean() <= 0.2
    assert found["closest_pairs"][0]["above"]


def test_utility_and_reid_need_the_training_set(tmp_path, capsys):
    save_png(tmp_path / "a.png", render(32, 32, seed=1, bits=8))
    args = ["evaluate", "--real", str(tmp_path), "--generated", str(tmp_path), "--out", str(tmp_path / "o")]
    for flag in ("--utility", "--reid"):
        assert cli([*args, flag]) == 2
        assert f"{flag} needs --train" in capsys.readouterr().err
    assert cli([*args, "--utility.fractions", "0"]) == 2
    assert "--utility.fractions must be shares in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_answers_faithful_useful_safe(phantoms, tmp_path):
    """`cxrgen evaluate --utility --reid` end to end: both sections in metrics.json, their summary lines, and the
    report opening with the three questions, each answered or saying how to measure it."""
    from cxrgen.contracts import MetricsDocument

    out = tmp_path / "eval"
    args = ["evaluate", "--real", str(phantoms), "--real-split", "test", "--generated", str(phantoms)]
    args += ["--train", str(phantoms), "--out", str(out), "--max-images", "60", "--max-train-images", "150"]
    args += ["--extractors", "torchvision:resnet18", "--weights", "torchvision:resnet18=random"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--utility", "--utility.arch", "cnn", "--utility.size", "32"]
    args += ["--utility.steps", "20", "--utility.fractions", "0.5", "1", "--utility.min-positives", "2"]
    args += ["--reid", "--reid.arch", "cnn", "--reid.size", "32", "--reid.steps", "20", "--reid.dim", "16"]
    assert cli(args) == 0
    doc = MetricsDocument.read(out)
    assert {"utility", "reid"} <= set(doc.sections)
    assert [p["fraction"] for p in doc.sections["utility"]["scarcity"]] == [0.5, 1.0]
    assert "value" in doc.sections["reid"]["verification_auroc"]
    assert "warning" not in doc.sections["reid"] and "warning" not in doc.sections["utility"]
    page = (out / "report.html").read_text()
    assert page.index("Faithful, useful, safe?") < page.index("Image sets")
    for title in ("Utility: a classifier", "Re-identification: can"):
        assert title in page
    assert "not measured" in page  # adherence: no classifier of findings was given


def test_a_held_out_set_that_shares_patients_with_training_is_called_out(phantoms):
    from cxrgen.evaluate.networks import overlap_warning

    train, test = open_set(phantoms, "train", "train"), open_set(phantoms, "test", "real")
    assert overlap_warning(test, train) is None
    warning = overlap_warning(train, train)
    assert warning is not None and f"shares {len(train)} images" in warning


def test_runs_are_scored_on_the_same_draws():
    """Paired: a run against itself differs by exactly 0 in every draw; a slightly perturbed copy's difference
    interval is far narrower than either run's own."""
    from cxrgen.evaluate.utility import score_runs

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 2)) < 0.4).astype(np.int8)
    p = np.clip(labels * 0.3 + rng.random((300, 2)) * 0.7, 0, 1)
    scored = score_runs(labels, {"a": p, "b": p.copy(), "c": p + rng.normal(0, 0.01, p.shape)}, 200, 0)
    assert np.array_equal(scored["a"][1], scored["b"][1])
    own = np.ptp(scored["a"][1][:, 0])
    assert np.ptp(scored["c"][1][:, 0] - scored["a"][1][:, 0]) < own / 5


def test_pairs_and_nearest_training_images():
    import torch

    from cxrgen.evaluate.reid import Siamese, by_patient, highest, sample_pairs, verification_pairs

    patients = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    groups = by_patient(patients)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1], [3, 4, 5], [7, 8]]
    a, b, same = sample_pairs(patients, groups, 64, torch.Generator().manual_seed(0))
    assert ((patients[a] == patients[b]) == same.bool().numpy()).all() and (a != b).all()
    pairs, positive = verification_pairs(patients, 3, 0)
    assert ((patients[pairs[:, 0]] == patients[pairs[:, 1]]) == positive).all() and positive.sum() == 5
    model = Siamese(torch.nn.Identity(), 4)
    queries, gallery = torch.randn(7, 4), torch.randn(11, 4)
    best, where = highest(model, queries, gallery, chunk=3)
    brute = torch.stack([model.logit(q.expand_as(gallery), gallery) for q in queries])
    assert np.allclose(best, brute.max(1).values.detach().numpy(), atol=1e-5)
    assert (where == brute.argmax(1).numpy()).all()
