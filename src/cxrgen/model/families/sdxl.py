"""SDXL: two CLIP text encoders (ViT-L and OpenCLIP ViT-bigG, penultimate layers side by side), the second's
pooled embedding, and size and crop conditioning, on a larger UNet (1024 px)."""

from __future__ import annotations

import re
from typing import Any

import torch

from .architectures import CLIP_G, CLIP_IDS, CLIP_L, SD_VAE, TINY_CLIP, TINY_VAE_SHAPE
from .base import FAMILIES, Conditioning
from .clip import ClipUNetFamily

SDXL_UNET = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size/crop numbers x 256 + CLIP-G's pooled 1280
)
ARCHS: dict[str, dict[str, Any]] = {
    # SDXL base 1.0 (2.6 B UNet parameters)
    "sdxl": {
        "unet": SDXL_UNET,
        "te1": CLIP_L,
        "te2": CLIP_G,
        "vae": {**SD_VAE, "scaling_factor": 0.13025, "force_upcast": True},
    },
    # SDXL's widths, blocks and encoders' widths, one transformer layer per block and two per encoder: a step of
    # the real architecture's shape that runs on a CPU (train_speed.py)
    "reduced": {
        "unet": {**SDXL_UNET, "layers_per_block": 1, "transformer_layers_per_block": (1, 1, 1)},
        "te1": {**CLIP_L, "num_hidden_layers": 2},
        "te2": {**CLIP_G, "num_hidden_layers": 2},
        "vae": {**SD_VAE, "scaling_factor": 0.13025, "force_upcast": True},
    },
    # seconds on a CPU: tests and the demo
    "tiny": {
        "unet": {
            **SDXL_UNET,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 1),
            "attention_head_dim": (2, 4),
            "cross_attention_dim": 64,
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "norm_num_groups": 8,
        },
        "te1": TINY_CLIP,
        "te2": TINY_CLIP,
        "vae": {**SD_VAE, **TINY_VAE_SHAPE, "scaling_factor": 0.13025},
    },
}
SDXL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


class StableDiffusionXL(ClipUNetFamily):
    name = "sdxl"
    help = "SDXL 1.0 (two CLIP text encoders, size conditioning, 1024 px)"
    pipeline_class = "StableDiffusionXLPipeline"
    tokenizers = ("tokenizer", "tokenizer_2")
    text_encoders = ("text_encoder", "text_encoder_2")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    penultimate = True
    pooled = True
    unused_text_layers = True  # CLIP-L's last layer: SDXL reads its penultimate one, and not its pooled output
    archs = ("tiny", "reduced", "sdxl")
    # the invisible watermark would change pixels; cxrgen marks its images in their metadata instead
    pipeline_extras = {"add_watermarker": False}

    def predict(
        self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, resolution: int
    ) -> torch.Tensor:
        # original size, crop's top-left corner, target size: a whole square image at the training resolution,
        # as the pipeline asks by default at that size
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=cond.embeds.dtype)
        added = {"text_embeds": cond.pooled, "time_ids": time_ids.to(noisy.device).repeat(noisy.shape[0], 1)}
        return denoiser(noisy, timesteps, cond.embeds, added_cond_kwargs=added).sample

    def kohya_keys(self, state: dict[str, Any], denoiser_config: Any) -> dict[str, Any]:
        """kohya's SDXL files name the UNet's transformers by the original (SGM) layout: input_blocks.<n>.1,
        middle_block.1, output_blocks.<n>.1, where a level holds layers_per_block blocks (plus a downsampler going
        down, one more block going up)."""
        per_level = denoiser_config.layers_per_block + 1

        def sgm(key: str) -> str:
            key = re.sub(
                r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_",
                lambda m: f"lora_unet_input_blocks_{1 + int(m[1]) * per_level + int(m[2])}_1_",
                key,
            )
            key = re.sub(
                r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_",
                lambda m: f"lora_unet_output_blocks_{int(m[1]) * per_level + int(m[2])}_1_",
                key,
            )
            return key.replace("lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_", 1)

        return {sgm(k): v for k, v in state.items()}

    def kohya_version(self, components: Any) -> str:
        return "sdxl_base_v1-0"

    def default_size(self, arch: str) -> int:
        return {"tiny": 64, "reduced": 256}.get(arch, 1024)

    def random_pipeline(self, arch: str, image_size: int, seed: int, prediction_type: str) -> Any:
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from ...tokens import clip_tokenizer

        spec = ARCHS[arch]
        scale = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**spec["unet"], "sample_size": image_size // scale})
        vae = AutoencoderKL(**{**spec["vae"], "sample_size": image_size})
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_IDS, **spec["te1"], pad_token_id=49407))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_IDS, **spec["te2"], pad_token_id=0))
        scheduler = EulerDiscreteScheduler.from_config({**SDXL_SCHEDULER, "prediction_type": prediction_type})
        parts = {
            "tokenizer": clip_tokenizer(),
            "tokenizer_2": clip_tokenizer(pad_token="!"),  # SDXL's second tokenizer pads with "!"
            "text_encoder": te1,
            "text_encoder_2": te2,
            "vae": vae,
            "unet": unet,
        }
        return self.pipeline(parts, scheduler)


FAMILIES.register(StableDiffusionXL())
