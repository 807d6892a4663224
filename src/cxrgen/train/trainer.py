"""The training run: setup, fit, validate, sample, save. Each phase reads top to bottom.

Everything random in a micro-step (which images, noise, timesteps, latent samples, dropout) is seeded from
(seed, step, micro-step, process), so a resumed run replays exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..allocator import reuse_freed_memory
from ..config import ConfigError, to_dict
from ..contracts import metadata_path
from ..distributed import cpu_processes
from ..fileio import cache_root
from ..model.families import Conditioning
from ..model.loading import load_components, set_offline_if_local
from ..model.sampling import make_pipeline, sample_images
from ..sharing.hub import check_push
from ..synthetic_mark import save_marked_png
from . import checkpoint as ckpt
from .cache import ArrayCache, TextCache, cache_key, sample_latents
from .config import BIRD_PROMPT, TrainConfig
from .data import DataError, IndexStream, PreparedSplit, step_seed
from .methods import METHODS
from .metrics import Throughput, measure_flops, memory_figures, peak_flops
from .prior import class_image_folder, ensure_class_images
from .runlog import RunLog, accelerate_trackers, tracker_names

log = logging.getLogger(__name__)
SAMPLES_NOTE = "SYNTHETIC IMAGES sampled by cxrgen from a model in training; not radiographs of people"
VAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # fractions of the schedule where validation loss is measured


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Trainer:
    """A training run, complete when built: data, model, method, caches, optimizer and resumed state are all set
    here; `fit` trains, `close` releases the worker threads and the logs."""

    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        c = self.config = config
        self.out = Path(config.out)
        self.step = 0
        self.history: list[float] = []
        self.val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.rate: float | None = None  # images per second and MFU at the last logged step
        self.mfu: float | None = None
        self.method = METHODS[c.method](c)
        set_offline_if_local(c.model.base)
        self.family = c.model.resolve_family()  # before anything heavy: a wrong family or setting fails at once
        self.family.check_training(c)
        trackers = tracker_names(c.report_to)  # a tracker that is not installed fails here, before any loading
        if c.push_to_hub:
            check_push(c.push_to_hub)
        from accelerate.utils import DistributedDataParallelKwargs

        # a trained text encoder whose last layer the conditioning never reads (SDXL's CLIP-L) leaves parameters
        # without gradients, which several processes must be told to expect
        unused = self.method.trains_text_encoder and self.family.unused_text_layers
        self.accelerator = Accelerator(
            mixed_precision=c.mixed_precision,
            gradient_accumulation_steps=c.grad_accum,
            cpu=cpu_processes(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
            log_with=accelerate_trackers(trackers, self.out) or None,
            project_dir=str(self.out),
        )
        self.device = self.accelerator.device
        if self.device.type == "cpu":
            reuse_freed_memory()  # a CPU step frees and reallocates the same activations: keep their pages
        self.is_main = self.accelerator.is_main_process
        self.cache_writer = cache_key(self.out.resolve())[:12]  # this run's name for the cache files it fills
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
        self.store = ckpt.CheckpointStore(self.out / "checkpoints", c.keep_checkpoints)
        if self.store.latest() is not None and not c.resume:
            raise ConfigError(
                f"{self.out} already has checkpoints: pass --resume latest to continue it, or choose another --out"
            )

        self.data = PreparedSplit.load(c.data, c.split, c.text_column)
        self.resolution = c.resolution or self.data.native_resolution()
        self.val = self._optional_split(c.val_split)
        self.components = load_components(c.model)
        self.objective = self.family.objective(self.components.scheduler, c)
        self.identity = c.model.identity()
        if self.resolution % (self.components.vae_scale * 4):
            raise ConfigError(
                f"resolution {self.resolution} must be a multiple of {self.components.vae_scale * 4} for this model"
            )
        _warn_far_above_native(self.resolution, self.components.native_resolution, c.resolution is None)
        self.method.load_stack(self.components)
        self.stack_identity = self.method.stack_identity()
        self.classes = self._class_images() if c.prior.enabled else None

        self._choose_trainable()
        self._place_on_device()
        self.latents = (
            {name: self._latent_cache(split) for name, split in self._splits().items()} if c.cache_latents else {}
        )
        trains_text = self.method.trains_text_encoder  # frozen text encoders' embeddings can be cached
        self.text = self._text_cache() if c.cache_text and not trains_text else None
        if self.text is not None and self.device.type == "cuda":
            # cached, the frozen text encoders (SD 3.5's T5-XXL: 9.5 GB in bf16) wait on the CPU; sample grids
            # encode their few prompts there
            for encoder in self.components.text_encoders:
                encoder.to("cpu")
            torch.cuda.empty_cache()
        self._denoiser_to_device()
        optimizer = self._build_optimizer()
        trained_text = [n for n in self.family.trainable_text_encoders if trains_text]
        names = [self.family.denoiser, *trained_text]
        prepared = self.accelerator.prepare(*(self.components.parts[n] for n in names), optimizer)
        self.trained = dict(zip(names, prepared[:-1], strict=True))  # by part name, wrapped for several processes
        self.denoiser = self.trained[self.family.denoiser]
        self.text_encoders = [self.trained.get(n, self.components.parts[n]) for n in self.family.text_encoders]
        self.optimizer = prepared[-1]
        self.models = prepared[:-1]
        if c.resume:
            self._resume(ckpt.resolve(self.out / "checkpoints", c.resume))
        self.store.clean_partial()
        # the order of images of each split: a function of (seed, position), so a resumed run continues it
        self.streams = {
            name: IndexStream(len(split), c.seed + i) for i, (name, split) in enumerate(self._splits().items())
        }
        self.pool = ThreadPoolExecutor(max(1, c.workers)) if not c.cache_latents else None
        self.denoiser_forward = self.denoiser  # the loss calls this; state, checkpoints and sampling use self.denoiser
        # FLOPs are counted on the eager model: the counter cannot see inside compiled code
        self.flops_per_image = self._measure_flops()
        if c.compile:
            self.denoiser_forward = torch.compile(self.denoiser)
        self.peak = peak_flops(self.device, c.peak_tflops)
        settings = to_dict(c, relative_to=self.out)  # local paths as seen from the run folder
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            import yaml

            (self.out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        self.log = RunLog(self.out, self.accelerator, self.is_main, settings, self.step if c.resume else None)

    def _optional_split(self, split: str | None) -> PreparedSplit | None:
        if not split:
            return None
        try:
            return PreparedSplit.load(self.config.data, split, self.config.text_column)
        except DataError:
            log.warning("no usable '%s' split in %s: validation loss is skipped", split, self.config.data)
            return None

    def _splits(self) -> dict[str, PreparedSplit]:
        splits = {"train": self.data}
        if self.val is not None:
            splits["val"] = self.val
        if self.classes is not None:
            splits["class"] = self.classes
        return splits

    def _class_images(self) -> PreparedSplit:
        c = self.config
        identity = [self.identity, *self.stack_identity]
        folder = class_image_folder(c.prior, identity, self.resolution, c.seed, c.cache_dir)
        if self.is_main:
            for model in (self.components.denoiser, self.components.vae, *self.components.text_encoders):
                model.to(self.device)
            ensure_class_images(c.prior, self.components, folder, self.resolution, c.seed)
        self.accelerator.wait_for_everyone()
        self._require_shared(metadata_path(folder, "train"))
        return PreparedSplit.load(folder, "train")

    def _require_shared(self, path: Path) -> None:
        """Caches and class images are made by the main process and read by all: on machines that do not share
        the cache folder, the others cannot see them."""
        if not path.exists():
            raise ConfigError(
                f"process {self.rank} cannot see {path}, which the main process wrote: with several machines, "
                "put --cache-dir (and --prior.folder) on a filesystem they all share"
            )

    def _choose_trainable(self) -> None:
        c, m = self.config, self.components
        m.vae.requires_grad_(False)
        torch.manual_seed(c.seed)  # new adapters start from the same random weights in every run with this seed
        self.method.prepare(m)
        if c.attention == "xformers":
            try:
                m.denoiser.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError) as exc:
                raise ConfigError(
                    f"--attention xformers is unavailable here ({exc}); install xformers or use sdpa"
                ) from exc
        if c.gradient_checkpointing:
            m.denoiser.enable_gradient_checkpointing()
            if self.method.trains_text_encoder:
                for name in self.family.trainable_text_encoders:
                    m.parts[name].gradient_checkpointing_enable()

    def _place_on_device(self) -> None:
        """Frozen weights in the compute dtype; trained ones stay float32 (master weights)."""
        m, dtype = self.components, self.weight_dtype
        wholly = self.method.wholly_trained(m)
        # SDXL's VAE overflows in float16 (its config says force_upcast): it encodes in float32
        vae_fp32 = dtype == torch.float16 and getattr(m.vae.config, "force_upcast", False)
        for model in (m.vae, *m.text_encoders, m.denoiser):
            keep = any(model is w for w in wholly) or (model is m.vae and vae_fp32)
            if dtype != torch.float32 and not keep:
                model.to(dtype=dtype)  # cast before the move: the device never holds the float32 copy
            if model is not m.denoiser:  # the denoiser follows once the caches are filled (_denoiser_to_device)
                model.to(self.device)
        self.family.keep_float32(m.parts, dtype)
        for model in (m.denoiser, *m.text_encoders):  # adapters in a cast module
            for p in model.parameters():
                if p.requires_grad and p.dtype != torch.float32:
                    p.data = p.data.float()

    def _denoiser_to_device(self) -> None:
        """The denoiser joins the device after the caches are filled: while the VAE encodes (SDXL's in float32 at
        1024 px) and the text encoders run (SD 3.5's T5-XXL), its weights (5 GB in bf16 for SDXL and SD 3.5 Medium)
        would only add to the peak."""
        m = self.components
        m.denoiser.to(self.device)
        if self.device.type == "cuda" and self.config.channels_last and self.family.denoiser == "unet":
            m.denoiser.to(memory_format=torch.channels_last)

    # -- caches ------------------------------------------------------------------------------------------------
    def _latent_cache(self, split: PreparedSplit) -> np.ndarray:
        c, m = self.config, self.components
        key = cache_key("latents", split.digest, split.files_digest(), self.resolution, self.identity, "vae")
        cache = ArrayCache(cache_root(c.cache_dir) / "latents", key, self.cache_writer)
        if not cache.complete:
            h = self.resolution // m.vae_scale
            mine = list(range(self.rank, len(split), self.world))

            @torch.no_grad()
            def encode(indices: list[int]) -> torch.Tensor:
                images = torch.stack([split.image(i, self.resolution) for i in indices]).to(self.device, m.vae.dtype)
                return m.vae.encode(images).latent_dist.parameters

            if self.is_main:
                cache.create(len(split), (2 * m.vae.config.latent_channels, h, h))
            self.accelerator.wait_for_everyone()
            self._require_shared(cache.filling)
            # 8 images a batch at 512 px, 2 at 1024: SDXL's VAE encoding 8 at 1024 px in float32 holds 20 GB of
            # activations (measured on the CPU), more than the cards the 1024 px presets are for
            batch = max(1, 8 * 512**2 // self.resolution**2)
            cache.fill(encode, mine, batch, desc=f"latents {split.folder.name}")
            self.accelerator.wait_for_everyone()
            if self.is_main:
                cache.mark_complete({"images": len(split), "resolution": self.resolution, "model": self.identity})
        return cache.open()

    def _text_cache(self) -> TextCache:
        """Embeddings of every distinct prompt (train, val, class, samples), window by window."""
        c, m = self.config, self.components
        prompts = sorted({p for split in self._splits().values() for p in split.prompts})
        identity = [self.identity, *self.stack_identity, c.long_prompts]
        store = ArrayCache(
            cache_root(c.cache_dir) / "text", cache_key("text-rows", prompts, identity), self.cache_writer
        )
        text = TextCache(m, prompts, c.long_prompts, store)
        if self.is_main and not store.complete:
            text.fill()
        # every process waits here once, whatever it found: a barrier inside the `if` would be skipped by a
        # process that looks after the main one has finished, and the others would wait for it forever
        self.accelerator.wait_for_everyone()
        self._require_shared(store.path)
        return text

    # -- optimizer ---------------------------------------------------------------------------------------------
    def _build_optimizer(self) -> Any:
        """The optimizer over whatever the method made trainable, its schedule, and the method's EMA."""
        from diffusers.optimization import get_scheduler

        c, o = self.config, self.config.optim
        groups = [{"params": _trainable(self.components.denoiser), "lr": o.learning_rate}]
        if self.method.trains_text_encoder:
            params = [p for model in self.components.text_encoders for p in _trainable(model)]
            groups.append({"params": params, "lr": o.text_encoder_lr or o.learning_rate})
        self.params = [p for g in groups for p in g["params"]]
        if not self.params:
            raise ConfigError("nothing to train: no parameter requires a gradient")
        if o.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as exc:
                raise ConfigError(
                    "--optim.optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes) and a GPU"
                ) from exc
            optimizer_cls = bnb.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        extra = {}
        if optimizer_cls is torch.optim.AdamW and self.device.type in ("cuda", "cpu"):
            extra["fused"] = True  # one kernel for all parameters instead of a loop over them (a LoRA has hundreds)
        optimizer = optimizer_cls(groups, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, eps=o.eps, **extra)
        self.lr_scheduler = get_scheduler(
            o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=c.max_steps
        )
        self.ema = self.method.ema(self.components, self.device)
        return optimizer

    # -- one micro-step ----------------------------------------------------------------------------------------
    def _latents_for(self, name: str, split: PreparedSplit, indices: list[int], g: torch.Generator) -> torch.Tensor:
        vae = self.components.vae
        scale, shift = vae.config.scaling_factor, self.family.latent_shift(vae)
        if name in self.latents:
            order = np.argsort(indices)
            params = np.asarray(self.latents[name][np.asarray(indices)[order]])[np.argsort(order)]
            return sample_latents(torch.from_numpy(params.astype(np.float32)), g, scale, shift).to(self.device)
        images = list(self.pool.map(lambda i: split.image(i, self.resolution), indices))
        with torch.no_grad():
            dist = vae.encode(torch.stack(images).to(self.device, vae.dtype)).latent_dist
        params = dist.parameters.float().cpu()
        return sample_latents(params, g, scale, shift).to(self.device)

    def _conditioning(self, prompts: list[str]) -> Conditioning:
        if self.text is None:
            return self.components.encode(prompts, self.config.long_prompts, self.text_encoders)
        return self.text.conditioning(prompts)  # float32 on the CPU; the loss moves it

    def _batch(self, step: int, micro: int) -> tuple[list[tuple[str, PreparedSplit, list[int]]], int]:
        c = self.config
        position = (step * c.grad_accum + micro) * c.batch_size * self.world + self.rank * c.batch_size
        parts = [("train", self.data, self.streams["train"].take(position, c.batch_size))]
        if self.classes is not None:
            parts.append(("class", self.classes, self.streams["class"].take(position, c.batch_size)))
        return parts, c.batch_size

    def _loss(
        self,
        parts: list[tuple[str, PreparedSplit, list[int]]],
        seed: int,
        timesteps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image denoising loss for a batch; the min-SNR weights come back separately."""
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout in adapters
        latents = torch.cat([self._latents_for(name, split, idx, g) for name, split, idx in parts])
        prompts = [split.prompts[i] for _, split, idx in parts for i in idx]
        cond = self._conditioning(prompts).to(self.device, self.weight_dtype)
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        if self.config.noise_offset:
            noise += self.config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=g).to(self.device)
        if timesteps is None:
            timesteps = self.objective.timesteps(latents.shape[0], g)
        timesteps = timesteps.to(self.device)
        noisy, target = self.objective.noised(latents, noise, timesteps)
        noisy = noisy.to(self.weight_dtype)
        if self.config.channels_last and noisy.is_cuda and self.family.denoiser == "unet":
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with self.accelerator.autocast():
            pred = self.family.predict(self.denoiser_forward, noisy, timesteps, cond, self.resolution)
        per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return per_image, self.objective.weights(timesteps).to(per_image.device)

    def _objective(self, step: int, micro: int, seed_stream: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and its parts, as device tensors: reading them waits for the GPU, so that happens once a step."""
        parts, b = self._batch(step, micro)
        per_image, w = self._loss(parts, step_seed(self.config.seed, step, micro, self.rank, seed_stream))
        instance = (per_image[:b] * w[:b]).mean()
        loss = instance
        logs = {"loss/instance": instance.detach()}
        if self.classes is not None:
            prior = (per_image[b:] * w[b:]).mean()
            loss = instance + self.config.prior.loss_weight * prior
            logs["loss/prior"] = prior.detach()
        return loss, logs

    # -- fit ---------------------------------------------------------------------------------------------------
    def fit(self) -> None:
        c = self.config
        images_per_step = c.batch_size * c.grad_accum * self.world * (2 if self.classes is not None else 1)
        speed = Throughput()
        bar = tqdm(
            total=c.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        while self.step < c.max_steps:
            for model in self.models:
                model.train()
            losses: list[float] = []
            extra: dict[str, torch.Tensor] = {}
            for micro in range(c.grad_accum):
                with self.accelerator.accumulate(*self.models):
                    loss, extra = self._objective(self.step, micro)
                    self.accelerator.backward(loss)
                    grad_norm = None
                    if self.accelerator.sync_gradients:
                        grad_norm = self.accelerator.clip_grad_norm_(self.params, c.optim.max_grad_norm or math.inf)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                # the mean over processes: one process's NaN stops them all (else the others wait for it forever)
                losses.append((self.accelerator.reduce(loss.detach(), "mean") if self.world > 1 else loss).item())
                if not math.isfinite(losses[-1]):
                    # weights in memory took this step, but nothing is saved: the last checkpoint stays good
                    raise TrainingDiverged(self._diverged_message(losses[-1]))
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(_trainable(self.accelerator.unwrap_model(self.denoiser)))
            self.step += 1
            step_loss = float(np.mean(losses))
            self.history.append(step_loss)
            rate = speed.update(images_per_step)
            bar.update()
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.2e}")
            if self.step % c.log_every == 0 or self.step == c.max_steps:
                self._log_step(step_loss, {k: v.item() for k, v in extra.items()}, grad_norm, rate)
            self._periodic()
        bar.close()

    def _periodic(self) -> None:
        c, s = self.config, self.step
        last = s == c.max_steps
        if self.val is not None and c.val_every >= 0 and ((c.val_every and s % c.val_every == 0) or last):
            self.validate()
        if c.sample_every >= 0 and ((c.sample_every and s % c.sample_every == 0) or last):
            self.sample()
        if s % c.checkpoint_every == 0 or last:
            self.save_checkpoint()

    def _log_step(self, loss: float, extra: dict[str, float], grad_norm: Any, rate: float | None) -> None:
        # the rate counts the images of every process, the peak is one device's
        mfu = (
            rate * self.flops_per_image / (self.peak * self.world)
            if rate and self.peak and self.flops_per_image
            else None
        )
        self.log.scalars(
            self.step,
            {
                "loss/train": loss,
                **extra,
                "lr": self.lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "perf/images_per_s": rate,
                "perf/mfu": mfu,
                "perf/tflops": rate * self.flops_per_image / self.world / 1e12
                if rate and self.flops_per_image
                else None,
                **memory_figures(self.device),
            },
        )
        self.rate, self.mfu = rate, mfu

    def _diverged_message(self, loss: float) -> str:
        latest = self.store.latest()
        where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        return (
            f"the loss became {loss} at step {self.step + 1} (lr {self.lr_scheduler.get_last_lr()[0]:.2e}); "
            f"{where}. Lower --optim.learning-rate, use --mixed-precision bf16 instead of fp16, or keep "
            "--optim.max-grad-norm set; then continue with --resume latest."
        )

    # -- validation and samples --------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Loss on the first `val_images` val images at fixed timesteps and noise: comparable across steps."""
        c = self.config
        for model in self.models:
            model.eval()
        count = min(c.val_images, len(self.val))
        total = torch.zeros(2, device=self.device)
        mine = range(self.rank, count, self.world)
        for j in tqdm(mine, desc="validation", unit="img", leave=False, dynamic_ncols=True, disable=not self.is_main):
            for k, fraction in enumerate(VAL_TIMESTEPS):
                per_image, _ = self._loss(
                    [("val", self.val, [j])],
                    step_seed(c.seed, -1, j, 0, k),
                    self.objective.fixed_timestep(fraction),
                )
                total += torch.stack([per_image.sum(), torch.tensor(1.0, device=self.device)])
        total = self.accelerator.reduce(total, reduction="sum")
        self.val_loss = float(total[0] / total[1].clamp(min=1))
        self.log.scalars(self.step, {"loss/val": self.val_loss})
        return self.val_loss

    def sample_prompts(self) -> list[str]:
        if self.config.sample_prompts:
            return list(self.config.sample_prompts)
        source = self.val if self.val is not None else self.data
        distinct = list(dict.fromkeys(source.prompts))
        return distinct[:4] + [BIRD_PROMPT]

    def sample(self) -> Path | None:
        """A grid: one row per prompt, one column per seed."""
        from ..grid import prompt_grid

        c = self.config
        path = None
        if self.is_main:
            trained = self._unwrapped()
            for model in trained.values():
                model.eval()
            pipe = make_pipeline(self.components, **trained)
            # the pipeline's own bar over its denoising steps: a grid of a large model takes a while
            pipe.set_progress_bar_config(disable=False, desc="sample grid", leave=False, dynamic_ncols=True)
            prompts = self.sample_prompts()
            pairs = [(p, s) for p in prompts for s in c.sample_seeds]
            dtype = self.weight_dtype if self.weight_dtype != torch.float32 else None
            images = sample_images(
                pipe,
                [p for p, _ in pairs],
                [s for _, s in pairs],
                c.sample_steps,
                c.guidance,
                long_prompts=c.long_prompts,
                resolution=self.resolution,
                autocast_dtype=dtype,
            )
            n = len(c.sample_seeds)
            rows = [(p, list(images[i * n : (i + 1) * n])) for i, p in enumerate(prompts)]
            grid = prompt_grid(rows, [f"seed {s}" for s in c.sample_seeds], cell=max(128, min(256, self.resolution)))
            path = self.out / "samples" / f"{ckpt.checkpoint_name(self.step)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_marked_png(grid, path, SAMPLES_NOTE)
            self.log.image(self.step, "samples", np.asarray(grid))
        self.accelerator.wait_for_everyone()
        return path

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _unwrapped(self) -> dict[str, Any]:
        """The denoiser and text encoders as modules (not wrapped for several processes), by part name."""
        names = (self.family.denoiser, *self.family.text_encoders)
        return {n: self.accelerator.unwrap_model(self.trained.get(n, self.components.parts[n])) for n in names}

    def _trainable_params(self) -> dict[str, torch.nn.Parameter]:
        """Every trainable parameter as `<part>.<name>` (e.g. unet.down_blocks..., text_encoder_2....)."""
        return {
            f"{part}.{name}": p
            for part, model in self._unwrapped().items()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float() for name, p in self._trainable_params().items()}

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "data_digest": self.data.digest,
            "method": self.config.method,
            "model": self.identity,
            "seed": self.config.seed,
            "max_steps": self.config.max_steps,
            "loss_history": self.history[-1000:],
            "val_loss": self.val_loss,
            "ema_step": self.ema.optimization_step if self.ema is not None else None,
            "grad_scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "order": self._order_settings(),
        }

    def _order_settings(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one to continue it exactly, by flag name."""
        c = self.config
        settings = {
            "--seed": c.seed,
            "--batch-size": c.batch_size,
            "--grad-accum": c.grad_accum,
            "processes": self.world,
        }
        return settings | self.method.resume_settings()

    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            ema = None
            if self.ema is not None:
                ema = {str(i): p for i, p in enumerate(self.ema.shadow_params)}
            self.last_checkpoint = self.store.save(
                self.step,
                self._trainable_state(),
                self.optimizer,
                self.lr_scheduler,
                ema,
                self.checkpoint_state(),
            )
        self.accelerator.wait_for_everyone()

    def _resume(self, path: Path) -> None:
        saved = ckpt.load(path)
        state = saved["state"]
        if state["data_digest"] != self.data.digest or state["method"] != self.config.method:
            raise ConfigError(
                f"{path} was made with other data or another method; resume it with the same --data and --method"
            )
        changed = [
            f"{k} {v} (was {state['order'][k]})"
            for k, v in self._order_settings().items()
            if k in state.get("order", {}) and state["order"][k] != v
        ]
        if changed:
            raise ConfigError(
                f"{path} cannot continue exactly with {', '.join(changed)}; resume with the saved settings"
            )
        params = self._trainable_params()
        missing = set(params) ^ set(saved["trainable"])
        missing |= {n for n in set(params) - missing if params[n].shape != saved["trainable"][n].shape}
        if missing:
            raise ConfigError(
                f"{path} does not match this run's trainable weights (e.g. {sorted(missing)[0]}); "
                "use the run's own settings"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved["trainable"][name].to(p.device, p.dtype))
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["scheduler"])
        scaler = self.accelerator.scaler  # fp16 only: continue at the loss scale the run had reached
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None and saved["ema"] is not None:
            for i, shadow in enumerate(self.ema.shadow_params):
                shadow.copy_(saved["ema"][str(i)].to(shadow.device))
            self.ema.optimization_step = state["ema_step"]
        self.step = state["step"]
        self.history = list(state.get("loss_history", []))
        self.val_loss = state.get("val_loss")
        log.info("resumed from %s at step %d", path, self.step)

    # -- FLOPs -------------------------------------------------------------------------------------------------
    def _measure_flops(self) -> float | None:
        """Model FLOPs per training image, counted once on a real micro-step (without recomputation)."""
        denoiser = self.accelerator.unwrap_model(self.denoiser)
        checkpointing = self.config.gradient_checkpointing
        if checkpointing:
            denoiser.disable_gradient_checkpointing()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws here must not shift the run's own draws
            flops = measure_flops(lambda: self._objective(0, 0, seed_stream=99)[0])
        if checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.optimizer.zero_grad(set_to_none=True)
        images = self.config.batch_size * (2 if self.classes is not None else 1)
        return flops / images

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.log.close()


FAR_ABOVE_NATIVE = 2  # training at this many times the model's side (4x the pixels a step) or more is warned of


def _warn_far_above_native(resolution: int, native: int, from_data: bool) -> None:
    """A model trained far above its own size costs about (resolution / native)^2 as much a step and learns at a
    size it was not made for: likely a prepared dataset's size taken by default (the 64 px tiny model on 512 px
    data took 38 s a batch to cache latents)."""
    ratio = resolution / native
    if ratio < FAR_ABOVE_NATIVE:
        return
    source = "the prepared images' size, the default when no resolution is set" if from_data else "the settings"
    log.warning(
        "training at %d px (%s), %.3gx the model's own %d px: each step costs about %.0fx as much as at %d px. "
        "Pass --resolution %d to train at the model's size.",
        resolution,
        source,
        ratio,
        native,
        ratio**2,
        native,
        native,
    )
