"""Downstream utility: does a classifier trained with the synthetic images do better on real patients?

The same classifier (architecture, input size, steps, seed) is trained on (a) the real training images, (b) the
real training images and the synthetic ones, and (c) the synthetic ones alone, and each is tested on the real
test images: AUROC per finding (multi-label, the findings the training set, the synthetic set and the test set
all carry) and their mean (macro AUROC). Intervals are percentile bootstraps over test images, every run scored
on the same draws, so that the difference (b) - (a) is paired. The scarcity curve repeats (a) and (b) on nested
patient-level fractions of the real training set: synthetic data matters most when real data is scarce.

A finding's labels: 1 when the image's labels include it, 0 when they state findings (normal included) and not
this one, unknown when they state none (as prompt adherence reads them); unknown labels add no loss and no score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError, option
from ..contracts import MetricsDocument
from .adherence import auroc
from .html import escape, figure, note, table, with_interval
from .imagesets import ImageSet, patient_keys
from .labels import finding_names
from .metric import METRICS, EvaluationContext, Metric
from .networks import backbone, digest, file_identity, fit, outputs, overlap_warning, pixels, shifted

LEVEL = 95


def finding_labels(rows: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    """(images, findings) int8: 1 has it, 0 states findings without it, -1 states none."""
    labels = np.full((len(rows), len(names)), -1, dtype=np.int8)
    for i, row in enumerate(rows):
        stated = finding_names(row)
        if stated:
            labels[i] = [name in stated for name in names]
    return labels


def carried(rows: list[dict[str, Any]]) -> set[str]:
    """The findings a set's labels name (standard names), normal left out."""
    return set().union(*(finding_names(row) for row in rows)) - {"normal"}


def patient_fractions(rows: list[dict[str, Any]], fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """Nested subsets of images by patient: the first patients of one seeded order until each fraction of the
    images is reached (a smaller fraction's patients are all in the larger's)."""
    keys = patient_keys(rows)
    patients = list(dict.fromkeys(keys))
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = np.empty(len(patients), dtype=np.int64)
    rank[order] = np.arange(len(patients))
    position = {key: k for k, key in enumerate(patients)}
    of_image = rank[[position[key] for key in keys]]  # each image's patient's place in the order
    images_by_rank = np.cumsum(np.bincount(of_image, minlength=len(patients)))  # images in the first r+1 patients
    subsets = {}
    for f in fractions:
        last = int(np.searchsorted(images_by_rank, max(1, round(f * len(rows)))))  # whole patients, never a part
        subsets[f] = np.flatnonzero(of_image <= last)
    return subsets


@dataclass
class UtilityOptions:
    enabled: bool = option(
        False, "train classifiers on real, real + synthetic and synthetic images and test them on real ones"
    )
    arch: str = option("resnet18", "classifier: a torchvision name (resnet18, densenet121), timm:<arch>, or cnn")
    weights: str | None = option(None, "initial weights (safetensors or a state dict; the head is left out)", path=True)
    size: int = option(224, "input size in pixels")
    steps: int = option(500, "training steps of every classifier")
    batch_size: int = option(32, "images per training step")
    learning_rate: float = option(1e-3, "AdamW peak learning rate (one-cycle schedule)")
    fractions: list[float] = option([0.1, 0.25, 0.5, 1.0], "shares of the real training set for the scarcity curve")
    min_positives: int = option(5, "use a finding when the real training and test sets each have this many with it")
    rounds: int = option(1000, "bootstrap rounds over test images")


@dataclass
class _Run:
    """What one classifier trains on: rows of the real training tensor, and the synthetic images or not (indices,
    so that no run copies the images)."""

    name: str  # "real", "real+synthetic", "synthetic"
    fraction: float | None
    real_rows: np.ndarray
    synthetic: bool

    def size(self, synthetic_images: int) -> int:
        return len(self.real_rows) + (synthetic_images if self.synthetic else 0)


@dataclass
class _Data:
    """The images as tensors and their labels, built once for every run."""

    real: torch.Tensor
    synth: torch.Tensor
    test: torch.Tensor
    real_labels: np.ndarray
    synth_labels: np.ndarray
    real_digest: str  # the real images and labels, for cache keys
    synth_digest: str


class _Trainer:
    """Trains one classifier per run on the context's device, with the cache of networks.fit."""

    def __init__(self, o: UtilityOptions, names: list[str], ctx: EvaluationContext, allow_pickle: bool):
        self.o, self.names, self.ctx, self.allow_pickle = o, names, ctx, allow_pickle

    def __call__(self, run: _Run, data: _Data) -> tuple[np.ndarray, dict[str, Any]]:
        o, device = self.o, self.ctx.device
        real_labels = torch.from_numpy(data.real_labels.astype(np.float32))
        synth_labels = torch.from_numpy(data.synth_labels.astype(np.float32))
        n_real, n = len(run.real_rows), run.size(len(data.synth))
        rows_real = torch.from_numpy(run.real_rows)

        def loss(net: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
            drawn = torch.randint(0, n, (o.batch_size,), generator=generator)
            is_real = drawn < n_real
            real_index, synth_index = rows_real[drawn[is_real]], drawn[~is_real] - n_real
            images = torch.cat([data.real[real_index], data.synth[synth_index]])
            target = torch.cat([real_labels[real_index], synth_labels[synth_index]]).to(device)
            batch = shifted(images, generator).to(device)
            known = target >= 0
            logits = net(batch)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
            return (bce * known).sum() / known.sum().clamp(min=1)

        inputs = {
            "arch": o.arch,
            "weights": o.weights,
            "size": o.size,
            "batch": o.batch_size,
            "findings": self.names,
            "weights_file": file_identity(o.weights),
            "real": [data.real_digest, digest(run.real_rows)],
            "synthetic": data.synth_digest if run.synthetic else None,
        }

        def make() -> torch.nn.Module:
            return backbone(o.arch, len(self.names), o.weights, self.allow_pickle)

        config = self.ctx.config
        fitted = fit("classifier", inputs, make, loss, o.steps, o.learning_rate, config.seed, config.cache_dir, device)
        probabilities = torch.sigmoid(outputs(fitted.net, data.test, device)).numpy()
        return probabilities, {k: fitted.log[k] for k in ("seconds", "cached")} | {"loss": fitted.log["loss"][-1][1]}


def _aurocs(labels: np.ndarray, probabilities: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """AUROC per finding on the given test rows (NaN without both classes)."""
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        known = rows[labels[rows, k] >= 0]
        value = auroc(labels[known, k] == 1, probabilities[known, k])
        out[k] = np.nan if value is None else value
    return out


def _figure(value: float, draws: np.ndarray) -> dict[str, Any]:
    draws = draws[~np.isnan(draws)]
    if len(draws) < 20:
        return {"value": value}
    lo, hi = np.percentile(draws, [(100 - LEVEL) / 2, (100 + LEVEL) / 2])
    return {"value": value, "low": float(lo), "high": float(hi)}


def score_runs(labels: np.ndarray, probabilities: dict[str, np.ndarray], rounds: int, seed: int) -> dict[str, Any]:
    """Per run: (AUROC per finding, the same on each bootstrap draw of test images: (rounds, findings)); every run
    is scored on the same draws, so that differences between runs are paired."""
    n = len(labels)
    everyone = np.arange(n)
    draws = np.random.default_rng(seed).integers(0, n, (rounds, n))
    per_run: dict[str, Any] = {}
    bar = tqdm(total=rounds * len(probabilities), desc="utility: bootstrap of AUROCs", unit="round", dynamic_ncols=True)
    with bar:
        for run, p in probabilities.items():
            point = _aurocs(labels, p, everyone)
            boot = []
            for d in draws:
                boot.append(_aurocs(labels, p, d))
                bar.update()
            per_run[run] = (point, np.array(boot))  # (rounds, findings)
    return per_run


def _macro(values: np.ndarray) -> np.ndarray | float:
    with np.errstate(all="ignore"):
        return np.nanmean(values, axis=-1) if np.isfinite(values).any() else np.nan


def utility(
    train: ImageSet,
    generated: ImageSet,
    test: ImageSet,
    o: UtilityOptions,
    ctx: EvaluationContext,
) -> dict[str, Any]:
    names = sorted(carried(train.rows) & carried(generated.rows) & carried(test.rows))
    real_labels, synth_labels, test_labels = (finding_labels(s.rows, names) for s in (train, generated, test))
    enough = [
        k
        for k in range(len(names))
        if min((real_labels[:, k] == 1).sum(), (test_labels[:, k] == 1).sum(), (test_labels[:, k] == 0).sum())
        >= o.min_positives
        and (synth_labels[:, k] == 1).any()
    ]
    if not enough:
        return {"skipped": f"no finding has {o.min_positives} images with it in the real training and test sets"}
    names = [names[k] for k in enough]
    real_labels, synth_labels, test_labels = (x[:, enough] for x in (real_labels, synth_labels, test_labels))
    real_px, synth_px, test_px = (pixels(s, o.size, ctx.config.cache_dir) for s in (train, generated, test))
    data = _Data(
        real_px,
        synth_px,
        test_px,
        real_labels,
        synth_labels,
        digest(np.frombuffer(train.digest.encode(), np.uint8), real_labels),
        digest(np.frombuffer(generated.digest.encode(), np.uint8), synth_labels),
    )
    trainer = _Trainer(o, names, ctx, ctx.config.allow_pickle)
    fractions = sorted(set(o.fractions) | {1.0})  # the whole set always: (a) and (b) are read there
    runs: list[_Run] = []
    for fraction, rows in patient_fractions(train.rows, fractions, ctx.config.seed).items():
        runs += [_Run("real", fraction, rows, False), _Run("real+synthetic", fraction, rows, True)]
    runs.append(_Run("synthetic", None, np.zeros(0, dtype=np.int64), True))
    probabilities, logs = {}, {}
    for run in runs:
        key = run.name if run.fraction is None else f"{run.name}@{run.fraction:g}"
        probabilities[key], logs[key] = trainer(run, data)
        logs[key]["images"] = run.size(len(synth_px))
    scored = score_runs(test_labels, probabilities, o.rounds, ctx.config.seed)

    def summary(key: str) -> dict[str, Any]:
        point, boot = scored[key]
        return {
            "macro_auroc": _figure(float(_macro(point)), _macro(boot)),
            "per_finding": {n: _figure(float(point[k]), boot[:, k]) for k, n in enumerate(names)},
        }

    def difference(b: str, a: str) -> dict[str, Any]:
        (pb, bb), (pa, ba) = scored[b], scored[a]
        return {
            "macro_auroc": _figure(float(_macro(pb) - _macro(pa)), _macro(bb) - _macro(ba)),
            "per_finding": {n: _figure(float(pb[k] - pa[k]), bb[:, k] - ba[:, k]) for k, n in enumerate(names)},
        }

    full = 1.0
    warning = overlap_warning(test, train)
    return {
        **({"warning": warning} if warning else {}),
        "classifier": {k: getattr(o, k) for k in ("arch", "weights", "size", "steps", "batch_size", "learning_rate")},
        "findings": names,
        "counts": {
            n: {
                "real_train": int((real_labels[:, k] == 1).sum()),
                "synthetic": int((synth_labels[:, k] == 1).sum()),
                "test_positive": int((test_labels[:, k] == 1).sum()),
                "test_negative": int((test_labels[:, k] == 0).sum()),
            }
            for k, n in enumerate(names)
        },
        "images": {"real_train": len(train), "synthetic": len(generated), "test": len(test)},
        "real": summary(f"real@{full:g}"),
        "real_synthetic": summary(f"real+synthetic@{full:g}"),
        "synthetic": summary("synthetic"),
        "difference": difference(f"real+synthetic@{full:g}", f"real@{full:g}"),
        "scarcity": [
            {
                "fraction": f,
                "real_images": logs[f"real@{f:g}"]["images"],
                "real": summary(f"real@{f:g}")["macro_auroc"],
                "real_synthetic": summary(f"real+synthetic@{f:g}")["macro_auroc"],
                "difference": difference(f"real+synthetic@{f:g}", f"real@{f:g}")["macro_auroc"],
            }
            for f in fractions
        ],
        "runs": logs,
        "method": (
            f"{o.arch} at {o.size} px from {'given weights' if o.weights else 'random init'}, {o.steps} steps of "
            f"{o.batch_size} images, seed {ctx.config.seed}; AUROC on the real test images, {LEVEL}% percentile "
            f"bootstrap over them ({o.rounds} rounds), paired between runs"
        ),
    }


def draw_scarcity(ax: Any, section: dict[str, Any]) -> None:
    """The scarcity curve on matplotlib axes: (a) and (b) against real training images, (c) as a line."""
    points = section["scarcity"]
    x = [p["real_images"] for p in points]
    for key, label, colour in (("real", "(a) real", "#555"), ("real_synthetic", "(b) real + synthetic", "#2a7")):
        y = np.array([p[key]["value"] for p in points])
        lo = y - np.array([p[key].get("low", p[key]["value"]) for p in points])
        hi = np.array([p[key].get("high", p[key]["value"]) for p in points]) - y
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label, color=colour)
    ax.axhline(section["synthetic"]["macro_auroc"]["value"], ls="--", color="#b60", label="(c) synthetic only")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("real training images")
    ax.set_ylabel("macro AUROC, real test images")
    ax.legend(fontsize=8)


def verdict(section: dict[str, Any]) -> str:
    """One line: whether adding the synthetic images helped, by the interval of the paired difference."""
    d, real = section["difference"]["macro_auroc"], section["real"]["macro_auroc"]
    if real.get("low", real["value"]) <= 0.6:
        return f"inconclusive: the classifier learns little from the real images (macro AUROC {with_interval(real)})"
    if "low" not in d:
        return f"macro AUROC changed by {d['value']:+.3f} with synthetic images (no interval)"
    if d["low"] > 0:
        return f"useful: real + synthetic beats real alone by {with_interval(d)} macro AUROC"
    if d["high"] < 0:
        return f"harmful: real + synthetic trails real alone by {with_interval(d)} macro AUROC"
    return f"no detectable effect: real + synthetic minus real is {with_interval(d)} macro AUROC"


@METRICS.register
class UtilityMetric(Metric):
    """Whether a classifier trained with the synthetic images does better on real test images."""

    name = "utility"
    title = "Utility: a classifier trained with synthetic images, tested on real ones"
    Options = UtilityOptions
    not_measured = "give --utility and --train (labelled real training images); it trains classifiers"
    question = "useful"

    def check_config(self, config: Any) -> None:
        o: UtilityOptions = config.utility
        if o.enabled and not config.train:
            raise ConfigError("--utility needs --train: the real training images (a prepared dataset)")
        if not o.fractions or any(not 0 < f <= 1 for f in o.fractions):
            raise ConfigError(f"--utility.fractions must be shares in (0, 1], not {o.fractions}")
        if o.steps < 1 or o.batch_size < 1 or o.size < 16:
            raise ConfigError("--utility.steps and --utility.batch-size must be >= 1, --utility.size >= 16")
        if o.rounds < 20 or o.min_positives < 1:
            raise ConfigError("--utility.rounds must be >= 20 and --utility.min-positives >= 1")

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return ctx.options(self).enabled

    def applies(self, ctx: EvaluationContext) -> str | None:
        for images in (ctx.train, ctx.generated, ctx.real):
            if images is not None and not images.rows:
                return f"{images.root} has no labels (metadata.jsonl): a classifier needs them"
        return None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        assert ctx.train is not None  # check_config requires it
        return utility(ctx.train, ctx.generated, ctx.real, ctx.options(self), ctx)

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        n, d = section["images"], section["difference"]["macro_auroc"]
        width = f"; the difference's interval is {d['high'] - d['low']:.3f} wide" if "low" in d else ""
        return verdict(section), (section.get("warning", "") + "; " if section.get("warning") else "") + (
            f"{n['real_train']} real training, {n['synthetic']} synthetic and {n['test']} real test images, "
            f"{len(section['findings'])} findings; {section['method']}{width}; one training seed: the intervals "
            "cover the test images, not another training run; with scarce real images the synthetic ones carry what "
            "the generative model learned from the whole training set"
        )

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        lines = [
            f"utility: macro AUROC over {len(section['findings'])} findings on real test images: real "
            f"{with_interval(section['real']['macro_auroc'])}, real + synthetic "
            f"{with_interval(section['real_synthetic']['macro_auroc'])}, synthetic only "
            f"{with_interval(section['synthetic']['macro_auroc'])}",
            f"  {verdict(section)}",
        ] + ([f"  warning: {section['warning']}"] if section.get("warning") else [])
        for point in section["scarcity"]:
            if point["fraction"] < 1:
                lines.append(
                    f"  with {point['fraction']:.0%} of the real images ({point['real_images']}): "
                    f"difference {with_interval(point['difference'])}"
                )
        return lines

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows = []
        for name in section["findings"]:
            c = section["counts"][name]
            rows.append(
                [
                    name,
                    c["real_train"],
                    c["synthetic"],
                    f"{c['test_positive']} / {c['test_negative']}",
                    with_interval(section["real"]["per_finding"][name]),
                    with_interval(section["real_synthetic"]["per_finding"][name]),
                    with_interval(section["synthetic"]["per_finding"][name]),
                    with_interval(section["difference"]["per_finding"][name]),
                ]
            )
        rows.append(
            ["macro", "", "", ""]
            + [with_interval(section[k]["macro_auroc"]) for k in ("real", "real_synthetic", "synthetic", "difference")]
        )
        header = ["finding", "real train +", "synthetic +", "test + / -", "(a) real", "(b) real + synthetic"]
        out = f"<p>{escape(verdict(section))}</p>" + (note(section["warning"]) if section.get("warning") else "")
        out += table([*header, "(c) synthetic", "(b) - (a)"], rows)

        runs = [
            [k, v["images"], f"{v['loss']:.4f}", f"{v['seconds']:.0f} s", "cached" if v["cached"] else "trained"]
            for k, v in section["runs"].items()
        ]
        return (
            out
            + figure(lambda ax: draw_scarcity(ax, section))
            + table(["run", "training images", "final loss", "time", ""], runs)
            + note(
                f"{section['method']}. Counts: images with the finding. The synthetic set is labelled by the "
                "conditions it was generated from; a reweighted set (generate --reweight) shows here per finding."
            )
        )
