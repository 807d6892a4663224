"""Full fine-tuning: the whole UNet or transformer (and the CLIP text encoders if asked), optionally with an EMA
of its weights; exported as a diffusers pipeline folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import ConfigError, option
from .base import METHODS, Exported, TrainingMethod


@dataclass
class FullOptions:
    train_text_encoder: bool = option(False, "also fine-tune the CLIP text encoder(s) (RoentGen found this best)")
    ema: bool = option(
        False, "keep an exponential moving average of the UNet's or transformer's weights (saved as the final model)"
    )
    ema_decay: float = option(0.9999, "EMA decay")


@METHODS.register
class FullMethod(TrainingMethod):
    name = "full"
    help = "full fine-tuning of the UNet or transformer (RoentGen's method)"
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
        components.denoiser.requires_grad_(True)
        for name in components.family.text_encoders:
            trained = self.trains_text_encoder and name in components.family.trainable_text_encoders
            components.parts[name].requires_grad_(trained)

    def wholly_trained(self, components: Any) -> list[Any]:
        models = (components.denoiser, *components.text_encoders)
        return [m for m in models if any(p.requires_grad for p in m.parameters())]

    def ema(self, components: Any, device: Any) -> Any:
        if not self.options.ema:
            return None
        from diffusers.training_utils import EMAModel

        params = [p for p in components.denoiser.parameters() if p.requires_grad]
        ema = EMAModel(params, decay=self.options.ema_decay, foreach=True)
        ema.to(device)
        return ema

    def export(self, out: Path, components: Any, trained: dict[str, Any], ema: Any, info: dict) -> Exported:
        denoiser = trained[components.family.denoiser]
        if ema is not None:
            ema.copy_to([p for p in denoiser.parameters() if p.requires_grad])
        # saved in float32 whatever the training precision
        modules = {n: _float32(m) for n, m in {**components.parts, **trained}.items() if isinstance(m, torch.nn.Module)}
        pipe = components.pipeline(**modules)
        pipe.save_pretrained(out / "pipeline", safe_serialization=True)
        return Exported({"pipeline": str(out / "pipeline")}, "pipeline", [])


def _float32(model: Any) -> Any:
    return model if next(model.parameters()).dtype == torch.float32 else model.to(torch.float32)
