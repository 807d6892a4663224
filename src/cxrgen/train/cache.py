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
from ..model.families import Conditioning


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
        self.writer = writer

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


def sample_latents(params: torch.Tensor, generator: torch.Generator, scale: float, shift: float = 0.0) -> torch.Tensor:
    """Sample from cached VAE Gaussians (mean | log-variance on the channel axis), like latent_dist.sample(), and
    normalise as the family does ((z - shift) * scale; SD 3's VAE has a shift)."""
    mean, logvar = params.float().chunk(2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    z = mean + std * eps
    return (z - shift) * scale if shift else z * scale


class TextCache:
    """The conditioning of each distinct prompt, encoded alone: its token embeddings as rows of one array (a
    prompt's rows follow one another) and, for families that have one, its pooled embedding in a second. A batch
    pads shorter prompts with the rows of the empty prompt, which are the empty windows that `encode` pads with, so
    a batch reads as `encode` would make it. Padding every prompt to the longest one's windows instead (up to 15
    for PadChest's whole reports kept for long-prompt encoding) would store mostly copies of the empty window:
    280 GB rather than 25 GB for PadChest with SD 1.5."""

    def __init__(self, components: Any, prompts: list[str], long: bool, store: ArrayCache):
        self.components = components
        self.long = long
        self.store = store
        self.pooled_store = ArrayCache(store.path.parent, f"{store.path.stem}-pooled", store.writer)
        self.prompts = ["", *[p for p in prompts if p]]  # the empty prompt first: the padding
        self.index = {p: i for i, p in enumerate(self.prompts)}
        family = components.family
        self.windows = [family.windows(components.tokenizers, p, long) for p in self.prompts]
        self.spans: dict[str, tuple[int, int]] = {}  # prompt -> (first row, rows), known once filled or opened
        self.array: np.ndarray | None = None
        self.pooled: np.ndarray | None = None

    def _layout(self, rows_per_window: int) -> None:
        row = 0
        for prompt, windows in zip(self.prompts, self.windows, strict=True):
            self.spans[prompt] = (row, windows * rows_per_window)
            row += windows * rows_per_window

    def fill(self, batch: int = 32) -> None:
        """Encode every prompt; prompts of one window count are encoded together (no padding, so each reads as
        encoded alone)."""
        probe = self.components.encode([""], self.long)
        rows_per_window, width = probe.embeds.shape[1], probe.embeds.shape[2]
        self._layout(rows_per_window)
        total = sum(count for _, count in self.spans.values())
        self.store.create(total, (width,))
        if probe.pooled is not None:
            self.pooled_store.create(len(self.prompts), (probe.pooled.shape[1],))
        seq = np.lib.format.open_memmap(self.store.filling, mode="r+")
        pooled = np.lib.format.open_memmap(self.pooled_store.filling, mode="r+") if probe.pooled is not None else None
        groups: dict[int, list[int]] = {}
        for i, windows in enumerate(self.windows):
            groups.setdefault(windows, []).append(i)
        todo = [group[k : k + batch] for group in groups.values() for k in range(0, len(group), batch)]
        for chunk in tqdm(todo, desc="text embeddings", unit="batch", dynamic_ncols=True):
            with torch.no_grad():
                cond = self.components.encode([self.prompts[i] for i in chunk], self.long)
            embeds = cond.embeds.to("cpu", torch.float32).numpy().astype(np.float16)
            for j, i in enumerate(chunk):
                start, count = self.spans[self.prompts[i]]
                seq[start : start + count] = embeds[j]
            if pooled is not None:
                pooled[chunk] = cond.pooled.to("cpu", torch.float32).numpy().astype(np.float16)
        seq.flush()
        info = {"prompts": len(self.prompts), "rows": total, "rows_per_window": rows_per_window}
        info["pooled"] = pooled is not None
        if pooled is not None:
            pooled.flush()
            self.pooled_store.mark_complete(info)
        self.store.mark_complete(info)

    def _open(self) -> None:
        self.array = self.store.open()
        info = json.loads(self.store.marker.read_text())
        if not self.spans:
            self._layout(int(info["rows_per_window"]))
        if info.get("pooled"):
            if not self.pooled_store.complete:
                raise RuntimeError(f"{self.pooled_store.path} is missing: delete {self.store.marker} to re-encode")
            self.pooled = self.pooled_store.open()

    def conditioning(self, prompts: list[str]) -> Conditioning:
        """The batch's conditioning (float32, on the CPU), each prompt padded with the empty prompt's rows to the
        batch's longest, as `encode` pads a batch."""
        if self.array is None:
            self._open()
        assert self.array is not None
        empty_start, empty_rows = self.spans[""]
        spans = [self.spans[p] for p in prompts]
        longest = max(count for _, count in spans)
        rows = np.array(
            [
                [*range(start, start + count)] + [empty_start + k % empty_rows for k in range(longest - count)]
                for start, count in spans
            ]
        )
        flat = rows.reshape(-1)
        order = np.argsort(flat, kind="stable")  # a memory map reads ascending rows fastest
        gathered = np.empty((flat.size, self.array.shape[1]), dtype=np.float32)
        gathered[order] = self.array[flat[order]]
        embeds = torch.from_numpy(gathered.reshape(len(prompts), longest, -1))
        pooled = None
        if self.pooled is not None:
            pooled = torch.from_numpy(np.asarray(self.pooled[[self.index[p] for p in prompts]], dtype=np.float32))
        return Conditioning(embeds, pooled)
