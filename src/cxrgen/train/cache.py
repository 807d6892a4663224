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
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import write_json
from ..model.text_encoding import chunk_token_ids, encode_windows, window_ids


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


class TextCache:
    """Text-encoder embeddings of distinct prompts, one row per 77-token window: row 0 is the empty window that
    pads a batch's shorter prompts, and each prompt's windows follow one another. Padding every prompt to the
    longest one's windows instead (up to 15 for PadChest's whole reports kept for long-prompt encoding) would store
    mostly copies of the empty window: 280 GB rather than 25 GB for PadChest."""

    def __init__(self, tokenizer: Any, prompts: list[str], long: bool, store: ArrayCache):
        self.store = store
        windows = [np.asarray([window_ids(tokenizer, [])], dtype=np.int32)]
        self.spans: dict[str, tuple[int, int]] = {}  # prompt -> (first row, windows)
        row = 1
        for prompt in prompts:
            chunks = chunk_token_ids(tokenizer, prompt, long)
            windows.append(np.asarray([window_ids(tokenizer, chunk) for chunk in chunks], dtype=np.int32))
            self.spans[prompt] = (row, len(chunks))
            row += len(chunks)
        self.ids = np.concatenate(windows)
        self.array: np.ndarray | None = None

    def fill(self, text_encoder: Any, batch: int = 32) -> None:
        @torch.no_grad()
        def encode(rows: list[int]) -> torch.Tensor:
            return encode_windows(text_encoder, torch.from_numpy(self.ids[rows]).long()[:, None, :])

        self.store.create(len(self.ids), (self.ids.shape[1], text_encoder.config.hidden_size))
        self.store.fill(encode, list(range(len(self.ids))), batch, desc="text embeddings")
        self.store.mark_complete({"prompts": len(self.spans), "windows": len(self.ids)})

    def embeddings(self, prompts: list[str]) -> np.ndarray:
        """(batch, windows * 77, hidden) float32, each prompt padded with empty windows to the batch's longest,
        as `encode_prompts` pads a batch."""
        if self.array is None:
            self.array = self.store.open()
        spans = [self.spans[p] for p in prompts]
        n = max(count for _, count in spans)
        rows = np.array([[*range(start, start + count), *[0] * (n - count)] for start, count in spans])
        flat = rows.reshape(-1)
        order = np.argsort(flat, kind="stable")  # a memory map reads ascending rows fastest
        gathered = np.empty((flat.size, *self.array.shape[1:]), dtype=np.float32)
        gathered[order] = self.array[flat[order]]
        return gathered.reshape(len(prompts), n * self.array.shape[1], self.array.shape[2])
