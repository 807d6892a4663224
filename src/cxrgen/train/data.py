"""Training data: a prepared split (metadata.jsonl + PNGs) and a deterministic order of its images.

The order is a pure function of (seed, position): epoch e is a seeded permutation, and optimizer step s on
process r reads a fixed slice of that stream. Resuming at step s therefore needs no data-loader state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..contracts import metadata_path
from ..fileio import stat_digest


class DataError(ValueError):
    """The prepared dataset is missing, empty or lacks a field; the message says what to do."""


@dataclass
class PreparedSplit:
    folder: Path
    files: list[str]
    prompts: list[str]
    rows: list[dict]
    digest: str  # sha256 of metadata.jsonl: the data's identity in caches and provenance

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def load(cls, data: str | Path, split: str, text_column: str = "text") -> PreparedSplit:
        folder = Path(data) / split
        meta = metadata_path(data, split)
        if not meta.is_file():
            hint = " (run `cxrgen prepare` first)" if not Path(data).exists() else ""
            raise DataError(f"no {split} split: {meta} does not exist{hint}")
        raw = meta.read_bytes()
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        if not rows:
            raise DataError(f"{meta} has no images")
        missing = [i for i, r in enumerate(rows) if text_column not in r]
        if missing:
            fields = ", ".join(sorted(rows[missing[0]]))
            raise DataError(
                f"{meta} line {missing[0] + 1} has no '{text_column}' field (it has: {fields}); set --text-column"
            )
        if any("file_name" not in r for r in rows):
            raise DataError(f"{meta} has rows without file_name")
        return cls(
            folder,
            [r["file_name"] for r in rows],
            [str(r[text_column]) for r in rows],
            rows,
            hashlib.sha256(raw).hexdigest(),
        )

    def files_digest(self) -> str:
        """The images' sizes and modification times: re-preparing into the same folder with other image settings
        rewrites the PNGs but not metadata.jsonl, and cached latents must not outlive them."""
        return stat_digest((self.folder / name for name in self.files), root=self.folder)

    def image(self, index: int, resolution: int) -> torch.Tensor:
        """(3, resolution, resolution) in [-1, 1]: grayscale radiographs become three equal channels. No flips:
        a mirrored chest puts the heart on the wrong side."""
        path = self.folder / self.files[index]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (resolution, resolution):
                    im = _center_square(im).resize((resolution, resolution), Image.Resampling.LANCZOS)
                pixels = np.asarray(im, dtype=np.float32)
        except OSError as exc:
            raise DataError(f"cannot read training image {path}: {exc}") from exc
        return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0

    def native_resolution(self) -> int:
        with Image.open(self.folder / self.files[0]) as im:
            return min(im.size)


def _center_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    return im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))


class IndexStream:
    """An endless, seeded sequence of dataset indices: epoch after epoch of permutations."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=g).tolist()
            self._epoch = epoch
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        return [self._permutation(p // self.size)[p % self.size] for p in range(start, start + count)]


def step_seed(seed: int, step: int, micro: int, rank: int, stream: int = 0) -> int:
    """The seed of everything random in one micro-step (noise, timesteps, latent sampling, dropout)."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
