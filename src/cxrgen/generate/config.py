"""`cxrgen generate` settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, option, parse_shard
from ..model.loading import ModelConfig
from ..model.sampling import Sampler
from ..prompts import PromptConfig


@dataclass
class GenerateConfig:
    out: str = option(help="output folder: <out>/<split>/metadata.jsonl + images, generate.json", path=True)
    run: str | None = option(
        None, "a training run folder: its base model, adapters and prompt settings are used", path=True
    )
    model: ModelConfig = option(
        factory=lambda: ModelConfig(base=""), help="base model (or a full fine-tune's pipeline folder)"
    )
    loras: list[str] = option([], "LoRAs to apply, each 'path' or 'path:weight' (folder or .safetensors)", path=True)
    n: int = option(1, "images per condition set from flags, per --prompt, or in all for --like")
    age: int | None = option(None, "age in years")
    sex: str | None = option(None, "M, F or O")
    view: str | None = option(None, "view position, e.g. PA")
    projection: str | None = option(None, "projection, e.g. PA, AP, AP_horizontal")
    modality: str | None = option(None, "CR or DX")
    finding: list[str] = option(
        [], "findings, each 'label@location,location', e.g. 'pleural effusion@left,costophrenic angle'"
    )
    allow_unknown_names: bool = option(
        False,
        "generate findings and locations the training data never uses (else an error naming the closest)",
    )
    conditions: str | None = option(
        None, "CSV/JSONL with one row per image or group: conditions or prompt, count, seed", path=True
    )
    like: str | None = option(
        None, "a prepared dataset: draw condition sets from its metadata (joint distribution kept)", path=True
    )
    like_split: str = option("train", "split of --like to draw from")
    reweight: list[str] = option([], "with --like: 'label=factor' makes rows with that label more likely")
    prompt: list[str] = option([], "raw prompts (each makes --n images)")
    prompts: PromptConfig | None = option(None, "prompt settings (default: the training run's, else the full level)")
    long_prompts: bool | None = option(None, "encode prompts beyond 77 tokens in windows (default: as the run trained)")
    sampler: Sampler | None = option(
        None,
        "sampling scheduler (default: the model family's: dpmsolver++ (DPM-Solver++ 2M) for SD and SDXL, euler "
        "for SD 3.5, as training's sample grids)",
    )
    steps: int = option(25, "sampling steps")
    guidance: float = option(7.5, "classifier-free guidance scale")
    negative_prompt: str = option("", "negative prompt")
    resolution: int | None = option(None, "image side in pixels (default: the run's resolution, else the model's)")
    batch_size: int = option(4, "images per forward pass (recorded: exact regeneration uses the same)")
    seed: int = option(0, "run seed; image i gets its own seed derived from it (recorded per image)")
    bits: Literal[8, 16] = option(8, "PNG bit depth")
    dicom: bool = option(False, "also write a DICOM Secondary Capture per image (marked synthetic)")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = option(
        "auto", "compute precision: auto is fp16 on a GPU, fp32 on a CPU"
    )
    merge_loras: bool = option(
        True,
        "fold the LoRAs into the base weights before sampling: the same images within rounding, faster; "
        "off samples through the adapter layers, as training's sample images do",
    )
    compile: bool = option(
        False,
        "torch.compile the UNet and VAE decoder (q, k and v fused): the first batch compiles (a minute or more), "
        "later ones run faster; for GPUs",
    )
    split: str = option("train", "split folder name of the output")
    push_to_hub: str | None = option(
        None, "when the set is complete, upload it with its dataset card to this Hugging Face Hub dataset repo"
    )
    hub_private: bool = option(False, "with --push-to-hub: create the repo private")
    shard: str | None = option(
        None, "generate only shard i of n ('i/n'); under accelerate launch processes split each shard"
    )

    def __post_init__(self) -> None:
        if self.run is None and not self.model.base:
            raise ConfigError("give --run RUN_FOLDER or --model.base MODEL")
        modes = [bool(self.conditions), bool(self.like), bool(self.prompt)]
        flags = any(v is not None for v in (self.age, self.sex, self.view, self.projection, self.modality)) or bool(
            self.finding
        )
        if sum(modes) + flags > 1:
            raise ConfigError(
                "choose one of: condition flags (--age, --finding, ...), --conditions FILE, --like DATASET, "
                "--prompt TEXT"
            )
        if self.reweight and not self.like:
            raise ConfigError("--reweight re-weights the rows of --like DATASET: give --like too")
        if self.conditions and self.n != 1:
            raise ConfigError("--n does not apply to --conditions: give each row a count column")
        if any(not p.strip() for p in self.prompt):
            raise ConfigError("--prompt: a prompt is empty")
        for name in ("n", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.shard is not None:
            self.shard_index()

    def shard_index(self) -> tuple[int, int]:
        return parse_shard(self.shard)
