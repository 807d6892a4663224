"""Forgetting (the original paper's bird test): do prior concepts survive fine-tuning?

The fine-tuned model and its base model draw the same generic prompts with the same seeds; the closer their
images (feature cosine, detail correlation), the more of the prior is kept. A chest x-ray prompt is the control
that should change.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, option
from ..contracts import MetadataRow, MetricsDocument, write_metadata
from ..grid import image_grid
from ..imaging.png import write_png
from ..model.sampling import image_seed
from ..synthetic_mark import png_marks
from .extractors import Extractor
from .features import extract
from .html import img, table
from .imagesets import open_set
from .memorization import SIZE, _resize, detail_vector
from .metric import METRICS, EvaluationContext, Metric

if TYPE_CHECKING:
    from ..model.source import ModelSource

GENERIC_PROMPTS = (
    "a bird sitting on a tree",
    "a photo of a dog",
    "a red car parked on a street",
    "a bowl of fruit on a table",
)
CONTROL_PROMPT = "chest x-ray"
SPLIT = "train"  # the folder layout of a generated set: <model>/train/metadata.jsonl
SAMPLER = None  # the model family's default, as training's sample grids
# PNG text chunks: the control prompt's images look like radiographs and must never pass for one
PNG_TEXT = {**png_marks("SYNTHETIC IMAGE made by cxrgen's forgetting test"), "cxrgen:synthetic": "true"}


def sample_set(
    source: ModelSource,
    folder: Path,
    prompts: list[str],
    seeds: list[int],
    batch: int,
    steps: int,
    size: int | None,
    device: str,
) -> None:
    """Sample each prompt with its seed into `folder/train` (PNGs and metadata.jsonl), `batch` images a call."""
    import torch

    from ..model.loading import set_offline_if_local
    from ..model.sampling import sample_images, to_uint
    from ..model.source import load_sampling_pipeline

    set_offline_if_local(source.base.base)
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    pipe, components, _ = load_sampling_pipeline(source, SAMPLER, dtype, device)
    side = size or components.native_resolution
    rows: list[MetadataRow] = []
    bar = tqdm(total=len(prompts), desc=f"forgetting: sampling ({folder.name})", unit="img", dynamic_ncols=True)
    with bar:
        for start in range(0, len(prompts), batch):
            chunk = range(start, min(start + batch, len(prompts)))
            images = sample_images(
                pipe,
                [prompts[i] for i in chunk],
                [seeds[i] for i in chunk],
                steps,
                long_prompts=source.long_prompts,
                resolution=side,
            )
            for i, pixels in zip(chunk, to_uint(images), strict=True):
                name = f"{i:05d}.png"
                write_png(folder / SPLIT / name, pixels, PNG_TEXT)
                rows.append({"file_name": name, "text": prompts[i], "seed": seeds[i]})
            bar.update(len(chunk))
    write_metadata(folder, SPLIT, rows)
    del pipe, components  # the second model loads next: not beside this one
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def forgetting(
    run: str,
    out: Path,
    extractor: Extractor,
    images: int,
    steps: int,
    seed: int,
    cache_dir: str | None,
    batch: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    # loading a model brings in diffusers: imported here, so that `cxrgen report` does not wait for it
    from ..model.source import ModelSource

    tuned = ModelSource.from_run(run)
    prompts = [p for p in (*GENERIC_PROMPTS, CONTROL_PROMPT) for _ in range(images)]
    seeds = [image_seed(seed, i) for i in range(len(prompts))]
    # both at the run's resolution, each prompt's images in one call: only the model differs
    for source, name in ((tuned, "tuned"), (tuned.before_training(), "base")):
        sample_set(source, out / name, prompts, seeds, images, steps, tuned.resolution, device)
    tuned_set, base_set = open_set(out / "tuned", SPLIT, "tuned"), open_set(out / "base", SPLIT, "base")
    tuned_f, _ = extract(tuned_set, extractor, cache_dir, batch, device)
    base_f, _ = extract(base_set, extractor, cache_dir, batch, device)
    result: dict[str, Any] = {"extractor": extractor.identity, "per_prompt": {}}
    for p in (*GENERIC_PROMPTS, CONTROL_PROMPT):
        idx = [i for i, r in enumerate(tuned_set.rows) if r["text"] == p]
        cos = [
            float(np.dot(tuned_f[i], base_f[i]) / (np.linalg.norm(tuned_f[i]) * np.linalg.norm(base_f[i]) + 1e-9))
            for i in idx
        ]
        det = [
            float(detail_vector(_resize(tuned_set.load(i), SIZE)) @ detail_vector(_resize(base_set.load(i), SIZE)))
            for i in idx
        ]
        result["per_prompt"][p] = {
            "feature_cosine": float(np.mean(cos)),
            "detail_correlation": float(np.mean(det)),
            "images": len(idx),
        }
    generic = [result["per_prompt"][p]["feature_cosine"] for p in GENERIC_PROMPTS]
    result["generic_feature_cosine"] = float(np.mean(generic))
    result["control_feature_cosine"] = result["per_prompt"][CONTROL_PROMPT]["feature_cosine"]
    # relative to the evaluation folder, which holds metrics.json (the report joins them to it)
    result["files"] = {name: f"{out.name}/{name}" for name in ("tuned", "base")}
    return result


@dataclass
class ForgettingOptions:
    enabled: bool = option(
        False, "run the bird test: generic prompts from the fine-tuned and the base model (needs --run)"
    )
    images: int = option(4, "images per prompt")
    steps: int = option(25, "sampling steps")


@METRICS.register
class ForgettingMetric(Metric):
    name = "forgetting"
    title = "Forgetting: generic prompts, fine-tuned vs base"
    question = "faithful"
    Options = ForgettingOptions
    not_measured = "give --run RUN --forgetting.enabled"

    def check_config(self, config: Any) -> None:
        options = getattr(config, self.name, None)
        if options is not None and options.enabled and not config.run:
            raise ConfigError("--forgetting.enabled needs --run RUN_FOLDER (the fine-tuned model and its base)")

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return ctx.options(self).enabled

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        o, c = ctx.options(self), ctx.config
        return forgetting(
            c.run, ctx.out / "forgetting", ctx.primary, o.images, o.steps, c.seed, c.cache_dir, c.batch_size, ctx.device
        )

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        generic, control = section["generic_feature_cosine"], section["control_feature_cosine"]
        return (
            f"generic prompts {generic:.3f} feature cosine to the base model's images, the chest x-ray control "
            f"{control:.3f}: "
            + ("prior concepts kept more than the control" if generic > control else "the prior moved as the control"),
            f"{len(section['per_prompt'])} prompts, the same seeds in both models; a point figure, no interval",
        )

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        return [
            f"forgetting: generic prompts {section['generic_feature_cosine']:.3f} cosine to the base model "
            f"(control {section['control_feature_cosine']:.3f})"
        ]

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        rows = [
            [p, f"{v['feature_cosine']:.3f}", f"{v['detail_correlation']:.3f}"]
            for p, v in section["per_prompt"].items()
        ]
        out = table(["prompt (same seeds)", "feature cosine, fine-tuned vs base", "detail correlation"], rows)
        tuned = open_set(folder / section["files"]["tuned"], SPLIT, "tuned")
        base = open_set(folder / section["files"]["base"], SPLIT, "base")
        tiles = []
        for i in range(len(tuned)):
            if tuned.rows[i].get("seed") == tuned.rows[0].get("seed") or i % max(1, len(tuned) // 5) == 0:
                tiles += [(base.load(i), "base: " + tuned.rows[i]["text"]), (tuned.load(i), "fine-tuned")]
        return out + img(image_grid(tiles[:20], 4, 128), "forgetting")
