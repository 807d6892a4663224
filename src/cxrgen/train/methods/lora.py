"""DreamBooth-LoRA: a trainable adapter ("cxrgen") on the denoiser's attention (and the CLIP text encoders if
asked), on top of earlier LoRAs that stay frozen adapters or are merged into the base weights; exported as diffusers
and kohya LoRA files. LoRA files themselves (loading, digests, formats) are the model package's (`model/lora.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...config import ConfigError, option
from ...model.lora import load_loras, lora_digest, save_lora_files
from .base import METHODS, Exported, TrainingMethod
from .lora_layers import adapter_state_dict, add_lora, lora_layers

log = logging.getLogger(__name__)
TRAIN = "cxrgen"  # the trained adapter's name: not "train", as adapters are submodules and Module.train exists


@dataclass
class LoraOptions:
    rank: int = option(16, "LoRA rank of the denoiser's adapter")
    alpha: float | None = option(None, "LoRA alpha (default: the rank, i.e. scale 1)")
    dropout: float = option(0.0, "dropout on the LoRA path")
    targets: list[str] = option(
        [],
        "UNet or transformer modules that get adapters, by name or last dotted parts (default: the family's: "
        "attention projections; kohya's sd-scripts adapts proj_in proj_out to_q to_k to_v to_out.0 ff.net.0.proj "
        "ff.net.2)",
    )
    text_encoder: bool = option(False, "also train LoRAs on the CLIP text encoder(s)")
    text_encoder_rank: int | None = option(None, "rank of the text-encoder adapter (default: rank)")
    text_encoder_targets: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "out_proj"], "text-encoder modules with adapters"
    )
    stack: list[str] = option(
        [], "existing LoRAs (folders or .safetensors in diffusers format) to train on top of", path=True
    )
    stack_weights: list[float] = option([], "weight of each stacked LoRA (default 1.0 each)")
    stack_mode: Literal["frozen", "merged"] = option(
        "frozen", "stacked LoRAs stay separate frozen adapters, or are merged into the base weights first"
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be at least 1, not {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), not {self.dropout}")
        if self.stack_weights and len(self.stack_weights) != len(self.stack):
            raise ConfigError(
                f"lora.stack_weights has {len(self.stack_weights)} values for {len(self.stack)} stacked LoRAs"
            )


@METHODS.register
class LoraMethod(TrainingMethod):
    name = "lora"
    help = "DreamBooth-LoRA: adapters, stacking on earlier LoRAs"
    Options = LoraOptions
    options: LoraOptions

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        o = self.options
        weights = o.stack_weights or [1.0] * len(o.stack)
        # each stacked file hashed once: cache keys and run.json both name it by this digest
        self._stacked = [
            {"path": p, "weight": w, "identity": lora_digest(p)} for p, w in zip(o.stack, weights, strict=True)
        ]

    @property
    def trains_text_encoder(self) -> bool:
        return self.options.text_encoder

    def stacked(self) -> list[dict[str, Any]]:
        return self._stacked

    def stack_identity(self) -> list[Any]:
        o = self.options
        return [*(s["identity"] for s in self.stacked()), o.stack_weights, o.stack_mode]

    def load_stack(self, components: Any) -> None:
        stack_loras(components, self.options)

    def prepare(self, components: Any) -> None:
        for model in (components.denoiser, *components.text_encoders):
            model.requires_grad_(False)
        add_trainable_lora(components, self.options)

    def resume_settings(self) -> dict[str, Any]:
        return {"--lora.alpha": self.options.alpha or self.options.rank}

    def export(self, out: Path, components: Any, trained: dict[str, Any], ema: Any, info: dict) -> Exported:
        meta = {
            "cxrgen_base_model": info["identity"],
            "cxrgen_steps": str(info["step"]),
            "ss_base_model_version": components.family.kohya_version(components),
        }
        layers = {name: adapter_state_dict(model) for name, model in trained.items()}
        files = save_lora_files(components.family, out / "lora", layers, meta, components.denoiser.config)
        stack = [(s["path"], s["weight"]) for s in self.stacked()]
        return Exported({k: str(v) for k, v in files.items()}, None, [*stack, ("lora", 1.0)])


def stack_loras(components: Any, config: LoraOptions) -> None:
    """Load the stacked LoRAs. 'merged' folds them into the base weights; 'frozen' keeps them as peft adapters that
    stay active and untrained."""
    if not config.stack:
        return
    pipe = components.pipeline()
    weights = config.stack_weights or [1.0] * len(config.stack)
    names = load_loras(pipe, list(zip(config.stack, weights, strict=True)), "stack")
    if config.stack_mode == "merged":
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
        log.info("merged %d stacked LoRA(s) into the base weights", len(names))
    else:
        log.info("stacked %d frozen LoRA(s): %s", len(names), ", ".join(config.stack))


def add_trainable_lora(components: Any, config: LoraOptions) -> None:
    """Add the "cxrgen" adapter to the denoiser (and the CLIP text encoders if asked), beside any frozen stacked
    ones, and make its parameters, and only them, trainable."""
    family = components.family
    targets = config.targets or list(family.lora_targets)
    models = [(family.denoiser, components.denoiser, targets, config.rank, config.alpha or config.rank)]
    if config.text_encoder:
        rank = config.text_encoder_rank or config.rank
        alpha = rank if config.alpha is None else config.alpha
        for name in family.trainable_text_encoders:
            models.append((name, components.parts[name], config.text_encoder_targets, rank, alpha))
    for label, model, targets, rank, alpha in models:
        try:
            added = add_lora(model, targets, TRAIN, rank, alpha, config.dropout)
        except TypeError as exc:
            raise ConfigError(f"LoRA targets {targets} of the {label}: {exc}") from exc
        if not added:
            raise ConfigError(f"no module of the {label} is named by {targets}; check the LoRA targets")
    for model in (components.denoiser, *components.text_encoders):
        model.requires_grad_(False)  # loading stacked adapters marked theirs trainable
        for _, layer in lora_layers(model):
            layer.down.requires_grad_(True)
            layer.up.requires_grad_(True)
