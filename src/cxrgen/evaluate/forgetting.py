"""Forgetting (the original paper's bird test): do prior concepts survive fine-tuning?

The fine-tuned model and its base model draw the same generic prompts with the same seeds; the closer their
images (feature cosine, detail correlation), the more of the prior is kept. A chest x-ray prompt is the control
that should change.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..generate.config import GenerateConfig
from ..generate.runner import Generator
from ..models import ModelConfig
from .extractors import Extractor
from .features import extract
from .imagesets import open_set
from .memorization import SIZE, _resize, detail_vector

GENERIC_PROMPTS = (
    "a bird sitting on a tree",
    "a photo of a dog",
    "a red car parked on a street",
    "a bowl of fruit on a table",
)
CONTROL_PROMPT = "chest x-ray"


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
    run_json = json.loads((Path(run) / "run.json").read_text())
    prompts = [*GENERIC_PROMPTS, CONTROL_PROMPT]
    common = GenerateConfig(out="", run=run, prompt=prompts, n=images, steps=steps, seed=seed, batch_size=images)
    Generator(replace(common, out=str(out / "tuned"))).run()
    base = ModelConfig(**run_json["config"]["model"])
    Generator(
        replace(common, out=str(out / "base"), run=None, model=base, size=run_json.get("resolution"), prompts=None)
    ).run()
    tuned_set, base_set = open_set(out / "tuned", "train", "tuned"), open_set(out / "base", "train", "base")
    tuned_f, _ = extract(tuned_set, extractor, cache_dir, batch, device)
    base_f, _ = extract(base_set, extractor, cache_dir, batch, device)
    result: dict[str, Any] = {"extractor": extractor.identity, "per_prompt": {}}
    for p in prompts:
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
    result["files"] = {"tuned": str((out / "tuned").resolve()), "base": str((out / "base").resolve())}
    return result
