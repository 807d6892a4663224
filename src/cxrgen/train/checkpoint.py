"""Checkpoints that survive a kill at any moment, and resume that reproduces an uninterrupted run.

A checkpoint is a folder `step-NNNNNNN/` holding the trainable weights (safetensors), the optimizer and LR
schedule (tensors and numbers, loaded with `weights_only=True`, never arbitrary pickles), the EMA weights and a
`state.json`. It is written under a temporary name and renamed into place in one step, so a folder with the
final name is always complete. Data order, noise and dropout are functions of (seed, step): nothing else needs
saving for an exact resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


class CheckpointStore:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def complete(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [
            p
            for p in self.folder.iterdir()
            if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()
        ]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def clean_partial(self) -> None:
        """Remove folders left by a write that was killed."""
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)

    def save(
        self,
        step: int,
        trainable: dict[str, torch.Tensor],
        optimizer: Any,
        scheduler: Any,
        ema: dict[str, torch.Tensor] | None,
        state: dict[str, Any],
    ) -> Path:
        target = self.folder / checkpoint_name(step)
        tmp = self.folder / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in trainable.items()},
            tmp / "trainable.safetensors",
        )
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if ema is not None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        if target.exists():  # the same step saved twice (e.g. a resumed run's final save)
            shutil.rmtree(target)
        os.replace(tmp, target)
        self._prune()
        return target

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def resolve(folder: Path, resume: str) -> Path:
    """'latest' or an explicit checkpoint folder."""
    if resume == "latest":
        found = CheckpointStore(folder, 1).latest()
        if found is None:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint in {folder}")
        return found
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no state.json)")
    return path


def load(path: Path) -> dict[str, Any]:
    return {
        "trainable": load_file(path / "trainable.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        "ema": load_file(path / "ema.safetensors") if (path / "ema.safetensors").is_file() else None,
        "state": json.loads((path / "state.json").read_text()),
    }
