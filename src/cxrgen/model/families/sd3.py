"""Stable Diffusion 3.5 (Medium, Large): an MMDiT transformer conditioned on CLIP-L and CLIP-G (penultimate
layers, pooled embeddings side by side) and T5-XXL, trained by rectified flow."""

from __future__ import annotations

from typing import Any

import torch

from ..text_encoding import count_over, encode_windows, token_windows
from .architectures import CLIP_G, CLIP_IDS, CLIP_L, SD_VAE, TINY_CLIP, TINY_VAE_SHAPE
from .base import FAMILIES, Conditioning, ModelFamily, Objective
from .objectives import RectifiedFlow

T5_TOKENS = 77  # T5 tokens read by default, as diffusers' SD 3 training script does
T5_TOKENS_LONG = 256  # with --long-prompts: the pipeline's default (T5 reads up to 512)

MEDIUM = dict(  # SD 3.5 Medium's MMDiT-X
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
SD3_VAE = dict(
    SD_VAE,
    latent_channels=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=1.5305,
    shift_factor=0.0609,
)
ARCHS: dict[str, dict[str, Any]] = {
    "sd35m": {"transformer": MEDIUM, "te1": CLIP_L, "te2": CLIP_G, "t5": T5_XXL, "vae": SD3_VAE},
    # SD 3.5 Medium's widths with two transformer blocks (one dual-attention) and two-layer encoders: a step of
    # the real architecture's shape that runs on a CPU (train_speed.py)
    "reduced": {
        "transformer": {**MEDIUM, "num_layers": 2, "dual_attention_layers": (0,)},
        "te1": {**CLIP_L, "num_hidden_layers": 2},
        "te2": {**CLIP_G, "num_hidden_layers": 2},
        "t5": {**T5_XXL, "num_layers": 2},
        "vae": SD3_VAE,
    },
    "tiny": {
        "transformer": {
            **MEDIUM,
            "num_layers": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 4,
            "joint_attention_dim": 64,
            "caption_projection_dim": 32,
            "pooled_projection_dim": 64,
            "pos_embed_max_size": 32,
            "dual_attention_layers": (0,),
        },
        "te1": TINY_CLIP,
        "te2": TINY_CLIP,
        "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"),
        "vae": {**SD3_VAE, **TINY_VAE_SHAPE},
    },
}


class StableDiffusion3(ModelFamily):
    name = "sd3"
    help = "Stable Diffusion 3.5 Medium / Large (MMDiT; CLIP-L, CLIP-G and T5; rectified flow)"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser = "transformer"
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")  # the CLIPs; T5-XXL (4.7 B) stays frozen
    # the joint attention of both streams, as diffusers' SD 3 LoRA script adapts ("attn.": not SD 3.5's second,
    # image-only attention "attn2" of its first 13 blocks)
    lora_targets = tuple(
        f"attn.{name}"
        for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    )
    samplers = ("euler", "dpmsolver++")
    default_sampler = "euler"
    archs = ("tiny", "reduced", "sd35m")
    kohya_export = False  # ComfyUI reads SD 3 LoRAs in diffusers' own format

    def encode(
        self, tokenizers: list[Any], encoders: list[Any], prompts: list[str], long: bool, min_windows: int = 1
    ) -> Conditioning:
        clip, pooled = [], []
        for tokenizer, encoder in zip(tokenizers[:2], encoders[:2], strict=True):
            h, p = encode_windows(encoder, token_windows(tokenizer, prompts, False), penultimate=True)
            clip.append(h)
            pooled.append(p)
        ids = tokenizers[2](
            prompts,
            padding="max_length",
            max_length=T5_TOKENS_LONG if long else T5_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        t5 = encoders[2](ids.to(next(encoders[2].parameters()).device))[0]
        clip_embeds = torch.cat(clip, dim=-1)
        clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5.shape[-1] - clip_embeds.shape[-1]))
        return Conditioning(torch.cat([clip_embeds, t5.to(clip_embeds.dtype)], dim=-2), torch.cat(pooled, dim=-1))

    def keep_float32(self, parts: dict[str, Any], dtype: torch.dtype) -> None:
        if dtype == torch.float16:  # T5 v1.1 overflows in float16; its outputs are cast to the CLIPs' dtype
            parts["text_encoder_3"].to(torch.float32)

    def count_cut(self, tokenizers: list[Any], prompts: list[str], long: bool) -> int:
        # T5 reads the whole prompt up to its window (CLIP reads the first 75 tokens)
        return count_over(tokenizers[2], prompts, (T5_TOKENS_LONG if long else T5_TOKENS) - 1)

    def limit(self, long: bool) -> str:
        return f"{T5_TOKENS_LONG if long else T5_TOKENS} T5 tokens"

    def predict(
        self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, resolution: int
    ) -> torch.Tensor:
        return denoiser(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=cond.embeds,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]

    def training_scheduler(self, config: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    def sampling_scheduler(self, name: str, config: Any) -> Any:
        from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

        if name == "euler":
            return FlowMatchEulerDiscreteScheduler.from_config(config)
        # DPM-Solver++ on the flow's sigmas, as diffusers runs it for flow models (Sana)
        return DPMSolverMultistepScheduler(
            num_train_timesteps=config["num_train_timesteps"],
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=config.get("shift", 1.0),
        )

    def objective(self, scheduler: Any, settings: Any) -> Objective:
        return RectifiedFlow(scheduler, settings.flow_weighting)

    def check_training(self, settings: Any) -> None:
        from ...config import ConfigError

        if settings.snr_gamma:
            raise ConfigError("--snr-gamma weights a DDPM loss; SD 3.5 trains by rectified flow: use --flow-weighting")
        if settings.model.prediction_type:
            raise ConfigError("--model.prediction-type applies to SD 1.x/2.x and SDXL; SD 3.5 predicts a flow")

    def kohya_version(self, components: Any) -> str:
        return "sd3"

    def default_size(self, arch: str) -> int:
        return {"tiny": 64, "reduced": 256}.get(arch, 1024)

    def random_pipeline(self, arch: str, image_size: int, seed: int, prediction_type: str) -> Any:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

        from ...config import ConfigError
        from ...tokens import clip_tokenizer
        from .t5_tokenizer import tiny_t5_tokenizer

        if prediction_type != "epsilon":
            raise ConfigError("--prediction-type does not apply to SD 3.5 (it predicts a flow)")
        spec = ARCHS[arch]
        scale = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
        torch.manual_seed(seed)
        tokenizer_3 = tiny_t5_tokenizer()
        parts = {
            "tokenizer": clip_tokenizer(),
            "tokenizer_2": clip_tokenizer(pad_token="!"),
            "tokenizer_3": tokenizer_3,
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_IDS, **spec["te1"], pad_token_id=49407)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_IDS, **spec["te2"], pad_token_id=0)),
            "text_encoder_3": T5EncoderModel(
                T5Config(**spec["t5"], vocab_size=len(tokenizer_3), pad_token_id=0, eos_token_id=1)
            ),
            "vae": AutoencoderKL(**{**spec["vae"], "sample_size": image_size}),
            "transformer": SD3Transformer2DModel(**{**spec["transformer"], "sample_size": image_size // scale}),
        }
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        return self.pipeline(parts, scheduler)


FAMILIES.register(StableDiffusion3())
