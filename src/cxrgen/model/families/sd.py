"""Stable Diffusion 1.x and 2.x: one CLIP text encoder (its last layer), a UNet predicting noise or velocity."""

from __future__ import annotations

from typing import Any

import torch

from .base import FAMILIES, Conditioning
from .clip import ClipUNetFamily


class StableDiffusion(ClipUNetFamily):
    name = "sd"
    help = "Stable Diffusion 1.x / 2.x (the original paper's models)"
    pipeline_class = "StableDiffusionPipeline"
    tokenizers = ("tokenizer",)
    text_encoders = ("text_encoder",)
    trainable_text_encoders = ("text_encoder",)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    penultimate = False
    archs = ("tiny", "small", "sd15")
    # no safety checker: the images are radiographs, and the checker would only blank them
    pipeline_extras = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def predict(
        self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, resolution: int
    ) -> torch.Tensor:
        return denoiser(noisy, timesteps, cond.embeds).sample

    def kohya_keys(self, state: dict[str, Any], denoiser_config: Any) -> dict[str, Any]:
        # one text encoder is kohya's "lora_te_" ("lora_te1_" names SDXL's first of two); the UNet's module names
        # are diffusers' in kohya's SD 1.x/2.x files too
        return {k.replace("lora_te1_", "lora_te_", 1): v for k, v in state.items()}

    def kohya_version(self, components: Any) -> str:
        # SD 2.x has a 1024-wide text encoder (SD 1.x 768), and its 768 px models predict v
        if components.denoiser.config.cross_attention_dim != 1024:
            return "sd_v1"
        return "sd_v2_768_v" if components.prediction_type == "v_prediction" else "sd_v2_512"

    def default_size(self, arch: str) -> int:
        return 512 if arch == "sd15" else 64

    def random_pipeline(self, arch: str, image_size: int, seed: int, prediction_type: str) -> Any:
        from ..random_weights import build_pipeline

        return build_pipeline(arch, image_size, seed, prediction_type)  # type: ignore[arg-type]


FAMILIES.register(StableDiffusion())
