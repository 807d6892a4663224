"""The training monitor's answers: a run's state, its curves from metrics.jsonl, its sample grids by step and its
settings. Everything is read from the run folder, so a run still training shows its progress as it goes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from ..contracts import ContractError, RunManifest
from ..fileio import read_jsonl_lines
from ..train.running import run_state
from .folders import Folder

SAMPLE_GRID = "step-"


def run_overview(folder: Folder) -> dict[str, Any]:
    state = run_state(folder.path)
    settings = _settings(folder.path)
    return {
        "id": folder.id,
        "name": folder.name,
        "state": state.state,
        "resume": state.resume,
        "method": settings.get("method"),
        "max_steps": settings.get("max_steps"),
    }


def run_detail(folder: Folder) -> dict[str, Any]:
    path = folder.path
    series = curves(path / "metrics.jsonl")
    figures: dict[str, Any] = {}
    with contextlib.suppress(ContractError):  # a run.json being written
        figures = RunManifest.read(path).figures if RunManifest.path(path).is_file() else {}
    steps = series.get("loss/train", [])
    return {
        **run_overview(folder),
        "step": steps[-1][0] if steps else None,
        "curves": series,
        "samples": [
            {"step": int(p.stem[len(SAMPLE_GRID) :]), "url": f"/files/runs/{folder.id}/samples/{p.name}"}
            for p in sorted((path / "samples").glob(f"{SAMPLE_GRID}*.png"))
            if p.stem[len(SAMPLE_GRID) :].isdigit()
        ],
        "settings": _settings(path),
        "figures": figures,
        "card": f"/files/runs/{folder.id}/README.md" if (path / "README.md").is_file() else None,
    }


def curves(metrics: Path) -> dict[str, list[list[float]]]:
    """[step, value] pairs of each loss and the learning rate; a half-written last line (a run writing it) is
    skipped. A step logged twice keeps its later value."""
    by_name: dict[str, dict[int, float]] = {}
    rows = read_jsonl_lines(metrics) if metrics.is_file() else []
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for name, value in row.items():
            if (name == "lr" or name.startswith("loss/")) and isinstance(value, int | float):
                by_name.setdefault(name, {})[step] = float(value)
    series = {name: sorted([s, v] for s, v in values.items()) for name, values in by_name.items()}
    if series.get("loss/instance") == series.get("loss/train"):  # no prior images: the same curve twice
        series.pop("loss/instance", None)
    return series


def _settings(run: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
