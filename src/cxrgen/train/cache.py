"""On-disk caches of VAE latents and text embeddings, computed once and reused by later runs.

A cache is a NumPy .npy file (memory-mapped, never pickled) named by a key over everything that determines its
contents: the split's metadata hash, resolution, model identity, stacked adapters. It is complete only when its
`.json` marker exists, so a run killed while filling it recomputes it. Latents are stored as the VAE's Gaussian
parameters (mean, log-variance), and each step samples from them with its own seed, as the uncached path does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import write_json


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


class ArrayCache:
    """A (rows, ...) float16 array in `<folder>/<key>.npy`, filled batch by batch, complete once marked.

    A run fills its own copy, named by `writer` (one per run, shared by its processes), and moves it into place when
    complete: two runs that need the same cache at once (a sweep) never write into one file."""

    def __init__(self, folder: Path, key: str, writer: str = "run"):
        self.path = folder / f"{key}.npy"
        self.marker = folder / f"{key}.json"
        self.filling = folder / f".{key}.{writer}.npy"

    @property
    def complete(self) -> bool:
        return self.marker.is_file() and self.path.is_file()

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def create(self, rows: int, shape: tuple[int, ...]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(self.filling, mode="w+", dtype=np.float16, shape=(rows, *shape)).flush()

    def fill(
        self,
        compute: Callable[[list[int]], torch.Tensor],
        indices: list[int],
        batch: int,
        desc: str = "caching",
    ) -> None:
        """Compute the rows `indices` with `compute(batch_indices) -> tensor` and store them. Several processes
        may fill disjoint rows of one file."""
        out = np.lib.format.open_memmap(self.filling, mode="r+")
        for start in tqdm(range(0, len(indices), batch), desc=desc, unit="batch", dynamic_ncols=True):
            chunk = indices[start : start + batch]
            out[chunk] = compute(chunk).detach().to("cpu", torch.float32).numpy().astype(np.float16)
        out.flush()

    def mark_complete(self, info: dict) -> None:
        os.replace(self.filling, self.path)
        write_json(self.marker, info)


def sample_latents(params: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
    """Sample from cached VAE Gaussians (mean | log-variance on the channel axis), like latent_dist.sample()."""
    mean, logvar = params.float().chunk(2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return (mean + std * eps) * scale
