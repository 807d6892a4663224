"""Diversity as MS-SSIM (higher means more alike): among the images of one prompt (RoentGen compared 4 per
prompt) and between random pairs across the set. Identical images score 1. Each mean carries a 95% bootstrap
interval: over prompts for the within-prompt mean (a prompt's pairs share images), over pairs across the set."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import option
from ..contracts import MetricsDocument
from .html import note, table, with_interval
from .imagesets import ImageSet
from .intervals import bootstrap_mean
from .metric import METRICS, EvaluationContext, Metric

BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two 8-bit grayscale images of one size, with as many scales as the size allows."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    side = min(a.shape)
    kernel = 11 if side >= 32 else 7
    scales = len(BETAS)
    # torchmetrics' own conditions: a side of at least 2**scales, and side // (scales - 1)**2 above kernel - 1
    while scales > 1 and (side < 2**scales or side // max(1, scales - 1) ** 2 <= kernel - 1):
        scales -= 1
    betas = tuple(np.array(BETAS[:scales]) / sum(BETAS[:scales]))
    x = torch.tensor(a, dtype=torch.float32)[None, None] / 255.0
    y = torch.tensor(b, dtype=torch.float32)[None, None] / 255.0
    return float(msssim(x, y, data_range=1.0, kernel_size=kernel, betas=betas, normalize="relu"))


def within_prompt(
    images: ImageSet, per_prompt: int = 4, max_groups: int = 100, size: int = 256, seed: int = 0
) -> dict[str, float] | None:
    """Mean pairwise MS-SSIM within groups of images made from the same prompt."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(images.prompts()):
        if prompt is not None:
            groups[prompt].append(i)
    usable = [g[:per_prompt] for g in groups.values() if len(g) >= 2]
    if not usable:
        return None
    rng = np.random.default_rng(seed)
    if len(usable) > max_groups:
        usable = [usable[i] for i in sorted(rng.choice(len(usable), max_groups, replace=False))]
    scores, prompt_of_pair = [], []
    bar = tqdm(usable, desc=f"diversity: MS-SSIM within prompt ({images.name})", unit="prompt", dynamic_ncols=True)
    for k, group in enumerate(bar):
        pixels = [images.load(i, size) for i in group]
        pairs = [ms_ssim(pixels[i], pixels[j]) for i, j in combinations(range(len(pixels)), 2)]
        scores += pairs
        prompt_of_pair += [k] * len(pairs)
    return {
        **_as_mean(bootstrap_mean(scores, seed=seed, clusters=prompt_of_pair)),
        "std": float(np.std(scores)),
        "groups": len(usable),
        "pairs": len(scores),
    }


def across_set(images: ImageSet, pairs: int = 200, size: int = 256, seed: int = 0) -> dict[str, float] | None:
    """Mean MS-SSIM of random pairs of different images."""
    if len(images) < 2:
        return None
    rng = np.random.default_rng(seed)
    cache: dict[int, np.ndarray] = {}
    scores = []
    for _ in tqdm(range(pairs), desc=f"diversity: MS-SSIM across set ({images.name})", unit="pair", dynamic_ncols=True):
        i, j = rng.choice(len(images), 2, replace=False)
        for k in (i, j):
            if k not in cache:
                cache[k] = images.load(int(k), size)
        scores.append(ms_ssim(cache[i], cache[j]))
    return {**_as_mean(bootstrap_mean(scores, seed=seed)), "std": float(np.std(scores)), "pairs": pairs}


@dataclass
class DiversityOptions:
    per_prompt: int = option(4, "images per prompt for within-prompt MS-SSIM (RoentGen used 4)")
    pairs: int = option(200, "random pairs for across-set MS-SSIM")


@METRICS.register
class DiversityMetric(Metric):
    """How alike the generated images are, within a prompt and across the set (the real set for scale)."""

    name = "diversity"
    question = "faithful"
    title = "Diversity"
    Options = DiversityOptions
    not_measured = "run cxrgen evaluate on --real and --generated images"

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        o, seed = ctx.options(self), ctx.config.seed
        return {
            "generated_within_prompt": within_prompt(ctx.generated, o.per_prompt, seed=seed),
            "generated_across_set": across_set(ctx.generated, o.pairs, seed=seed),
            "real_across_set": across_set(ctx.real, o.pairs, seed=seed),
        }

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        """Whether generated images resemble each other more than real ones do (MS-SSIM across the set)."""
        gen, real = _mean(section["generated_across_set"]), _mean(section["real_across_set"])
        if "low" in gen and "low" in real and gen["low"] > real["high"]:
            word = "less diverse than"
        elif "low" in gen and "low" in real and gen["high"] < real["low"]:
            word = "more varied than"
        else:
            word = "as diverse as"
        return (
            f"{word} the real set (MS-SSIM across the set {with_interval(gen)}, real {with_interval(real)})",
            f"{section['generated_across_set']['pairs']} random pairs a set; a difference is called only when the "
            "intervals do not overlap",
        )

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        lines = []
        if section["generated_within_prompt"]:
            lines.append(
                f"MS-SSIM within prompt {with_interval(_mean(section['generated_within_prompt']))} "
                "(lower = more diverse)"
            )
        across = {k: section[f"{k}_across_set"] for k in ("generated", "real")}
        if any(across.values()):  # None for a set of one image
            figures = [f"{k} {with_interval(_mean(v))}" for k, v in across.items() if v]
            lines.append("MS-SSIM across set: " + ", ".join(figures))
        return lines

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows = [
            [label, with_interval(_mean(v)), f"{v['std']:.3f}", v.get("pairs", "")]
            for label, v in (
                ("generated, within a prompt", section["generated_within_prompt"]),
                ("generated, across the set", section["generated_across_set"]),
                ("real, across the set", section["real_across_set"]),
            )
            if v
        ]
        header = ["MS-SSIM (1 = identical; lower = more diverse)", "mean [95% interval]", "sd", "pairs"]
        method = "intervals: percentile bootstrap, 1,000 rounds, over prompts (within) and over pairs (across)"
        return table(header, rows) + note(method)


def _as_mean(interval: dict[str, Any]) -> dict[str, Any]:
    """metrics.json keeps MS-SSIM's "mean" key (its readers predate the intervals)."""
    return {"mean": interval["value"], **{k: v for k, v in interval.items() if k != "value"}}


def _mean(v: dict[str, Any]) -> dict[str, Any]:
    """The mean as {"value", "low", "high"}; files written before issue 15 hold "mean" alone."""
    return {"value": v["mean"], **{k: v[k] for k in ("low", "high") if k in v}}
