"""The evaluation-metric seam: what a metric is, what it is given, and how its section is printed and shown.

A metric is a registered `Metric` (`@METRICS.register`) in its own module: a name (its key in metrics.json), its
own options (a small dataclass, offered as `--<name>.<option>`), `compute`, which turns the shared image sets and
features into its section of metrics.json, and how that section is summed up on the terminal and drawn in
report.html. The package imports each metric module once (the registration lines); the order of registration is
the order of the sections in metrics.json, the summary and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..contracts import MetricsDocument
from ..registry import Registry
from .extractors import Extractor
from .html import note
from .imagesets import ImageSet, ImageSetError


@dataclass
class EvaluationContext:
    """What every metric may use: the sets and their features are computed once, whatever the metrics need."""

    config: Any  # the EvaluateConfig: the sets' settings, and each metric's options as `config.<metric name>`
    sets: dict[str, ImageSet]  # "real", "generated", and "train" when given
    extractors: list[Extractor]
    features: dict[str, dict[str, np.ndarray]]  # extractor name -> set name -> (images, dim)
    scores: dict[str, dict[str, np.ndarray | None]]  # extractor name -> set name -> classifier outputs (or None)
    primary: Extractor  # the one extractor of metrics that use one (chest-X-ray features when given)
    out: Path  # the evaluation folder: a metric that makes files writes them under it
    device: str

    @property
    def real(self) -> ImageSet:
        return self.sets["real"]

    @property
    def generated(self) -> ImageSet:
        return self.sets["generated"]

    @property
    def train(self) -> ImageSet | None:
        return self.sets.get("train")

    def options(self, metric: Metric) -> Any:
        """The metric's own settings (`--<name>.*`)."""
        return getattr(self.config, metric.name)


class Metric:
    name: ClassVar[str]  # its section's key in metrics.json and its flags' prefix
    title: ClassVar[str]  # its section's title in report.html
    Options: ClassVar[type | None] = None  # its own settings, a dataclass of `config.option` fields
    not_measured: ClassVar[str]  # what it would take to measure it, for a report without its section
    question: ClassVar[str | None] = None  # which of QUESTIONS its verdict answers, if any

    def check_config(self, config: Any) -> None:
        """Raise ConfigError when the settings cannot work together (called as the config is built)."""

    def asked_for(self, ctx: EvaluationContext) -> bool:
        """Whether this evaluation asked for the metric (else it has no section, and the report says how to)."""
        return True

    def applies(self, ctx: EvaluationContext) -> str | None:
        """None when it can run; else why not, stored as its section {"skipped": reason}."""
        return None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        """Its section of metrics.json (plain JSON values)."""
        raise NotImplementedError

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        """What `cxrgen evaluate` prints of a measured section."""
        raise NotImplementedError

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        """Its section of report.html, for a measured section (`folder` holds metrics.json)."""
        raise NotImplementedError

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        """(one line answering its question, the caveats a reader needs: set sizes, what the figure rests on)."""
        raise NotImplementedError


METRICS: Registry[type[Metric]] = Registry("evaluation metric")
QUESTIONS = {
    "faithful": "Is the synthetic set faithful? (fidelity, adherence)",
    "useful": "Is it useful? (a classifier trained with it, on real patients)",
    "safe": "Is it safe? (copies of training images, links to training patients)",
}


def answers(doc: MetricsDocument) -> dict[str, list[tuple[str, str, str]]]:
    """For each question: (metric title, verdict, caveats) of every measured metric that answers it; a question
    no measured metric answers gets what measuring it would take."""
    out: dict[str, list[tuple[str, str, str]]] = {q: [] for q in QUESTIONS}
    for name, cls in METRICS.items():
        metric = cls()
        if metric.question is None:
            continue
        section = doc.sections.get(name)
        if section is None or skipped(section) is not None:
            why = metric.not_measured if section is None else skipped(section)
            out[metric.question].append((metric.title, "not measured", why or ""))
        else:
            try:
                out[metric.question].append((metric.title, *metric.verdict(section, doc)))
            except (KeyError, TypeError) as exc:  # a section written by another version: the report still opens
                out[metric.question].append((metric.title, "verdict unavailable", f"its section lacks {exc}"))
    return out


def measure(metric: Metric, ctx: EvaluationContext) -> dict[str, Any] | None:
    """The metric's section: None when it was not asked for, {"skipped": reason} when it cannot run."""
    if not metric.asked_for(ctx):
        return None
    reason = metric.applies(ctx)
    return {"skipped": reason} if reason is not None else metric.compute(ctx)


def skipped(section: dict[str, Any]) -> str | None:
    """Why a metric that was asked for did not run, or None when it ran."""
    return section.get("skipped") if set(section) == {"skipped"} else None


def summary(metric: Metric, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
    reason = skipped(section)
    return [f"{metric.name} skipped: {reason}"] if reason is not None else metric.summary_lines(section, doc)


def section_html(metric: Metric, section: dict[str, Any] | None, doc: MetricsDocument, folder: Path) -> str:
    """The metric's part of the report. A metric not measured says how to measure it, so that every report has
    the same outline; one drawn from image files notes, rather than fails, that they moved since."""
    if section is None:
        return note(f"not measured: {metric.not_measured}")
    reason = skipped(section)
    if reason is not None:
        return note(f"not measured: {reason}")
    return from_images(metric.report_html, section, doc, folder)


def from_images(draw: Any, *args: Any) -> str:
    """A report section drawn from image files: a note rather than a crash when they are not at hand."""
    try:
        return draw(*args)
    except (ImageSetError, OSError) as exc:
        return note(f"images not at hand ({exc}); the metrics above stand")
