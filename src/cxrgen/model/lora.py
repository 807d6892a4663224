"""LoRA files: where a LoRA's weights are, what identifies them, loading them into a pipeline, and writing them
in diffusers' and kohya's formats. Loading goes through diffusers' own loader (`load_lora_weights`), so anything
diffusers reads can be used: our outputs, kohya/A1111 files, hub LoRAs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..fileio import sort_safetensors_metadata
from ..provenance import file_sha256
from .loading import ModelError, hub_snapshot

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"


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


def load_loras(pipe: Any, adapters: list[tuple[str, float]], prefix: str) -> list[str]:
    """Load each (path, weight) as adapter `<prefix><i>` and activate them all with their weights."""
    names = [f"{prefix}{i}" for i in range(len(adapters))]
    for name, (path, _) in zip(names, adapters, strict=True):
        folder, weight_name = lora_source(path)
        try:
            pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load LoRA {path}: {exc}") from exc
    if names:
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in adapters])
    return names


def save_lora_weights(family: Any, folder: Path, layers: dict[str, dict[str, Any]]) -> Path:
    """Write adapters given in peft's key format, by part name ("unet", "transformer", "text_encoder", ...), as the
    family's diffusers LoRA file (it loads with the pipeline's `load_lora_weights`). Text-encoder keys keep the
    `text_model.` names that kohya, A1111 and older diffusers read (transformers 5 flattened CLIPTextModel)."""
    import diffusers

    for name in list(layers):
        if name.startswith("text_encoder"):
            layers[name] = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in layers[name].items()}
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = getattr(diffusers, family.pipeline_class)
    pipeline.save_lora_weights(
        folder, **{f"{name}_lora_layers": sd for name, sd in layers.items()}, safe_serialization=True
    )
    return folder / DIFFUSERS_FILE


def save_lora_files(
    family: Any, folder: Path, layers: dict[str, dict[str, Any]], metadata: dict[str, str], denoiser_config: Any
) -> dict[str, Path]:
    """The diffusers file, and where the family has one, a kohya/A1111-style file in the family's convention
    (`lora_unet_*`, `lora_te_*`; SDXL's `lora_te1_*`, `lora_te2_*` and its UNet in the original block layout)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    files = {"diffusers": save_lora_weights(family, folder, layers)}
    if family.kohya_export:
        kohya = family.kohya_keys(convert_state_dict_to_kohya(load_file(files["diffusers"])), denoiser_config)
        kohya = {k: v.contiguous() for k, v in kohya.items()}
        save_file(kohya, folder / KOHYA_FILE, metadata={"ss_network_module": "networks.lora", **metadata})
        files["kohya"] = folder / KOHYA_FILE
    for path in files.values():  # the same bytes from a resumed run as from an uninterrupted one
        sort_safetensors_metadata(path)
    return files
