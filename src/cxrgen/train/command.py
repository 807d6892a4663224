"""`cxrgen train`: run the trainer, export the weights, write run.json, print a summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..fileio import write_json
from ..provenance import provenance
from .adapters import kohya_base_version, save_lora
from .config import TrainConfig
from .trainer import Trainer, TrainingDiverged

log = logging.getLogger(__name__)
EXIT_DIVERGED = 3
EXIT_OOM = 4
OOM_HINT = (
    "the GPU ran out of memory. Lower it with a smaller preset (--preset gpu-8gb or gpu-16gb), or with "
    "--gradient-checkpointing, --mixed-precision fp16 (or bf16), --batch-size 1 with --grad-accum N, "
    "--optim.optimizer adamw8bit, --method lora, or a lower --resolution."
)


def export(trainer: Trainer) -> dict[str, str]:
    """Final weights: a LoRA (diffusers + kohya files) or a full diffusers pipeline folder."""
    c, acc, out = trainer.c, trainer.accelerator, trainer.out
    outputs: dict[str, str] = {}
    acc.wait_for_everyone()
    if not trainer.is_main:
        return outputs
    unet = acc.unwrap_model(trainer.unet)
    text_encoder = acc.unwrap_model(trainer.text_encoder)
    if c.method == "lora":
        meta = {
            "cxrgen_base_model": trainer.identity,
            "cxrgen_steps": str(trainer.step),
            "ss_base_model_version": kohya_base_version(unet.config.cross_attention_dim, trainer.m.prediction_type),
        }
        files = save_lora(out / "lora", unet, text_encoder, c.lora.text_encoder, meta)
        outputs = {k: str(v) for k, v in files.items()}
    else:
        from diffusers import StableDiffusionPipeline

        if trainer.ema is not None:
            trainer.ema.copy_to([p for p in unet.parameters() if p.requires_grad])
        m = trainer.m
        vae, text_encoder, unet = (_float32(x) for x in (m.vae, text_encoder, unet))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=m.tokenizer,
            unet=unet,
            scheduler=m.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(out / "pipeline", safe_serialization=True)
        outputs = {"pipeline": str(out / "pipeline")}
    return outputs


def _float32(model: Any) -> Any:
    """Saved pipelines are float32 whatever the training precision."""
    return model if next(model.parameters()).dtype == torch.float32 else model.to(torch.float32)


def prompt_settings(data: str) -> dict[str, Any] | None:
    """The prepared dataset's prompt settings, so generation asks in the words training used."""
    path = Path(data) / "prepare.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("tokens", {}).get("prompt")


def run_train(config: TrainConfig) -> int:
    """The command: train, then print the summary. Exit codes: 3 diverged, 4 out of memory."""
    try:
        trainer, summary = run_train_config(config)
    except TrainingDiverged as exc:
        print(f"cxrgen train: stopped: {exc}")
        return EXIT_DIVERGED
    except torch.cuda.OutOfMemoryError:
        print(f"cxrgen train: {OOM_HINT}")
        return EXIT_OOM
    if trainer.is_main:
        print_summary(trainer, summary)
    return 0


def run_train_config(config: TrainConfig) -> tuple[Trainer, dict[str, Any]]:
    """Set up, fit, export; write run.json. Returns the trainer and the summary."""
    start = time.perf_counter()
    trainer = Trainer(config)
    try:
        trainer.setup()
        trainer.fit()
        outputs = export(trainer)
    finally:
        if hasattr(trainer, "log"):
            trainer.close()
    summary = run_summary(trainer, outputs, time.perf_counter() - start)
    if trainer.is_main:
        write_json(trainer.out / "run.json", summary)
    return trainer, summary


def run_summary(trainer: Trainer, outputs: dict[str, str], seconds: float) -> dict[str, Any]:
    c = trainer.c
    recent = trainer.history[-50:]
    return {
        **provenance(),
        "config": to_dict(c),
        "data": {
            "folder": c.data,
            "split": c.split,
            "metadata_sha256": trainer.data.digest,
            "images": len(trainer.data),
        },
        "prompts": prompt_settings(c.data),
        "long_prompts": c.long_prompts,
        "base_model": {
            "source": c.model.base,
            "identity": trainer.identity,
            "prediction_type": trainer.m.prediction_type,
        },
        "stack": [{"path": p, "identity": i} for p, i in zip(c.lora.stack, trainer.stack_identity, strict=True)],
        "resolution": trainer.resolution,
        "processes": trainer.world,
        "outputs": outputs,
        "figures": {
            "steps": trainer.step,
            "train_loss_last50": round(sum(recent) / len(recent), 6) if recent else None,
            "val_loss": trainer.val_loss,
            "images_per_s": getattr(trainer, "rate", None),
            "mfu": getattr(trainer, "mfu", None),
            "flops_per_image": trainer.flops_per_image,
            "peak_memory_gb": _peak_memory(trainer),
            "seconds": round(seconds, 1),
        },
    }


def _peak_memory(trainer: Trainer) -> float | None:
    if trainer.device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(trainer.device) / 2**30, 3)
    return None


def print_summary(trainer: Trainer, summary: dict[str, Any]) -> None:
    f = summary["figures"]
    print(
        f"trained {f['steps']} steps in {f['seconds']:.0f} s: "
        f"train loss {f['train_loss_last50']}, val loss {f['val_loss']}"
    )
    for name, path in summary["outputs"].items():
        print(f"  {name:10s} {path}")
    print(f"  samples    {trainer.out / 'samples'}")
    print(f"  logs       tensorboard --logdir {trainer.out / 'logs'}")
    print(f"  run        {trainer.out / 'run.json'}")
