"""Prompt adherence: does a classifier find, in the generated images, the findings their conditions asked for?

For each classifier output that a requested label maps to, the AUROC of the classifier's probability between
images whose conditions include that finding (positives) and images whose conditions exclude it (negatives: they
state their findings, "normal" included, and none maps to that output; an image with no stated findings is
neither). Each AUROC has DeLong's 95% interval, and beside it the real-image ceiling: the same classifier's AUROC
on the real images' labels, by the same rule, which is as well as a generated set can do with this classifier.
The mean over findings has a bootstrap interval over images. Sex accuracy and age error are reported when the
classifier has such heads (outputs named "sex_male" and "age").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from ..contracts import MetricsDocument
from ..records import findings_from_value, name_key
from ..vocabulary import standard_key
from .extractors import Extractor
from .html import escape, note, table, with_interval
from .intervals import delong
from .labels import NOT_STATEMENTS
from .metric import METRICS, EvaluationContext, Metric

# PadChest / CheXpert label -> torchxrayvision output; other names reach these by their standard names
# (vocabulary.standard_key: "effusion", "Edema", "pleural effusion right side")
LABEL_TO_OUTPUT = {
    "pleural effusion": "Effusion",
    "cardiomegaly": "Cardiomegaly",
    "pneumothorax": "Pneumothorax",
    "nodule": "Nodule",
    "multiple nodules": "Nodule",
    "mass": "Mass",
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "hernia": "Hernia",
    "hiatal hernia": "Hernia",
    "infiltrates": "Infiltration",
    "interstitial pattern": "Infiltration",
    "pleural thickening": "Pleural_Thickening",
    "apical pleural thickening": "Pleural_Thickening",
    "fracture": "Fracture",
    "rib fracture": "Fracture",
    "lung opacity": "Lung Opacity",
    "alveolar pattern": "Lung Opacity",
    "lung lesion": "Lung Lesion",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
}


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties averaged); None without both classes."""
    labels = labels.astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _name(label: str) -> str:
    """Labels compared as the vocabulary compares them: "Pleural_Effusion ", "pleural effusion right side" and
    "effusion" are all "pleural effusion"."""
    return standard_key(label)


def _labels(row: dict[str, Any]) -> list[str]:
    return [f.label for f in findings_from_value(row.get("findings"))]


def _answers(rows: list[dict[str, Any]], outputs: tuple[str, ...], mapping: dict[str, str]) -> np.ndarray:
    """Per image and output: 1 when its conditions include the output's finding, 0 when they exclude it (they
    state findings, "normal" included, and none maps to it), -1 when they say nothing."""
    answers = np.full((len(rows), len(outputs)), -1, dtype=np.int8)
    for i, row in enumerate(rows):
        labels = _labels(row)
        if not any(name_key(label) not in NOT_STATEMENTS for label in labels):
            continue
        asked = {mapping.get(_name(label)) for label in labels}
        answers[i] = [name in asked for name in outputs]
    return answers


def _per_output(answers: np.ndarray, probabilities: np.ndarray, outputs: tuple[str, ...]) -> dict[str, dict]:
    """DeLong AUROC per output with both positives and negatives."""
    out = {}
    for k, name in enumerate(outputs):
        known = answers[:, k] >= 0
        figure = delong(answers[known, k] == 1, probabilities[known, k])
        if figure is not None:
            out[name] = figure
    return out


def _mean_auroc(
    answers: np.ndarray, probabilities: np.ndarray, columns: list[int], rounds: int, seed: int, what: str
) -> dict:
    """The mean AUROC over the given outputs, with a percentile bootstrap over images (findings kept paired)."""

    def mean(rows: np.ndarray) -> float:
        values = [auroc(answers[rows, k] == 1, probabilities[rows, k]) for k in columns]
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else float("nan")

    usable = np.flatnonzero((answers[:, columns] >= 0).any(axis=1))
    value = mean(usable)
    rng = np.random.default_rng(seed)
    bar = tqdm(range(rounds), desc=f"adherence: bootstrap of the mean AUROC ({what})", unit="round", dynamic_ncols=True)
    draws = np.array([mean(usable[rng.integers(0, len(usable), len(usable))]) for _ in bar])
    draws = draws[~np.isnan(draws)]
    if len(draws) < rounds / 2:
        return {"value": value}
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"value": value, "low": float(lo), "high": float(hi)}


def adherence(
    rows: list[dict[str, Any]],
    probabilities: np.ndarray,
    outputs: tuple[str, ...],
    mapping: dict[str, str] | None = None,
    real_rows: list[dict[str, Any]] | None = None,
    real_probabilities: np.ndarray | None = None,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    mapping = {_name(k): v for k, v in (mapping or LABEL_TO_OUTPUT).items() if v in outputs}
    answers = _answers(rows, outputs, mapping)
    generated = _per_output(answers, probabilities, outputs)
    real: dict[str, dict] = {}
    real_answers = None
    if real_rows and real_probabilities is not None:
        real_answers = _answers(real_rows, outputs, mapping)
        real = _per_output(real_answers, real_probabilities, outputs)
    per_output = {}
    for name, figure in generated.items():
        entry = {"auroc": figure["value"], "low": figure["low"], "high": figure["high"]}
        entry |= {"positives": figure["positives"], "negatives": figure["negatives"]}
        if name in real:
            r = real[name]
            entry["real"] = {k: r[k] for k in ("low", "high", "positives", "negatives")} | {"auroc": r["value"]}
        per_output[name] = entry
    columns = [outputs.index(name) for name in per_output]
    result: dict[str, Any] = {"per_finding": per_output, "mean_auroc": None, "real_mean_auroc": None}
    if columns:
        result["mean_auroc"] = _mean_auroc(answers, probabilities, columns, rounds, seed, "generated")
        shared = [outputs.index(name) for name in per_output if name in real]
        if real_answers is not None and shared:
            result["real_mean_auroc"] = _mean_auroc(real_answers, real_probabilities, shared, rounds, seed, "real")
            result["real_mean_over"] = [outputs[k] for k in shared]
    # a label the mapping lacks, or maps to an output this classifier does not have
    unmapped = sorted(
        {
            label
            for row in rows
            for label in _labels(row)
            if _name(label) not in mapping and name_key(label) not in NOT_STATEMENTS | {"normal"}
        }
    )
    result["labels_without_classifier_output"] = unmapped[:50]
    if "sex_male" in outputs:
        sexes = np.array([r.get("sex") for r in rows])
        known = np.isin(sexes, ["M", "F"])
        if known.any():
            predicted = probabilities[known, outputs.index("sex_male")] > 0.5
            result["sex_accuracy"] = float((predicted == (sexes[known] == "M")).mean())
    if "age" in outputs:
        ages = np.array([r.get("age") if r.get("age") is not None else np.nan for r in rows], dtype=float)
        known = ~np.isnan(ages)
        if known.any():
            result["age_mae"] = float(np.abs(probabilities[known, outputs.index("age")] - ages[known]).mean())
    return result


def _classifier(ctx: EvaluationContext) -> Extractor | None:
    """The first extractor with classifier outputs."""
    return next((ex for ex in ctx.extractors if ex.outputs), None)


@METRICS.register
class AdherenceMetric(Metric):
    """Whether a classifier finds in the generated images what their conditions asked for."""

    name = "adherence"
    title = "Prompt adherence"
    question = "faithful"
    not_measured = (
        "needs a classifier of findings, e.g. --extractors inception xrv "
        "--weights xrv=densenet121-res224-all.pt --allow-pickle"
    )

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return _classifier(ctx) is not None

    def applies(self, ctx: EvaluationContext) -> str | None:
        if not ctx.generated.rows:
            return f"{ctx.generated.root} has no metadata.jsonl: no conditions to check"
        if not any(row.get("findings") for row in ctx.generated.rows):
            return "no generated image asked for a finding (raw prompts?)"
        return None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        classifier = _classifier(ctx)
        assert classifier is not None  # asked for only with a classifier
        scores = ctx.scores[classifier.name]
        measured = adherence(
            ctx.generated.rows,
            scores["generated"],
            classifier.outputs,
            real_rows=ctx.real.rows,
            real_probabilities=scores.get("real"),
            seed=ctx.config.seed,
        )
        if not ctx.real.rows:
            measured["real_note"] = f"no real-image ceiling: {ctx.real.root} has no labels (metadata.jsonl)"
        return {"classifier": classifier.identity, **measured}

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        mean = section.get("mean_auroc")
        if mean is None:
            return "not measurable: no finding had images asking for it and others not", ""
        found = "low" in mean and mean["low"] > 0.5
        line = (
            f"the classifier {'finds' if found else 'does not clearly find'} the requested findings "
            f"(mean AUROC {with_interval(mean)}"
        )
        if section.get("real_mean_auroc"):
            line += f"; on real images {with_interval(section['real_mean_auroc'])}"
        return line + ")", (
            f"{len(section['per_finding'])} findings, {doc.sets['generated']['images']} generated images; "
            f"classifier {section['classifier']}"
        )

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        if section["mean_auroc"] is None:
            return ["prompt adherence: no AUROC: no classifier output had images asking for its finding and others not"]
        line = f"prompt adherence: mean AUROC {with_interval(section['mean_auroc'])}"
        line += f" over {len(section['per_finding'])} findings"
        if section.get("real_mean_auroc"):
            over = len(section.get("real_mean_over", []))
            line += f"; on real images {with_interval(section['real_mean_auroc'])} over {over}"
        return [line]

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        def auroc_cell(v: dict[str, Any] | None) -> str:
            if not v or v.get("auroc") is None:
                return "-"
            return with_interval({"value": v["auroc"], **{k: v[k] for k in ("low", "high") if k in v}})

        rows = [
            [k, auroc_cell(v), v["positives"], v["negatives"], auroc_cell(v.get("real"))]
            for k, v in section["per_finding"].items()
        ]
        header = ["finding (classifier output)", "AUROC [95% interval]", "images asking for it", "images excluding it"]
        out = table([*header, "on real images (ceiling)"], rows)
        if section.get("mean_auroc") is not None:
            mean = f"mean AUROC {with_interval(section['mean_auroc'])}"
            if section.get("real_mean_auroc"):
                mean += f"; on real images {with_interval(section['real_mean_auroc'])}"
            out += f"<p>{escape(mean)}</p>"
        extra = [f"sex accuracy {section['sex_accuracy']:.3f}"] if "sex_accuracy" in section else []
        extra += [f"age error {section['age_mae']:.1f} years"] if "age_mae" in section else []
        if extra:
            out += f"<p>{', '.join(extra)}</p>"
        if section.get("labels_without_classifier_output"):
            missing = escape(", ".join(section["labels_without_classifier_output"]))
            out += f'<p class="note">labels the classifier has no output for: {missing}</p>'
        if section.get("real_note"):
            out += note(section["real_note"])
        return out + note(
            "Negatives are images whose conditions exclude the finding (they state findings, normal included, and "
            "none is this one); images that state none are left out. Intervals: DeLong per finding, a bootstrap "
            "over images (1,000 rounds) for the mean. The real-image column is the same classifier on the real "
            "set's labels: as well as generated images can score with this classifier."
        )
