"""LoRA adapters: add the trainable one, stack earlier ones (frozen or merged), save in diffusers and kohya form.

The adapter being trained is always named "cxrgen". Stacked LoRAs are loaded with diffusers' own loader
(`load_lora_weights`), so anything diffusers reads can be stacked: our outputs, kohya/A1111 files, hub LoRAs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..models import hub_snapshot
from ..provenance import file_sha256
from .config import LoraConfig

log = logging.getLogger(__name__)
TRAIN = "cxrgen"  # not "train": peft stores adapters as submodules, and Module.train exists
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"


def _pipeline(components: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def lora_source(path: str) -> tuple[str, str | None]:
    """(folder or file, weight_name) for diffusers' loader from a folder or a .safetensors file."""
    p = Path(path).expanduser()
    if p.is_file():
        return str(p.parent), p.name
    if p.is_dir():
        if (p / DIFFUSERS_FILE).is_file():
            return str(p), DIFFUSERS_FILE
        if (p / "lora" / DIFFUSERS_FILE).is_file():  # a cxrgen run folder
            return str(p / "lora"), DIFFUSERS_FILE
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return str(p), files[0].name
        raise ConfigError(f"{p} holds no single LoRA .safetensors file; name the file")
    if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt") or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ConfigError(f"LoRA {path}: no such file or folder")  # not a hub id ('name' or 'namespace/name')
    return path, None  # a hub id


def lora_file(path: str) -> Path | None:
    """The weights file that loading `path` reads: the local file, or for a hub id the one diffusers picks from
    the local hub cache (None when the repo is not cached there)."""
    folder, name = lora_source(path)
    if name is not None:
        return Path(folder) / name
    snapshot = hub_snapshot(folder)
    files = sorted(snapshot.glob("*.safetensors")) if snapshot is not None else []
    chosen = [f for f in files if f.name == DIFFUSERS_FILE] or files
    return chosen[0] if len(chosen) == 1 else None


def lora_digest(path: str) -> str:
    """What identifies a LoRA in cache keys and provenance: the first 16 hex digits of its file's sha256."""
    file = lora_file(path)
    return file_sha256(file)[:16] if file is not None else f"{path}@uncached"


def stack_loras(components: Any, config: LoraConfig) -> dict[str, float]:
    """Load the stacked LoRAs. 'merged' folds them into the base weights; 'frozen' keeps them as adapters that
    stay active and untrained. Returns the frozen adapters with their weights."""
    if not config.stack:
        return {}
    pipe = _pipeline(components)
    weights = config.stack_weights or [1.0] * len(config.stack)
    names = [f"stack{i}" for i in range(len(config.stack))]
    for name, path in zip(names, config.stack, strict=True):
        folder, weight_name = lora_source(path)
        try:
            pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load stacked LoRA {path}: {exc}") from exc
    pipe.set_adapters(names, adapter_weights=weights)
    if config.stack_mode == "merged":
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
        log.info("merged %d stacked LoRA(s) into the base weights", len(names))
        return {}
    log.info("stacked %d frozen LoRA(s): %s", len(names), ", ".join(config.stack))
    return dict(zip(names, weights, strict=True))


def add_trainable_lora(components: Any, config: LoraConfig, frozen: dict[str, float]) -> None:
    """Add the "cxrgen" adapter to the UNet (and the text encoder if asked), active beside any frozen ones,
    and make its parameters, and only them, trainable."""
    from peft import LoraConfig as PeftLoraConfig

    unet_cfg = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha or config.rank,
        lora_dropout=config.dropout,
        init_lora_weights="gaussian",
        target_modules=config.targets,
    )
    components.unet.add_adapter(unet_cfg, adapter_name=TRAIN)
    if config.text_encoder:
        rank = config.text_encoder_rank or config.rank
        te_cfg = PeftLoraConfig(
            r=rank,
            lora_alpha=rank if config.alpha is None else config.alpha,
            lora_dropout=config.dropout,
            init_lora_weights="gaussian",
            target_modules=config.text_encoder_targets,
        )
        components.text_encoder.add_adapter(te_cfg, adapter_name=TRAIN)
    _pipeline(components).set_adapters([*frozen, TRAIN], adapter_weights=[*frozen.values(), 1.0])
    for model in (components.unet, components.text_encoder):  # activating adapters marks them all trainable
        for name, param in model.named_parameters():
            param.requires_grad_(f".{TRAIN}." in name and "lora_" in name)


def trainable_parameters(*models: Any) -> list[torch.nn.Parameter]:
    return [p for m in models for p in m.parameters() if p.requires_grad]


def lora_state_dicts(unet: Any, text_encoder: Any, with_text_encoder: bool) -> tuple[dict, dict | None]:
    """The trained adapter in diffusers' key format, with alpha / rank folded into the up (B) matrices: loaders
    of both file formats assume alpha = rank when the file does not say, and the kohya export says alpha = rank."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def state(model: Any) -> dict:
        # one rank and alpha for every module, as add_trainable_lora sets them
        config = model.peft_config[TRAIN]
        scale = config.lora_alpha / config.r
        weights = get_peft_model_state_dict(model, adapter_name=TRAIN, save_embedding_layers=False)
        weights = {k: v * scale if ".lora_B." in k and scale != 1 else v for k, v in weights.items()}
        return convert_state_dict_to_diffusers(weights)

    return state(unet), state(text_encoder) if with_text_encoder else None


def kohya_base_version(cross_attention_dim: int, prediction_type: str) -> str:
    """kohya's `ss_base_model_version`, which UIs read to match a LoRA to its base: SD 2.x has a 1024-wide text
    encoder (SD 1.x 768), and its 768 px models predict v."""
    if cross_attention_dim != 1024:
        return "sd_v1"
    return "sd_v2_768_v" if prediction_type == "v_prediction" else "sd_v2_512"


def save_lora(
    folder: Path, unet: Any, text_encoder: Any, with_text_encoder: bool, metadata: dict[str, str]
) -> dict[str, Path]:
    """Write the diffusers file (loads with `load_lora_weights`) and a kohya/A1111-style file."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    unet_sd, te_sd = lora_state_dicts(unet, text_encoder, with_text_encoder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, safe_serialization=True
    )
    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(folder / DIFFUSERS_FILE)))
    save_file(
        {k: v.contiguous() for k, v in kohya.items()},
        folder / KOHYA_FILE,
        metadata={"ss_network_module": "networks.lora", **metadata},
    )
    return {"diffusers": folder / DIFFUSERS_FILE, "kohya": folder / KOHYA_FILE}
