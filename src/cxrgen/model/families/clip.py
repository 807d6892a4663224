"""What the CLIP-conditioned UNet families (SD 1.x/2.x and SDXL) share: prompts read in 77-token CLIP windows
(longer ones in several windows), and the DDPM schedulers of training and sampling."""

from __future__ import annotations

from typing import Any

import torch

from ..text_encoding import chunk_token_ids, count_over, encode_windows, token_windows
from .base import Conditioning, ModelFamily, Objective
from .objectives import Denoising


class ClipUNetFamily(ModelFamily):
    denoiser = "unet"
    penultimate: bool  # which CLIP layer conditions the UNet
    pooled: bool = False  # whether the UNet also takes the last encoder's pooled embedding
    samplers = ("dpmsolver++", "ddim", "euler", "pndm")
    default_sampler = "dpmsolver++"

    def encode(
        self, tokenizers: list[Any], encoders: list[Any], prompts: list[str], long: bool, min_windows: int = 1
    ) -> Conditioning:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
            h, p = encode_windows(encoder, token_windows(tokenizer, prompts, long, min_windows), self.penultimate)
            hidden.append(h)
            pooled = p  # the last encoder's (SDXL: the second, CLIP-G, the one with a projection)
        return Conditioning(torch.cat(hidden, dim=-1), pooled if self.pooled else None)

    def windows(self, tokenizers: list[Any], prompt: str, long: bool) -> int:
        return len(chunk_token_ids(tokenizers[0], prompt, long))

    def count_cut(self, tokenizers: list[Any], prompts: list[str], long: bool) -> int:
        return 0 if long else count_over(tokenizers[0], prompts, int(tokenizers[0].model_max_length) - 2)

    def limit(self, long: bool) -> str:
        return "77 tokens"

    def training_scheduler(self, config: Any) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(config)

    def sampling_scheduler(self, name: str, config: Any) -> Any:
        from ..sampling import make_scheduler

        return make_scheduler(name, config)  # type: ignore[arg-type]

    def objective(self, scheduler: Any, settings: Any) -> Objective:
        return Denoising(scheduler, settings.snr_gamma)
