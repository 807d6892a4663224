"""Loading Stable Diffusion components (hub id or local folder, safetensors only by default), and building
models offline: a tiny random pipeline for tests and the demo, or the real SD 1.5 architecture with random weights
for speed and memory work.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError, option
from ..errors import UserError
from ..fileio import cache_root, stat_digest, write_text
from .families import FAMILIES, ModelFamily, family_of_pipeline, read_pipeline_class

log = logging.getLogger(__name__)
# diffusers 0.40 renamed from_pretrained's torch_dtype to dtype (the old name warns)
_DTYPE_ARGUMENT = "dtype" if tuple(int(x) for x in version("diffusers").split(".")[:2]) >= (0, 40) else "torch_dtype"


class ModelError(UserError):
    """A base model cannot be loaded; the message says why and what to do."""


@dataclass
class ModelConfig:
    base: str = option(
        help="base model: hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local diffusers folder",
        path=True,
    )
    family: str | None = option(
        None, f"model family: {', '.join(FAMILIES)} (default: read from the model's model_index.json)"
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit)")
    variant: str | None = option(None, "weight variant to load, e.g. fp16")
    allow_pickle: bool = option(False, "also load .bin/.ckpt weights (pickles: only for files you trust)")
    prediction_type: Literal["epsilon", "v_prediction"] | None = option(
        None, "override the scheduler's prediction type (default: read from the model's scheduler config)"
    )

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in FAMILIES:
            raise ConfigError(f"--model.family {self.family!r}: choose one of {', '.join(FAMILIES)}")

    def identity(self) -> str:
        """The base model's identity (see model_identity) with the overrides that change what it computes."""
        overrides = "".join(f"+{v}" for v in (self.variant, self.prediction_type) if v)
        return model_identity(self.base, self.revision) + overrides

    def resolve_family(self) -> ModelFamily:
        """The family the model's model_index.json names, which must be the one --model.family names if given
        (when a hub model's model_index.json cannot be read, the family named)."""
        try:
            class_name = read_pipeline_class(self.base, self.revision)
        except (OSError, ValueError, KeyError) as exc:
            if self.family:
                return FAMILIES[self.family]
            raise ModelError(
                f"cannot load base model {self.base}: its model_index.json, which names the family, is not at hand "
                f"({exc}). For offline use give a local folder (`cxrgen make-tiny-model --out DIR` writes one)."
            ) from exc
        family = family_of_pipeline(class_name)
        if family is None:
            raise ModelError(f"{self.base} is a {class_name}, not a model family cxrgen trains ({', '.join(FAMILIES)})")
        if self.family and family.name != self.family:
            raise ModelError(
                f"{self.base} is a {family.name} model ({class_name}), not {self.family} as --model.family (or the "
                f"preset) says: choose a {self.family} base model, or a preset for {family.name}"
            )
        return family


@dataclass
class Components:
    """A loaded model's parts by their diffusers names, its family, and the training noise scheduler."""

    family: ModelFamily
    parts: dict[str, Any]
    scheduler: Any  # the training scheduler (DDPM, or the flow-matching one)
    source: str

    @property
    def denoiser(self) -> Any:
        """The UNet or transformer."""
        return self.parts[self.family.denoiser]

    @property
    def vae(self) -> Any:
        return self.parts["vae"]

    @property
    def tokenizers(self) -> list[Any]:
        return [self.parts[n] for n in self.family.tokenizers]

    @property
    def text_encoders(self) -> list[Any]:
        return [self.parts[n] for n in self.family.text_encoders]

    @property
    def tokenizer(self) -> Any:
        """The first (CLIP) tokenizer: the one prompt lengths are counted in."""
        return self.parts[self.family.tokenizers[0]]

    @property
    def prediction_type(self) -> str:
        return getattr(self.scheduler.config, "prediction_type", None) or "flow"

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.denoiser.config.sample_size) * self.vae_scale

    def pipeline(self, scheduler: Any = None, **replaced: Any) -> Any:
        """A pipeline over these very modules (adapters added to it are added to them); `replaced` swaps parts by
        name (e.g. the UNet being trained)."""
        return self.family.pipeline({**self.parts, **replaced}, scheduler or self.scheduler)

    def encode(self, prompts: list[str], long: bool, encoders: list[Any] | None = None) -> Any:
        """The family's conditioning of `prompts` (`encoders` replaces the text encoders, e.g. ones in training)."""
        return self.family.encode(self.tokenizers, encoders or self.text_encoders, prompts, long)


def _check_local(folder: Path, config: ModelConfig) -> None:
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder} is not a diffusers model folder (no model_index.json)")
    for name in config.resolve_family().parts:
        sub = folder / name
        if not sub.is_dir():
            raise ModelError(f"{folder} has no {name}/ folder")
        if name.startswith("tokenizer"):
            continue
        if not config.allow_pickle and not any(sub.glob("*.safetensors")):
            pickles = [p.name for p in sub.iterdir() if p.suffix in (".bin", ".ckpt", ".pt")]
            what = f" (it has {', '.join(pickles)})" if pickles else ""
            raise ModelError(
                f"{sub} has no .safetensors weights{what}. Convert them to safetensors, or pass "
                "--model.allow-pickle to load pickled weights you trust."
            )


def load_components(config: ModelConfig, dtype: torch.dtype = torch.float32) -> Components:
    """The parts of a model of any family (tokenizers, text encoders, VAE, UNet or transformer) and its training
    scheduler."""
    import diffusers

    local = Path(config.base).expanduser()
    if local.exists():
        _check_local(local, config)
    elif config.base.startswith(("/", ".", "~")) or config.base.count("/") > 1:
        raise ModelError(f"cannot load base model {config.base}: no such folder (and not a hub id)")
    kwargs: dict[str, Any] = {"revision": config.revision, "use_safetensors": not config.allow_pickle}
    if config.variant:
        kwargs["variant"] = config.variant
    base = str(local) if local.exists() else config.base
    try:
        family = config.resolve_family()
        cls = getattr(diffusers, family.pipeline_class)
        pipe = cls.from_pretrained(base, **{_DTYPE_ARGUMENT: dtype}, **family.pipeline_extras, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            ""
            if local.exists()
            else " For offline use give a local folder (`cxrgen make-tiny-model --out DIR` writes one)."
        )
        raise ModelError(f"cannot load base model {config.base}: {exc}{hint}") from exc
    scheduler = family.training_scheduler(pipe.scheduler.config)
    if config.prediction_type:
        scheduler.register_to_config(prediction_type=config.prediction_type)
    parts = {name: getattr(pipe, name) for name in family.parts}
    return Components(family, parts, scheduler, base)


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


_offline_set_here = False


def set_offline_if_local(base: str) -> None:
    """Loading a local folder should never touch the network."""
    global _offline_set_here
    if Path(base).expanduser().exists() and "HF_HUB_OFFLINE" not in os.environ:
        os.environ["HF_HUB_OFFLINE"] = "1"
        _offline_set_here = True


def offline_set_here() -> bool:
    """Whether the Hub's offline mode is cxrgen's doing (for a local model) rather than the user's."""
    return _offline_set_here
