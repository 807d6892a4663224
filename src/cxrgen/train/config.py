"""`cxrgen train` settings. Presets (src/cxrgen/presets/train-*.yaml) sit between the defaults and a user's YAML."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from ..config import ConfigError, merge, option, read_yaml, with_groups
from ..model.loading import ModelConfig
from .methods import METHODS

PRESETS = (
    "cpu-smoke",
    "gpu-8gb",
    "gpu-16gb",
    "gpu-24gb",
    "gpu-80gb",
    "sdxl-12gb",
    "sdxl-80gb",
    "sd35m-16gb",
    "sd35m-24gb",
    "sd35m-80gb",
)
BIRD_PROMPT = "a bird sitting on a tree"  # the original paper's test for forgetting


@dataclass
class PriorConfig:
    enabled: bool = option(False, "DreamBooth prior preservation with class images from the base model")
    class_prompt: str = option("a photo", "prompt of the class images (what the model should not forget)")
    num_images: int = option(100, "number of class images (generated once, cached and reused)")
    loss_weight: float = option(1.0, "weight of the prior-preservation loss")
    steps: int = option(25, "sampling steps for class images")
    guidance: float = option(7.5, "guidance scale for class images")
    folder: str | None = option(
        None, "where class images live (default: a cache folder keyed by model and prompt)", path=True
    )


@dataclass
class OptimConfig:
    learning_rate: float = option(1e-4, "learning rate (LoRA ~1e-4, full fine-tuning ~5e-6)")
    text_encoder_lr: float | None = option(None, "text-encoder learning rate (default: learning_rate)")
    optimizer: Literal["adamw", "adamw8bit"] = option("adamw", "AdamW, or 8-bit AdamW (bitsandbytes, GPU)")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = option("constant_with_warmup", "learning-rate schedule")
    warmup_steps: int = option(0, "linear warmup steps")
    max_grad_norm: float | None = option(1.0, "clip gradients to this norm (none: no clipping)")


@dataclass
class TrainSettings:
    data: str = option(help="prepared dataset folder (<data>/<split>/metadata.jsonl)", path=True)
    out: str = option(help="run folder: checkpoints, samples, logs, final weights", path=True)
    model: ModelConfig = option(factory=lambda: ModelConfig(base=""), help="base model")
    method: str = option("lora", f"training method, a registered one: {', '.join(METHODS)}")
    prior: PriorConfig = option(factory=PriorConfig, help="prior preservation")
    optim: OptimConfig = option(factory=OptimConfig, help="optimizer and schedule")
    split: str = option("train", "split to train on")
    val_split: str | None = option("val", "split for validation loss (none: skip)")
    text_column: str = option("text", "metadata field holding the prompt")
    resolution: int | None = option(None, "training resolution (default: the dataset's image size)")
    batch_size: int = option(1, "images per device per step")
    grad_accum: int = option(1, "gradient accumulation steps")
    max_steps: int = option(1000, "optimizer steps")
    seed: int = option(0, "seed: data order, noise and timesteps are functions of (seed, step)")
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", "mixed precision on GPU")
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory, ~30% slower)"
    )
    attention: Literal["sdpa", "xformers"] = option("sdpa", "attention kernel: PyTorch SDPA or xformers")
    compile: bool = option(False, "torch.compile the UNet (minutes to compile; faster steps after)")
    channels_last: bool = option(True, "on a GPU, keep UNet activations channels-last (faster convolutions)")
    cache_latents: bool = option(True, "encode images with the VAE once and reuse the latents")
    cache_text: bool = option(True, "encode prompts once when the text encoder is frozen")
    cache_dir: str | None = option(None, "cache folder (default: $CXRGEN_CACHE or ~/.cache/cxrgen)", path=True)
    long_prompts: bool = option(False, "encode prompts beyond 77 tokens in 77-token windows")
    snr_gamma: float | None = option(None, "min-SNR loss weighting gamma (5.0 is common; none: off); SD 1/2, SDXL")
    flow_weighting: Literal["logit_normal", "mode", "cosmap", "sigma_sqrt", "uniform"] = option(
        "logit_normal", "flow-matching families (SD 3.5): timestep density or loss weighting (SD 3's paper)"
    )
    noise_offset: float = option(0.0, "noise offset (helps very dark or bright images)")
    sample_every: int = option(250, "write a sample grid every N steps (0: only at the end; -1: never)")
    sample_prompts: list[str] = option([], "prompts for sample grids (default: four from the val split + a bird)")
    sample_seeds: list[int] = option([0, 1], "seeds: one grid column per seed")
    sample_steps: int = option(25, "sampling steps for sample grids")
    guidance: float = option(7.5, "guidance scale for sample grids")
    val_every: int = option(250, "validation loss every N steps (0: only at the end; -1: never)")
    val_images: int = option(64, "validation images (each at fixed timesteps and noise)")
    checkpoint_every: int = option(500, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = option(3, "keep the last K checkpoints")
    resume: str | None = option(None, "'latest' or a checkpoint folder to resume from", path=True)
    log_every: int = option(10, "logged scalars (loss, lr, speed, memory) every N steps")
    report_to: list[str] = option(
        ["tensorboard"],
        "experiment trackers, through accelerate: tensorboard (in <out>/logs), wandb, mlflow, ..., all (every one "
        "installed) or none; metrics.jsonl is always written",
    )
    push_to_hub: str | None = option(
        None, "after training, upload the weights, model card and samples to this Hugging Face Hub repo (user/name)"
    )
    hub_private: bool = option(False, "with --push-to-hub: create the repo private")
    workers: int = option(2, "data-loading worker threads when latents are not cached")
    peak_tflops: float | None = option(None, "accelerator peak for MFU (default: known GPUs, e.g. H100 790)")

    def __post_init__(self) -> None:
        if not self.model.base:
            raise ConfigError(
                "--model.base is required: a hub id or a local diffusers folder (cxrgen make-tiny-model --out DIR)"
            )
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "keep_checkpoints",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.resolution is not None and self.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8, not {self.resolution}")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is not a training method; choose one of {', '.join(METHODS)}")
        METHODS[self.method].check_config(self)


# each training method's options are a group of their own: --lora.rank, --full.ema, ...
TrainConfig = with_groups(TrainSettings, METHODS.option_groups(lambda method: method.help))


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    with resources.as_file(resources.files("cxrgen.presets") / f"train-{name}.yaml") as path:
        return read_yaml(path)


def layered(values: dict, preset: str | None) -> dict:
    """Preset under the user's values."""
    return merge(preset_values(preset), values) if preset else values
