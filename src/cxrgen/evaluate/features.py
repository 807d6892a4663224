"""Features of an image set, computed in batches with a progress bar and cached per folder and extractor."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import atomic_path, cache_root
from .extractors import Extractor
from .imagesets import ImageSet

# raise when reading or preprocessing changes what an extractor sees: old caches then miss
FEATURES_VERSION = 2


def extract(
    images: ImageSet,
    extractor: Extractor,
    cache_dir: str | None,
    batch: int = 32,
    device: str = "cpu",
    workers: int = 4,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(features (N, dim), classifier probabilities (N, outputs) or None), from the cache when present."""
    folder = cache_root(cache_dir) / "features"
    key = hashlib.sha256(json.dumps([FEATURES_VERSION, extractor.identity, list(extractor.outputs)]).encode())
    name = extractor.identity.replace("/", "_").replace(":", "_")
    stem = folder / f"{name}-{key.hexdigest()[:8]}-{images.digest}"
    feat_file, score_file = Path(f"{stem}.npy"), Path(f"{stem}.scores.npy")
    if feat_file.is_file() and (not extractor.outputs or score_file.is_file()):
        scores = np.load(score_file, allow_pickle=False) if extractor.outputs else None
        return np.load(feat_file, allow_pickle=False), scores
    net = getattr(extractor, "net", None)
    if net is not None:
        net.to(device)
    feats, scores_list = [], []
    bar = tqdm(total=len(images), desc=f"{extractor.name} features ({images.name})", unit="img", dynamic_ncols=True)
    with ThreadPoolExecutor(workers) as pool, torch.no_grad():
        for chunk in _prepared_batches(pool, images, extractor, batch):
            f, s = extractor.forward(torch.stack(chunk).to(device))
            feats.append(f.float().cpu().numpy())
            if s is not None:
                scores_list.append(s.float().cpu().numpy())
            bar.update(len(chunk))
    bar.close()
    features = np.concatenate(feats).astype(np.float32)
    scores = np.concatenate(scores_list).astype(np.float32) if scores_list else None
    if scores is not None:  # features last: their file is what marks the cache entry complete
        _save(score_file, scores)
    _save(feat_file, features)
    return features, scores


def _prepared_batches(
    pool: ThreadPoolExecutor, images: ImageSet, extractor: Extractor, batch: int, ahead: int = 2
) -> Iterator[list[torch.Tensor]]:
    """Batches of prepared inputs, decoded on the pool at most `ahead` batches before the network needs them
    (not all at once: at 50,000 images that would hold tens of GB while the network catches up)."""
    pending: deque[list[Future]] = deque()
    for start in range(0, len(images), batch):
        indices = range(start, min(start + batch, len(images)))
        pending.append([pool.submit(lambda i: extractor.prepare(images.load(i)), i) for i in indices])
        if len(pending) > ahead:
            yield [f.result() for f in pending.popleft()]
    while pending:
        yield [f.result() for f in pending.popleft()]


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
