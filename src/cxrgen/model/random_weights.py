"""Models built offline, for tests, the demo and benchmarks: a tiny random Stable Diffusion pipeline, a small one
that learns phantom findings on a CPU, or the real SD 1.5 architecture with random weights for speed and memory work;
and random LoRA files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError, option
from ..tokens import clip_tokenizer
from .families import FAMILIES
from .families.architectures import CLIP_IDS, CLIP_L, SD_VAE, TINY_VAE_SHAPE
from .loading import ModelConfig, load_components
from .lora import save_lora_weights

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
}

SD15 = {
    "unet": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "vae": {**SD_VAE, "sample_size": 512, "scaling_factor": 0.18215},
    "text": {**CLIP_IDS, **CLIP_L, "pad_token_id": 49407},
}

TINY = {
    "unet": dict(
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "vae": {**SD_VAE, **TINY_VAE_SHAPE, "scaling_factor": 0.18215},
    "text": {
        **CLIP_IDS,
        **CLIP_L,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 64,
        "pad_token_id": 49407,
    },
}


# Tiny's widths with a third level: its 4x4 bottleneck sees the whole latent, so it can place a finding on the
# side its prompt names (the learning benchmark), at about the tiny model's cost.
SMALL = {
    "unet": dict(
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "vae": TINY["vae"],
    "text": TINY["text"],
}
ARCHES = {"tiny": TINY, "small": SMALL, "sd15": SD15}


def build_pipeline(
    arch: Literal["tiny", "small", "sd15"] = "tiny",
    image_size: int = 64,
    seed: int = 0,
    prediction_type: str = "epsilon",
) -> Any:
    """A StableDiffusionPipeline with random weights and the exact CLIP tokenizer, built without downloads."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHES[arch]
    vae_factor = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    if image_size % (vae_factor * 4):
        raise ConfigError(f"--image-size must be a multiple of {vae_factor * 4} for the {arch} model")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**spec["unet"], "sample_size": image_size // vae_factor})
    vae = AutoencoderKL(**{**spec["vae"], "sample_size": image_size})
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text"]))
    scheduler = PNDMScheduler.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction_type})  # as SD 1.5 ships
    parts = {"tokenizer": clip_tokenizer(), "text_encoder": text_encoder, "vae": vae, "unet": unet}
    return FAMILIES["sd"].pipeline(parts, scheduler)


ALL_ARCHS = tuple(dict.fromkeys(arch for family in FAMILIES.values() for arch in family.archs))


@dataclass
class TinyModelConfig:
    out: str = option(help="folder to write the diffusers pipeline to")
    family: str = option("sd", f"model family: {', '.join(FAMILIES)}")
    arch: str = option(
        "tiny",
        "tiny (seconds on a CPU); sd: small (learns phantom findings on a CPU) or sd15 (the SD 1.5 architecture); "
        "sdxl and sd3: reduced (the real widths, a few layers: CPU benchmarks), sdxl or sd35m (the real one)",
    )
    image_size: int | None = option(None, "training resolution the model is sized for (default: the arch's)")
    prediction_type: Literal["epsilon", "v_prediction"] = option("epsilon", "what the UNet predicts")
    seed: int = option(0, "seed of the random weights")

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"--family {self.family!r}: choose one of {', '.join(FAMILIES)}")
        archs = FAMILIES[self.family].archs
        if self.arch not in archs:
            raise ConfigError(f"--arch {self.arch!r} is not a {self.family} architecture; choose {', '.join(archs)}")


Config = TinyModelConfig


def make_tiny_model(config: TinyModelConfig) -> Path:
    """Write the pipeline folder; returns it."""
    out = Path(config.out)
    family = FAMILIES[config.family]
    size = config.image_size or family.default_size(config.arch)
    pipe = family.random_pipeline(config.arch, size, config.seed, config.prediction_type)
    pipe.save_pretrained(out, safe_serialization=True)
    info = {"family": config.family, "arch": config.arch, "image_size": size, "seed": config.seed}
    (out / "cxrgen_model.json").write_text(json.dumps({**info, "random_weights": True}, indent=2))
    return out


run = make_tiny_model


def summarize(out: Path) -> int:
    info = json.loads((out / "cxrgen_model.json").read_text())
    family = info.get("family", "sd")
    denoiser = FAMILIES[family].denoiser
    params = sum(v.numel() for v in _tensors(out / denoiser).values())
    print(f"wrote a random {family} {info['arch']} pipeline ({denoiser}: {params / 1e6:.1f} M parameters) to {out}")
    return 0


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def make_random_lora(
    model: str | Path, out: str | Path, rank: int = 4, scale: float = 0.3, text_encoder: bool = False
) -> Path:
    """A LoRA file for `model`'s denoiser (its family's default targets) and, with `text_encoder`, its CLIP text
    encoders, with random A and B (a trained one starts from B = 0), so that applying it visibly changes the
    images: for tests and benchmarks."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    m = load_components(ModelConfig(base=str(model)))
    family = m.family
    generator = torch.Generator().manual_seed(0)

    def layers(module: Any, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
        module.add_adapter(LoraConfig(r=rank, target_modules=list(targets)))
        state = get_peft_model_state_dict(module, save_embedding_layers=False)
        return {key: torch.randn(value.shape, generator=generator) * scale for key, value in state.items()}

    adapted = {family.denoiser: layers(m.denoiser, family.lora_targets)}
    if text_encoder:
        for name in family.trainable_text_encoders:
            adapted[name] = layers(m.parts[name], family.text_lora_targets)
    save_lora_weights(family, Path(out), adapted)
    return Path(out) / "pytorch_lora_weights.safetensors"
