"""Prompt adherence: does a classifier find, in the generated images, the findings their conditions asked for?

For each classifier output that a requested label maps to, the AUROC of the classifier's probability between
images whose conditions include that finding and images whose conditions do not. Sex accuracy and age error are
reported when the classifier has such heads (outputs named "sex_male" and "age").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..contracts import MetricsDocument
from ..records import findings_from_value
from ..vocabulary import standard_key
from .extractors import Extractor
from .html import escape, table
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


def adherence(
    rows: list[dict[str, Any]],
    probabilities: np.ndarray,
    outputs: tuple[str, ...],
    mapping: dict[str, str] | None = None,
) -> dict[str, Any]:
    mapping = {_name(k): v for k, v in (mapping or LABEL_TO_OUTPUT).items() if v in outputs}
    requested = [{mapping.get(_name(label)) for label in _labels(row)} - {None} for row in rows]
    per_output = {}
    for k, name in enumerate(outputs):
        labels = np.array([name in r for r in requested])
        if labels.any():
            per_output[name] = {
                "auroc": auroc(labels, probabilities[:, k]),
                "positives": int(labels.sum()),
                "negatives": int((~labels).sum()),
            }
    result: dict[str, Any] = {"per_finding": per_output}
    valid = [v["auroc"] for v in per_output.values() if v["auroc"] is not None]
    result["mean_auroc"] = float(np.mean(valid)) if valid else None
    # a label the mapping lacks, or maps to an output this classifier does not have
    unmapped = sorted({label for row in rows for label in _labels(row) if _name(label) not in mapping})
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
        probabilities = ctx.scores[classifier.name]
        return {"classifier": classifier.identity, **adherence(ctx.generated.rows, probabilities, classifier.outputs)}

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        if section["mean_auroc"] is None:
            return ["prompt adherence: no AUROC: no classifier output had images asking for its finding and others not"]
        return [f"prompt adherence: mean AUROC {section['mean_auroc']:.3f} over {len(section['per_finding'])} findings"]

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows = [
            [k, f"{v['auroc']:.3f}" if v["auroc"] is not None else "-", v["positives"], v["negatives"]]
            for k, v in section["per_finding"].items()
        ]
        out = table(["finding (classifier output)", "AUROC", "images asking for it", "other images"], rows)
        extra = [f"sex accuracy {section['sex_accuracy']:.3f}"] if "sex_accuracy" in section else []
        extra += [f"age error {section['age_mae']:.1f} years"] if "age_mae" in section else []
        if extra:
            out += f"<p>{', '.join(extra)}</p>"
        if section.get("labels_without_classifier_output"):
            missing = escape(", ".join(section["labels_without_classifier_output"]))
            out += f'<p class="note">labels the classifier has no output for: {missing}</p>'
        return out
