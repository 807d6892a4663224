"""Loading Stable Diffusion components (hub id or local folder, safetensors only by default), and building
models offline: a tiny random pipeline for tests and the demo, or the real SD 1.5 architecture with random weights
for speed and memory work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .config import ConfigError, option
from .fileio import cache_root, stat_digest, write_text
from .tokens import CLIP_WINDOW, clip_tokenizer

log = logging.getLogger(__name__)
COMPONENTS = ("unet", "vae", "text_encoder")


class ModelError(RuntimeError):
    """A base model cannot be loaded; the message says why and what to do."""


@dataclass
class ModelConfig:
    base: str = option(
        help="base model: hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local diffusers folder"
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit)")
    variant: str | None = option(None, "weight variant to load, e.g. fp16")
    allow_pickle: bool = option(False, "also load .bin/.ckpt weights (pickles: only for files you trust)")
    prediction_type: Literal["epsilon", "v_prediction"] | None = option(
        None, "override the scheduler's prediction type (default: read from the model's scheduler config)"
    )

    def identity(self) -> str:
        """The base model's identity (see model_identity) with the overrides that change what it computes."""
        overrides = "".join(f"+{v}" for v in (self.variant, self.prediction_type) if v)
        return model_identity(self.base, self.revision) + overrides


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any  # the training (DDPM) noise scheduler
    source: str

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _check_local(folder: Path, allow_pickle: bool) -> None:
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder} is not a diffusers model folder (no model_index.json)")
    for name in COMPONENTS:
        sub = folder / name
        if not sub.is_dir():
            raise ModelError(f"{folder} has no {name}/ folder")
        if not allow_pickle and not any(sub.glob("*.safetensors")):
            pickles = [p.name for p in sub.iterdir() if p.suffix in (".bin", ".ckpt", ".pt")]
            what = f" (it has {', '.join(pickles)})" if pickles else ""
            raise ModelError(
                f"{sub} has no .safetensors weights{what}. Convert them to safetensors, or pass "
                "--model.allow-pickle to load pickled weights you trust."
            )


def load_components(config: ModelConfig, dtype: torch.dtype = torch.float32) -> Components:
    """Tokenizer, text encoder, VAE, UNet and DDPM scheduler of a Stable Diffusion 1.x/2.x model."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(config.base).expanduser()
    if local.exists():
        _check_local(local, config.allow_pickle)
    kwargs: dict[str, Any] = {"revision": config.revision, "use_safetensors": not config.allow_pickle}
    if config.variant:
        kwargs["variant"] = config.variant
    base = str(local) if local.exists() else config.base
    try:
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=config.revision)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", torch_dtype=dtype, **kwargs)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, **kwargs)
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=config.revision)
    except (OSError, ValueError) as exc:
        hint = (
            ""
            if local.exists()
            else " For offline use give a local folder (`cxrgen make-tiny-model --out DIR` writes one)."
        )
        raise ModelError(f"cannot load base model {config.base}: {exc}{hint}") from exc
    if config.prediction_type:
        scheduler.register_to_config(prediction_type=config.prediction_type)
    return Components(tokenizer, text_encoder, vae, unet, scheduler, base)


def weights_digest(folder: str | Path) -> str:
    """A short content hash of a model folder's weights and configs. Hashing an SD folder (several GB, with its
    variants) takes seconds in every process of every run, so the digest is remembered in the cache folder under
    the files' names, sizes and modification times, and recomputed when any of them changes."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".txt")
    )
    memo = cache_root() / "model-digests" / f"{stat_digest(files, root=folder)}.txt"
    with contextlib.suppress(OSError):
        known = memo.read_text().strip()
        if len(known) == 16:
            return known
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    value = digest.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run the hashing
        write_text(memo, value)
    return value


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local hub-cache folder of a repo at a revision, named by its commit hash; None when it is not cached
    (never a download)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid repo id
        return None


def model_identity(base: str, revision: str | None = None) -> str:
    """What identifies a base model in cache keys and provenance: a content hash for a local folder; for a hub id,
    the commit its cached files came from (a branch such as 'main' moves, a commit does not)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return f"{path.name}@{weights_digest(path)}"
    snapshot = hub_snapshot(base, revision)
    return f"{base}@{snapshot.name if snapshot is not None else revision or 'main'}"


# -- building models offline -----------------------------------------------------------------------------------

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
    "vae": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
        scaling_factor=0.18215,
    ),
    "text": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    ),
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
    "vae": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8,
        scaling_factor=0.18215,
    ),
    "text": dict(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    ),
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
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
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
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@dataclass
class TinyModelConfig:
    out: str = option(help="folder to write the diffusers pipeline to")
    arch: Literal["tiny", "small", "sd15"] = option(
        "tiny",
        "tiny (seconds on a CPU), small (learns phantom findings on a CPU), or sd15 (the SD 1.5 architecture)",
    )
    image_size: int = option(64, "training resolution the model is sized for (512 for sd15)")
    prediction_type: Literal["epsilon", "v_prediction"] = option("epsilon", "what the UNet predicts")
    seed: int = option(0, "seed of the random weights")


def make_tiny_model(config: TinyModelConfig) -> Path:
    out = Path(config.out)
    pipe = build_pipeline(config.arch, config.image_size, config.seed, config.prediction_type)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "cxrgen_model.json").write_text(
        json.dumps(
            {
                "arch": config.arch,
                "image_size": config.image_size,
                "seed": config.seed,
                "random_weights": True,
            },
            indent=2,
        )
    )
    n = sum(p.numel() for p in pipe.unet.parameters())
    print(f"wrote a random {config.arch} Stable Diffusion pipeline ({n / 1e6:.1f}M UNet parameters) to {out}")
    return out


def make_random_lora(
    model: str | Path, out: str | Path, rank: int = 4, scale: float = 0.3, text_encoder: bool = False
) -> Path:
    """A LoRA file for `model`'s UNet attention (and text encoder) with random A and B (a trained one starts
    from B = 0), so that applying it visibly changes the images: for tests and benchmarks."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    m = load_components(ModelConfig(base=str(model)))
    generator = torch.Generator().manual_seed(0)

    def layers(module: Any, targets: list[str]) -> dict[str, torch.Tensor]:
        module.add_adapter(LoraConfig(r=rank, target_modules=targets))
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(module, save_embedding_layers=False))
        return {key: torch.randn(value.shape, generator=generator) * scale for key, value in state.items()}

    StableDiffusionPipeline.save_lora_weights(
        out,
        unet_lora_layers=layers(m.unet, ["to_q", "to_k", "to_v", "to_out.0"]),
        text_encoder_lora_layers=layers(m.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"])
        if text_encoder
        else None,
        safe_serialization=True,
    )
    return Path(out) / "pytorch_lora_weights.safetensors"


def tokenizer_window(tokenizer: Any) -> int:
    return int(getattr(tokenizer, "model_max_length", CLIP_WINDOW) or CLIP_WINDOW)


def set_offline_if_local(base: str) -> None:
    """Loading a local folder should never touch the network."""
    if Path(base).expanduser().exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
