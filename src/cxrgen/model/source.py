"""What a sampler loads: a base model and the LoRAs on it, from flags or from a training run's manifest, and the
pipeline built from them. Used by generation and by evaluation's forgetting test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging

from ..config import ConfigError
from ..contracts import ContractError, RunManifest
from ..prompts import PromptConfig
from .loading import Components, ModelConfig, load_components
from .lora import load_loras
from .sampling import Sampler, make_pipeline


@dataclass
class ModelSource:
    """A model to sample from, and how it was trained to be asked."""

    base: ModelConfig
    adapters: list[tuple[str, float]]  # LoRA path or hub id, weight; applied in order
    prompts: PromptConfig | None = None  # the prompt settings training used (None: not known)
    long_prompts: bool = False
    resolution: int | None = None  # the training resolution (None: the model's own)
    data: Path | None = None  # the training data, for the vocabulary check
    trained_from: ModelConfig | None = None  # a run's own base model, when `base` is what the run exported

    @classmethod
    def from_run(cls, run_dir: str | Path, base: str | None = None) -> ModelSource:
        """A finished training run; `base` replaces the base model it trained from (e.g. a local copy)."""
        run_dir = Path(run_dir)
        if not RunManifest.path(run_dir).is_file():
            raise ConfigError(f"--run {run_dir}: no {RunManifest.FILE} (is it a finished cxrgen train run?)")
        try:
            run = RunManifest.read(run_dir)
        except ContractError as exc:
            raise ConfigError(f"--run {run_dir}: {exc}") from exc
        recorded = {**run.model, "base": _in_run(run_dir, run.model["base"])}  # run.json's paths are the run's
        model = trained_from = ModelConfig(**{**recorded, **({"base": base} if base else {})})
        if run.sample_with["base"] is not None:
            # an exported pipeline has no variant files (fp16 and the like), whatever training loaded
            model = replace(model, base=str(run_dir / run.sample_with["base"]), variant=None)
        adapters = [(_in_run(run_dir, path), float(weight)) for path, weight in run.sample_with["adapters"]]
        # a run prepared before the pseudo-label policy existed stated every label
        prompts = PromptConfig(**{"pseudo_labels": "keep", **run.prompts}) if run.prompts else None
        data = Path(_in_run(run_dir, run.data["folder"])) if run.data.get("folder") else None
        return cls(model, adapters, prompts, run.long_prompts, run.resolution, data, trained_from)

    def before_training(self) -> ModelSource:
        """The model this one was trained from: the run's base model without the run's LoRAs, asked in the base
        model's own terms (no prompt settings)."""
        return replace(self, base=self.trained_from or self.base, adapters=[], prompts=None, trained_from=None)


def _in_run(run_dir: Path, path: str) -> str:
    """A path run.json records, which is relative to the run folder when local (a hub id stays one)."""
    inside = run_dir / path
    return str(inside) if not Path(path).is_absolute() and inside.exists() else path


# (source, sampler, dtype, device, merge_loras) -> (pipeline, components, LoRAs merged): the signature of
# `load_sampling_pipeline`, which a caller keeping a model loaded between runs (the app) replaces
PipelineLoader = Callable[[ModelSource, Sampler | None, torch.dtype, Any, bool], tuple[Any, Components, bool]]


def load_sampling_pipeline(
    source: ModelSource, sampler: Sampler | None, dtype: torch.dtype, device: Any, merge_loras: bool = True
) -> tuple[Any, Components, bool]:
    """The pipeline with the source's LoRAs, on `device` in `dtype`; returns it, its components, and whether the
    LoRAs were merged into the base weights (no adapter layers left to run at each step)."""
    merge = merge_loras and bool(source.adapters)
    # merging in the sampling precision would round each LoRA update onto the base weights' bf16/fp16 grid
    # on top of the one rounding of the cast: merge at full precision, then cast once
    components = load_components(source.base, torch.float32 if merge else dtype)
    pipe = make_pipeline(components, sampler)
    quiet = diffusers_logging.get_verbosity()
    # quiet: "no text-encoder keys" for UNet-only LoRAs, and a cast warning that lists no modules
    diffusers_logging.set_verbosity_error()
    try:
        names = load_loras(pipe, source.adapters, "lora")
        if merge:
            pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
            pipe.unload_lora_weights()  # drops the adapter layers, keeps the merged weights
            pipe.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(quiet)
    components.family.keep_float32(components.parts, dtype)
    return pipe.to(device), components, merge
