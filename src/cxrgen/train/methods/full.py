"""Full fine-tuning: the whole UNet (and the text encoder if asked), optionally with an EMA of its weights;
exported as a diffusers pipeline folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import ConfigError, option
from ...model.pipeline import sd_pipeline
from .base import METHODS, Exported, TrainingMethod


@dataclass
class FullOptions:
    train_text_encoder: bool = option(False, "also fine-tune the text encoder (RoentGen found this best)")
    ema: bool = option(False, "keep an exponential moving average of the UNet weights (saved as the final model)")
    ema_decay: float = option(0.9999, "EMA decay")


@METHODS.register
class FullMethod(TrainingMethod):
    name = "full"
    help = "full fine-tuning of the UNet (RoentGen's method)"
    Options = FullOptions
    options: FullOptions

    @classmethod
    def check_config(cls, config: Any) -> None:
        lora = getattr(config, "lora", None)
        if lora is not None and (lora.stack or lora.text_encoder):
            raise ConfigError(
                "lora.stack and lora.text_encoder apply to --method lora; use --full.train-text-encoder for full"
            )

    @property
    def trains_text_encoder(self) -> bool:
        return self.options.train_text_encoder

    def prepare(self, components: Any) -> None:
        components.unet.requires_grad_(True)
        components.text_encoder.requires_grad_(self.options.train_text_encoder)

    def wholly_trained(self, components: Any) -> list[Any]:
        return [components.unet] + ([components.text_encoder] if self.trains_text_encoder else [])

    def ema(self, components: Any, device: Any) -> Any:
        if not self.options.ema:
            return None
        from diffusers.training_utils import EMAModel

        params = [p for p in components.unet.parameters() if p.requires_grad]
        ema = EMAModel(params, decay=self.options.ema_decay, foreach=True)
        ema.to(device)
        return ema

    def export(self, out: Path, components: Any, unet: Any, text_encoder: Any, ema: Any, info: dict) -> Exported:
        if ema is not None:
            ema.copy_to([p for p in unet.parameters() if p.requires_grad])
        vae, text_encoder, unet = (_float32(x) for x in (components.vae, text_encoder, unet))
        pipe = sd_pipeline(components.tokenizer, text_encoder, vae, unet, components.scheduler)
        pipe.save_pretrained(out / "pipeline", safe_serialization=True)
        return Exported({"pipeline": str(out / "pipeline")}, "pipeline", [])


def _float32(model: Any) -> Any:
    """Saved pipelines are float32 whatever the training precision."""
    return model if next(model.parameters()).dtype == torch.float32 else model.to(torch.float32)
