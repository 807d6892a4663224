"""`cxrgen evaluate`: the registered metrics (fidelity, diversity, memorization, prompt adherence, forgetting, ...)
of a generated set against real images -> metrics.json (+ report.html).

The image sets are opened and their features extracted once here; each metric then computes its own section
from them (see metric.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, option, to_dict, with_groups
from ..contracts import MetricsDocument
from ..provenance import portable, portable_tree
from .extractors import Extractor, build_extractor, describe, weights_map
from .features import extract
from .imagesets import ImageSet, ImageSetError, open_set
from .metric import METRICS, EvaluationContext, measure, summary
from .report import write_report

log = logging.getLogger(__name__)


@dataclass
class EvaluateSettings:
    """The sets to compare and how to read them; each metric's own settings are added as groups (below)."""

    real: str = option(help="real images: a prepared dataset (its --real-split) or an image folder", path=True)
    generated: str = option(help="generated images: a cxrgen generate output or an image folder", path=True)
    out: str = option(help="folder for metrics.json, report.html and figures", path=True)
    train: str | None = option(None, "the training images, for memorization (a prepared dataset or folder)", path=True)
    run: str | None = option(None, "the training run: loss curves in the report, and the forgetting test", path=True)
    real_split: str = option("test", "split of --real")
    generated_split: str = option("train", "split of --generated")
    train_split: str = option("train", "split of --train")
    extractors: list[str] = option(["inception"], "feature extractors: inception, xrv, torchvision:<arch>, timm:<arch>")
    weights: list[str] = option([], "weights per extractor, 'name=PATH' (or name=random for smoke tests)", path=True)
    allow_pickle: bool = option(
        False,
        "load pickled weights (torchxrayvision .pt files, a TorchScript --weights inception=PATH): only files you "
        "trust",
    )
    max_images: int | None = option(None, "use at most this many real and generated images (seeded choice)")
    max_train_images: int | None = option(
        None, "compare with at most this many training images (seeded choice; copies of the others go unseen)"
    )
    batch_size: int = option(32, "images per feature-extraction batch")
    device: str = option("auto", "cpu, cuda, or auto")
    cache_dir: str | None = option(None, "feature cache folder (default: $CXRGEN_CACHE or ~/.cache/cxrgen)", path=True)
    seed: int = option(0, "seed for jackknife groups, bootstraps and pairs")
    report: bool = option(True, "also write report.html")

    def __post_init__(self) -> None:
        if not self.extractors:
            raise ConfigError("give at least one --extractors entry")
        for metric in METRICS.values():
            metric().check_config(self)


def config_class() -> type[EvaluateSettings]:
    """The settings with one group per registered metric that has options (--fidelity.bootstrap, ...)."""
    clash = [name for name in METRICS if name in {f.name for f in fields(EvaluateSettings)}]
    if clash:
        raise ValueError(f"metric name(s) {', '.join(clash)} are taken by evaluate's own settings")
    return with_groups(EvaluateSettings, METRICS.option_groups(lambda metric: metric.title))


EvaluateConfig = Config = config_class()


@dataclass
class EvaluateResult:
    out: Path
    document: MetricsDocument
    report: Path | None  # None with --no-report


def run(config: EvaluateSettings) -> EvaluateResult:
    """Compare the sets with every registered metric that was asked for; write metrics.json (and report.html)."""
    start = time.perf_counter()
    out = Path(config.out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    sets = _open_sets(config)
    described = {
        k: {"folder": portable(str(v.root), config.out), "images": len(v), "sizes": _sizes(v)} for k, v in sets.items()
    }
    if len({tuple(v["sizes"]) for v in described.values()}) > 1:
        log.info("the sets have different image sizes; every extractor resizes to its own input size")
    weights = weights_map(config.weights)
    extractors = [build_extractor(spec, weights, config.allow_pickle) for spec in config.extractors]
    features: dict[str, dict[str, np.ndarray]] = {}
    scores: dict[str, dict[str, np.ndarray | None]] = {}
    for ex in extractors:
        features[ex.name], scores[ex.name] = {}, {}
        for name, images in sets.items():
            features[ex.name][name], scores[ex.name][name] = extract(
                images, ex, config.cache_dir, config.batch_size, device
            )
    out.mkdir(parents=True, exist_ok=True)  # once the inputs and extractors are known good: no empty --out on error
    ctx = EvaluationContext(config, sets, extractors, features, scores, _primary(extractors), out, device)
    sections = {}
    for name, metric in METRICS.items():
        section = measure(metric(), ctx)
        if section is not None:
            sections[name] = section
    document = MetricsDocument(
        config=to_dict(config, relative_to=config.out),
        sets=described,
        extractors=[describe(ex) for ex in extractors],
        sections=portable_tree(sections, out),  # image paths relative to this folder, as the report reads them
        run=portable(config.run, out) if config.run else None,
        seconds=round(time.perf_counter() - start, 1),
    )
    document.write(out)
    return EvaluateResult(out, document, write_report(out) if config.report else None)


def summarize(result: EvaluateResult) -> int:
    """Print each metric's summary and where the files are."""
    doc = result.document
    for name, metric in METRICS.items():
        if name in doc.sections:
            for line in summary(metric(), doc.sections[name], doc):
                print(line)
        else:  # as the report says it: what measuring it would take
            print(f"{name} not measured: {metric.not_measured}")
    print(f"  metrics: {MetricsDocument.path(result.out)} ({doc.seconds:.0f} s)")
    if result.report is not None:
        print(f"  report:  {result.report}")
    return 0


def _open_sets(c: EvaluateSettings) -> dict[str, ImageSet]:
    real = _subsample(open_set(c.real, c.real_split, "real"), c.max_images, c.seed)
    generated = _subsample(open_set(c.generated, c.generated_split, "generated"), c.max_images, c.seed)
    for images in (real, generated):
        if len(images) < 2:  # a covariance needs two
            raise ImageSetError(f"{images.name}: FID and KID need at least 2 images, {images.root} has 1")
    if not c.train:
        return {"real": real, "generated": generated}
    every = open_set(c.train, c.train_split, "train")
    train = _subsample(every, c.max_train_images, c.seed)
    if len(train) < len(every):
        log.warning(
            "memorization: compared with %d of the %d training images, chosen at random; a copy of "
            "any other goes unseen",
            len(train),
            len(every),
        )
    return {"real": real, "generated": generated, "train": train}


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


def _primary(extractors: list[Extractor]) -> Extractor:
    """Chest-X-ray features when there are any, else the first extractor."""
    return next((ex for ex in extractors if ex.name == "xrv"), extractors[0])
