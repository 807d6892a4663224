"""The model-family seam: what differs between Stable Diffusion 1.x/2.x, SDXL and SD 3.5, and nothing else.

A family is a `ModelFamily` in its own module, registered by one line (`FAMILIES.register(Family())`). It names
the diffusers pipeline and the parts it is made of, encodes prompts into its conditioning (one or more text
encoders, pooled embeddings), calls its denoiser, supplies its training objective (noise schedule, target, timestep
sampling and loss weights), its default LoRA targets and samplers, and builds random versions of itself for tests
and benchmarks. Loading, caching, training methods, checkpoints, sampling and generation are written once over this
interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...registry import Registry


@dataclass
class Conditioning:
    """What the denoiser is conditioned on for a batch of prompts: the sequence of text embeddings (batch, tokens,
    width), and for families that have one the pooled embedding (batch, width)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: Any, dtype: torch.dtype | None = None) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return Conditioning(self.embeds.to(device, dtype), pooled)

    def zeros_like(self) -> Conditioning:
        return Conditioning(
            torch.zeros_like(self.embeds), None if self.pooled is None else torch.zeros_like(self.pooled)
        )

    def pipeline_kwargs(self, negative: Conditioning) -> dict[str, torch.Tensor]:
        """The pipeline call's embedding arguments."""
        kwargs = {"prompt_embeds": self.embeds, "negative_prompt_embeds": negative.embeds}
        if self.pooled is not None and negative.pooled is not None:
            kwargs |= {"pooled_prompt_embeds": self.pooled, "negative_pooled_prompt_embeds": negative.pooled}
        return kwargs


class Objective:
    """A family's training objective for one run: how timesteps are drawn, how latents are noised, what the
    denoiser should predict, and how each image's loss is weighted."""

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def fixed_timestep(self, fraction: float) -> torch.Tensor:
        """One timestep at `fraction` of the schedule (0 clean .. 1 pure noise), for validation loss."""
        raise NotImplementedError

    def noised(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy latents, regression target)."""
        raise NotImplementedError

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ModelFamily:
    name: ClassVar[str]
    help: ClassVar[str]  # one line for --model.family
    pipeline_class: ClassVar[str]  # the diffusers pipeline, also how a model folder's family is recognised
    denoiser: ClassVar[str]  # "unet" or "transformer"
    tokenizers: ClassVar[tuple[str, ...]]
    text_encoders: ClassVar[tuple[str, ...]]
    trainable_text_encoders: ClassVar[tuple[str, ...]]  # those LoRA or full fine-tuning may train (the CLIPs)
    lora_targets: ClassVar[tuple[str, ...]]  # the denoiser's modules adapted by default
    text_lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "out_proj")
    samplers: ClassVar[tuple[str, ...]]
    default_sampler: ClassVar[str]
    archs: ClassVar[tuple[str, ...]]  # random architectures `random_pipeline` builds; the first is the tiny one
    kohya_export: ClassVar[bool] = True  # whether a kohya-style LoRA file exists for this family
    pipeline_extras: ClassVar[dict[str, Any]] = {}  # pipeline arguments for parts this tool never loads
    # set where a trainable text encoder has layers the conditioning never reads (SDXL's CLIP-L: its last layer),
    # so that several processes let those parameters go without gradients
    unused_text_layers: ClassVar[bool] = False

    @property
    def parts(self) -> tuple[str, ...]:
        """The pipeline's parts loaded from a model folder (besides the scheduler)."""
        return (*self.tokenizers, *self.text_encoders, "vae", self.denoiser)

    def pipeline(self, parts: dict[str, Any], scheduler: Any) -> Any:
        """A pipeline over these very modules."""
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        return cls(**{name: parts[name] for name in self.parts}, scheduler=scheduler, **self.pipeline_extras)

    def training_scheduler(self, config: Any) -> Any:
        raise NotImplementedError

    def sampling_scheduler(self, name: str, config: Any) -> Any:
        raise NotImplementedError

    def objective(self, scheduler: Any, settings: Any) -> Objective:
        """The objective, with the run's settings (min-SNR gamma, flow weighting scheme)."""
        raise NotImplementedError

    def check_training(self, settings: Any) -> None:
        """Raise ConfigError for training settings this family cannot honour."""

    # -- text ----------------------------------------------------------------------------------------------
    def encode(
        self, tokenizers: list[Any], encoders: list[Any], prompts: list[str], long: bool, min_windows: int = 1
    ) -> Conditioning:
        """The conditioning of a batch. Families that read long prompts in 77-token windows pad a batch's shorter
        prompts with empty windows (at least `min_windows`); an image's conditioning then depends on the batch,
        so callers batch prompts of one window count (`windows`)."""
        raise NotImplementedError

    def windows(self, tokenizers: list[Any], prompt: str, long: bool) -> int:
        """How many encoder windows the prompt takes (1 where the length is fixed)."""
        return 1

    def count_cut(self, tokenizers: list[Any], prompts: list[str], long: bool) -> int:
        """How many of the prompts are longer than the text encoders read, and will be cut."""
        raise NotImplementedError

    def limit(self, long: bool) -> str:
        """What the text encoders read, for the warning about prompts cut (e.g. "77 tokens")."""
        raise NotImplementedError

    def empty_negative_is_zero(self, pipe: Any) -> bool:
        """SDXL's pipelines use zeros, not the encoding of "", for an empty negative prompt."""
        return bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

    # -- denoiser ------------------------------------------------------------------------------------------
    def predict(
        self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, resolution: int
    ) -> torch.Tensor:
        """The denoiser's output for images of `resolution` pixels a side."""
        raise NotImplementedError

    def keep_float32(self, parts: dict[str, Any], dtype: torch.dtype) -> None:
        """Return to float32 the parts that must not run in `dtype` (SD 3.5's T5 overflows in float16)."""

    def latent_shift(self, vae: Any) -> float:
        return float(getattr(vae.config, "shift_factor", None) or 0.0)

    def kohya_keys(self, state: dict[str, Any], denoiser_config: Any) -> dict[str, Any]:
        """Rename diffusers' kohya-style keys (`lora_unet_<diffusers module>`, `lora_te1_`) to the family's kohya
        convention."""
        return state

    def kohya_version(self, components: Any) -> str:
        """kohya's `ss_base_model_version`, which UIs read to match a LoRA to its base."""
        raise NotImplementedError

    # -- random models -------------------------------------------------------------------------------------
    def random_pipeline(self, arch: str, image_size: int, seed: int, prediction_type: str) -> Any:
        raise NotImplementedError

    def default_size(self, arch: str) -> int:
        """The image size an architecture is built for by default."""
        raise NotImplementedError


FAMILIES: Registry[ModelFamily] = Registry("model family")
