"""Model families. Each registers itself in its own module; importing the module here is its registration line."""

from __future__ import annotations

import json
from pathlib import Path

from . import sd, sd3, sdxl  # noqa: F401  (the registration lines)
from .base import FAMILIES, Conditioning, ModelFamily, Objective

__all__ = ["FAMILIES", "Conditioning", "ModelFamily", "Objective", "family_of_pipeline", "read_pipeline_class"]


def family_of_pipeline(class_name: str) -> ModelFamily | None:
    """The family whose diffusers pipeline is `class_name` (a model folder's model_index.json `_class_name`)."""
    for family in FAMILIES.values():
        if class_name == family.pipeline_class:
            return family
    return None


def read_pipeline_class(base: str, revision: str | None = None) -> str:
    """The pipeline class a local folder or hub repo names in its model_index.json (the hub's only when cached or
    reachable)."""
    local = Path(base).expanduser()
    if local.is_dir():
        return json.loads((local / "model_index.json").read_text())["_class_name"]
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(base, revision=revision)["_class_name"]
