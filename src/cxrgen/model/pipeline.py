"""The one place a diffusers Stable Diffusion pipeline is assembled from its parts (no safety checker: the
images are radiographs, and the checker would only blank them)."""

from __future__ import annotations

from typing import Any


def sd_pipeline(tokenizer: Any, text_encoder: Any, vae: Any, unet: Any, scheduler: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
