"""Features of an image set, computed in batches with a progress bar and cached per folder and extractor."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..train.cache import cache_root
from .extractors import Extractor
from .imagesets import ImageSet


def extract(images: ImageSet, extractor: Extractor, cache_dir: str | None, batch: int = 32,
            device: str = "cpu", workers: int = 4) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """(features (N, dim), classifier probabilities (N, outputs) or None), from the cache when present."""
    folder = cache_root(cache_dir) / "features"
    stem = folder / f"{extractor.identity.replace('/', '_').replace(':', '_')}-{images.digest}"
    feat_file, score_file = Path(f"{stem}.npy"), Path(f"{stem}.scores.npy")
    if feat_file.is_file() and (not extractor.outputs or score_file.is_file()):
        scores = np.load(score_file, allow_pickle=False) if extractor.outputs else None
        return np.load(feat_file, allow_pickle=False), scores
    net = getattr(extractor, "net", None)
    if net is not None:
        net.to(device)
    feats, scores_list = [], []
    with ThreadPoolExecutor(workers) as pool, torch.no_grad():
        prepared = pool.map(lambda i: extractor.prepare(images.load(i)), range(len(images)))
        bar = tqdm(
            total=len(images),
            desc=f"{extractor.name} features ({images.name})",
            unit="img",
            dynamic_ncols=True,
        )
        chunk: list[torch.Tensor] = []
        for tensor in prepared:
            chunk.append(tensor)
            if len(chunk) == batch:
                _run(extractor, chunk, device, feats, scores_list)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            _run(extractor, chunk, device, feats, scores_list)
            bar.update(len(chunk))
        bar.close()
    features = np.concatenate(feats).astype(np.float32)
    scores = np.concatenate(scores_list).astype(np.float32) if scores_list else None
    folder.mkdir(parents=True, exist_ok=True)
    np.save(feat_file, features)
    if scores is not None:
        np.save(score_file, scores)
    return features, scores


def _run(extractor: Extractor, chunk: list[torch.Tensor], device: str, feats: list, scores: list) -> None:
    f, s = extractor.forward(torch.stack(chunk).to(device))
    feats.append(f.float().cpu().numpy())
    if s is not None:
        scores.append(s.float().cpu().numpy())
