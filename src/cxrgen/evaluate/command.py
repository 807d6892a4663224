"""`cxrgen evaluate`: fidelity, diversity, memorization, prompt adherence and forgetting -> metrics.json (+ report)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, option, to_dict
from ..fileio import write_json
from ..provenance import provenance
from . import diversity, fidelity
from .adherence import adherence
from .extractors import Extractor, build_extractor, describe, weights_map
from .features import extract
from .imagesets import ImageSet, ImageSetError, open_set
from .memorization import check

log = logging.getLogger(__name__)
STABLE_FID_IMAGES = 2000  # below this, FID moves with the sample: say so, with its interval


@dataclass
class EvaluateConfig:
    real: str = option(help="real images: a prepared dataset (its --real-split) or an image folder")
    generated: str = option(help="generated images: a cxrgen generate output or an image folder")
    out: str = option(help="folder for metrics.json, report.html and figures")
    train: str | None = option(None, "the training images, for memorization (a prepared dataset or folder)")
    run: str | None = option(None, "the training run: loss curves in the report, and the forgetting test")
    real_split: str = option("test", "split of --real")
    generated_split: str = option("train", "split of --generated")
    train_split: str = option("train", "split of --train")
    extractors: list[str] = option(["inception"], "feature extractors: inception, xrv, torchvision:<arch>, timm:<arch>")
    weights: list[str] = option([], "weights per extractor, 'name=PATH' (or name=random for smoke tests)")
    allow_pickle: bool = option(
        False, "load pickled classifier weights (torchxrayvision .pt files): only files you trust"
    )
    bootstrap: int = option(20, "bootstrap rounds for confidence intervals (0: none)")
    kid_subsets: int = option(50, "KID subsets")
    kid_subset_size: int = option(1000, "KID subset size")
    prdc_k: int = option(5, "neighbours for precision/recall/density/coverage")
    per_prompt: int = option(4, "images per prompt for within-prompt MS-SSIM (RoentGen used 4)")
    diversity_pairs: int = option(200, "random pairs for across-set MS-SSIM")
    memorization_margin: float = option(
        0.5, "flag when closer than m + margin * (1 - m), m the closest pair of training patients"
    )
    forgetting: bool = option(
        False, "run the bird test: generic prompts from the fine-tuned and the base model (needs --run)"
    )
    forgetting_images: int = option(4, "images per prompt for the forgetting test")
    forgetting_steps: int = option(25, "sampling steps for the forgetting test")
    max_images: int | None = option(None, "use at most this many real and generated images (seeded choice)")
    max_train_images: int | None = option(
        None, "compare with at most this many training images (seeded choice; copies of the others go unseen)"
    )
    batch_size: int = option(32, "images per feature-extraction batch")
    device: str = option("auto", "cpu, cuda, or auto")
    cache_dir: str | None = option(None, "feature cache folder (default: $CXRGEN_CACHE or ~/.cache/cxrgen)")
    seed: int = option(0, "seed for bootstraps, subsets and pairs")
    report: bool = option(True, "also write report.html")

    def __post_init__(self) -> None:
        if self.forgetting and not self.run:
            raise ConfigError("--forgetting needs --run RUN_FOLDER (the fine-tuned model and its base)")
        if not self.extractors:
            raise ConfigError("give at least one --extractors entry")


def _subsample(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    if limit is None or len(images) <= limit:
        return images
    keep = sorted(np.random.default_rng(seed).choice(len(images), limit, replace=False))
    rows = [images.rows[i] for i in keep] if images.rows else []
    return ImageSet(images.name, images.root, [images.files[i] for i in keep], rows)


def _sizes(images: ImageSet, sample: int = 20) -> list[int]:
    from PIL import Image

    sizes = set()
    for f in images.files[:sample]:
        if f.suffix.lower() != ".dcm":
            with Image.open(f) as im:
                sizes.add(max(im.size))
    return sorted(sizes)


def fidelity_metrics(c: EvaluateConfig, real_f: np.ndarray, gen_f: np.ndarray) -> dict[str, Any]:
    rounds = c.bootstrap
    kid = fidelity.bootstrap(  # resamples use a fifth of the subsets: the interval needs spread, not precision
        lambda a, b: fidelity.kid(a, b, max(5, c.kid_subsets // 5), c.kid_subset_size, c.seed),
        real_f,
        gen_f,
        rounds,
        c.seed,
        value=fidelity.kid(real_f, gen_f, c.kid_subsets, c.kid_subset_size, c.seed),
    )
    result = {
        "fid": fidelity.bootstrap(fidelity.fid, real_f, gen_f, rounds, c.seed, floor=0.0),
        "kid": kid,
        "prdc": fidelity.prdc(real_f, gen_f, c.prdc_k),
    }
    n = min(len(real_f), len(gen_f))
    if n < STABLE_FID_IMAGES:
        fid = result["fid"]
        interval = f" (95% interval {fid['low']:.2f}-{fid['high']:.2f})" if "low" in fid else ""
        message = f"FID from {n} images per set is unstable{interval}; {STABLE_FID_IMAGES}+ per set is usual"
        log.warning(message)
        result["warning"] = message
    return result


def run_evaluate(c: EvaluateConfig) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    real = _subsample(open_set(c.real, c.real_split, "real"), c.max_images, c.seed)
    generated = _subsample(open_set(c.generated, c.generated_split, "generated"), c.max_images, c.seed)
    train = None
    if c.train:
        every = open_set(c.train, c.train_split, "train")
        train = _subsample(every, c.max_train_images, c.seed)
        if len(train) < len(every):
            log.warning(
                "memorization: compared with %d of the %d training images, chosen at random; a copy of "
                "any other goes unseen",
                len(train),
                len(every),
            )
    sets = {"real": real, "generated": generated, **({"train": train} if train else {})}
    for images in (real, generated):
        if len(images) < 2:  # a covariance needs two
            raise ImageSetError(f"{images.name}: FID and KID need at least 2 images, {images.root} has 1")
    metrics: dict[str, Any] = {
        **provenance(),
        "config": to_dict(c),
        "sets": {k: {"folder": str(v.root), "images": len(v), "sizes": _sizes(v)} for k, v in sets.items()},
        "fidelity": {},
        "extractors": [],
    }
    if len({tuple(v["sizes"]) for v in metrics["sets"].values()}) > 1:
        log.info("the sets have different image sizes; every extractor resizes to its own input size")
    weights = weights_map(c.weights)
    extractors: list[Extractor] = [build_extractor(spec, weights, c.allow_pickle) for spec in c.extractors]
    features: dict[str, dict[str, np.ndarray]] = {}
    scores: dict[str, np.ndarray | None] = {}
    for ex in extractors:
        metrics["extractors"].append(describe(ex))
        features[ex.name] = {}
        for name, images in sets.items():
            features[ex.name][name], s = extract(images, ex, c.cache_dir, c.batch_size, device)
            if name == "generated":
                scores[ex.name] = s
        metrics["fidelity"][ex.name] = fidelity_metrics(c, features[ex.name]["real"], features[ex.name]["generated"])
        if ex.random:
            metrics["fidelity"][ex.name]["note"] = "random weights: a smoke test, not a measurement"
    metrics["diversity"] = {
        "generated_within_prompt": diversity.within_prompt(generated, c.per_prompt, seed=c.seed),
        "generated_across_set": diversity.across_set(generated, c.diversity_pairs, seed=c.seed),
        "real_across_set": diversity.across_set(real, c.diversity_pairs, seed=c.seed),
    }
    if train is not None:
        primary = _primary(extractors)
        mem = check(
            generated,
            train,
            features[primary.name]["generated"],
            features[primary.name]["train"],
            margin=c.memorization_margin,
            seed=c.seed,
        )
        metrics["memorization"] = {"extractor": primary.identity, **mem.summary(generated, train)}
    classifier = next((ex for ex in extractors if ex.outputs), None)
    if classifier is not None and not generated.rows:
        metrics["adherence"] = {"skipped": f"{generated.root} has no metadata.jsonl: no conditions to check"}
    elif classifier is not None and not any(row.get("findings") for row in generated.rows):
        metrics["adherence"] = {"skipped": "no generated image asked for a finding (raw prompts?)"}
    elif classifier is not None:
        metrics["adherence"] = {
            "classifier": classifier.identity,
            **adherence(generated.rows, scores[classifier.name], classifier.outputs),
        }
    if c.forgetting:
        from .forgetting import forgetting

        metrics["forgetting"] = forgetting(
            c.run,
            out / "forgetting",
            _primary(extractors),
            c.forgetting_images,
            c.forgetting_steps,
            c.seed,
            c.cache_dir,
            c.batch_size,
            device,
        )
    if c.run:
        metrics["run"] = str(Path(c.run).resolve())
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "metrics.json", metrics)
    return metrics


def _primary(extractors: list[Extractor]) -> Extractor:
    """Chest-X-ray features when there are any, else the first extractor."""
    return next((ex for ex in extractors if ex.name == "xrv"), extractors[0])


def main(c: EvaluateConfig) -> int:
    metrics = run_evaluate(c)
    out = Path(c.out)
    for name, f in metrics["fidelity"].items():
        fid, kid, prdc = f["fid"], f["kid"], f["prdc"]
        interval = f" [{fid['low']:.2f}, {fid['high']:.2f}]" if "low" in fid else ""
        print(
            f"{name:12s} FID {fid['value']:.3f}{interval}  KID {kid['value']:.5f}  precision {prdc['precision']:.3f} "
            f"recall {prdc['recall']:.3f} density {prdc['density']:.3f} coverage {prdc['coverage']:.3f}"
        )
    div = metrics["diversity"]
    if div["generated_within_prompt"]:
        print(f"MS-SSIM within prompt {div['generated_within_prompt']['mean']:.3f} (lower = more diverse)")
    across = {k: div[f"{k}_across_set"] for k in ("generated", "real")}
    if any(across.values()):  # None for a set of one image
        print("MS-SSIM across set: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in across.items() if v))
    if "memorization" in metrics:
        m = metrics["memorization"]
        print(
            f"memorization: {m['flagged']} of {metrics['sets']['generated']['images']} "
            "generated images flagged as likely copies "
            f"of {m['train_images']} training images"
        )
    if "adherence" in metrics and metrics["adherence"]["mean_auroc"] is not None:
        print(
            f"prompt adherence: mean AUROC {metrics['adherence']['mean_auroc']:.3f} "
            f"over {len(metrics['adherence']['per_finding'])} findings"
        )
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        print(
            f"forgetting: generic prompts {f['generic_feature_cosine']:.3f} cosine to the base model "
            f"(control {f['control_feature_cosine']:.3f})"
        )
    print(f"  metrics: {out / 'metrics.json'} ({metrics['seconds']:.0f} s)")
    if c.report:
        from .report import write_report

        print(f"  report:  {write_report(out)}")
    return 0
