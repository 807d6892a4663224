"""Sampling images from a model of any family: the one path used by training's sample grids and `generate`.

Every image has its own seed and its own generator, and batches are formed the same way whatever the sharding,
so any image can be regenerated exactly from its seed and settings.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from .families import ModelFamily, family_of_pipeline

Sampler = Literal["dpmsolver++", "ddim", "euler", "pndm"]


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` in a run seeded with `seed` (recorded in its metadata). 63 bits: with 32, a run of
    a million images would repeat about a hundred seeds, and with one prompt those are the same image."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def make_scheduler(name: Sampler, config: Any) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "pndm": PNDMScheduler}[name]
    return cls.from_config(config)


def make_pipeline(components: Any, sampler: str | None = None, **replaced: Any) -> Any:
    """A sampling pipeline over loaded `Components` (`replaced`: parts by name, e.g. for training's samples the
    UNet and text encoders being trained), with the named sampler (default: the family's) and no progress bar of
    its own."""
    family = components.family
    sampler = sampler or family.default_sampler
    if sampler not in family.samplers:
        from ..config import ConfigError

        raise ConfigError(
            f"--sampler {sampler} does not sample {family.name} models; choose {', '.join(family.samplers)}"
        )
    pipe = components.pipeline(family.sampling_scheduler(sampler, components.scheduler.config), **replaced)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_family(pipe: Any) -> ModelFamily:
    family = family_of_pipeline(type(pipe).__name__)
    if family is None:
        raise TypeError(f"{type(pipe).__name__} is not the pipeline of a model family")
    return family


def text_windows(pipe: Any, prompt: str, long: bool) -> int:
    """How many encoder windows `prompt` takes in this pipeline's family."""
    family = pipeline_family(pipe)
    return family.windows([getattr(pipe, n) for n in family.tokenizers], prompt, long)


@torch.no_grad()
def sample_images(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    steps: int = 25,
    guidance: float = 7.5,
    negative_prompt: str = "",
    long_prompts: bool = False,
    resolution: int = 512,
    autocast_dtype: torch.dtype | None = None,
    grayscale: bool = True,
    on_step: Callable[[], None] | None = None,
) -> np.ndarray:
    """Float32 in [0, 1], one image per (prompt, seed) pair, `resolution` pixels a side: (n, h, w) grayscale, or
    (n, h, w, 3).

    With long prompts, prompts of different window counts are sampled apart: padding a shorter prompt with empty
    windows would change its conditioning, and the image would differ from the one `generate` makes."""
    settings = dict(
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
        long_prompts=long_prompts,
        resolution=resolution,
        autocast_dtype=autocast_dtype,
        grayscale=grayscale,
        on_step=on_step,
    )
    family = pipeline_family(pipe)
    if long_prompts:
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(text_windows(pipe, prompt, True), []).append(i)
        if len(groups) > 1:
            images: list[Any] = [None] * len(prompts)
            for group in groups.values():
                made = sample_images(pipe, [prompts[i] for i in group], [seeds[i] for i in group], **settings)
                for i, image in zip(group, made, strict=True):
                    images[i] = image
            return np.stack(images)
    device = getattr(pipe, family.denoiser).device
    tokenizers = [getattr(pipe, n) for n in family.tokenizers]
    encoders = [getattr(pipe, n) for n in family.text_encoders]
    # a negative prompt longer than the prompts pads them to its windows
    windows = max(text_windows(pipe, p, long_prompts) for p in [*prompts, negative_prompt])
    cond = family.encode(tokenizers, encoders, prompts, long_prompts, windows).to(device)
    negative = family.encode(tokenizers, encoders, [negative_prompt] * len(prompts), long_prompts, windows).to(device)
    if not negative_prompt and family.empty_negative_is_zero(pipe):
        negative = negative.zeros_like()
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with context:
        out = pipe(
            **cond.pipeline_kwargs(negative),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=resolution,
            width=resolution,
            output_type="np",
            **({"callback_on_step_end": _calling(on_step)} if on_step else {}),
        ).images
    out = np.asarray(out, dtype=np.float32)
    return out.mean(axis=-1) if grayscale else out


def _calling(on_step: Callable[[], None]) -> Callable[..., dict[str, Any]]:
    """A diffusers step-end callback that calls `on_step` and changes nothing."""

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step()
        return tensors

    return callback


def to_uint(images: np.ndarray, bits: int = 8) -> np.ndarray:
    """[0, 1] floats to 8- or 16-bit integers."""
    top = 255 if bits == 8 else 65535
    return np.clip(np.round(images * top), 0, top).astype(np.uint8 if bits == 8 else np.uint16)
