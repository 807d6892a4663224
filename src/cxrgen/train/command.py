"""`cxrgen train`: build the trainer, fit, export the weights through the method, write run.json."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import to_dict
from ..contracts import PrepareManifest, RunManifest
from ..provenance import portable
from ..sharing.cards import README, model_card
from ..sharing.hub import HubError, push
from ..sharing.terms import data_source
from .config import TrainConfig
from .methods import Exported
from .metrics import peak_resident_gb
from .running import running
from .trainer import Trainer, TrainingDiverged

log = logging.getLogger(__name__)
Config = TrainConfig
EXIT_CODES = {"finished": 0, "diverged": 3, "out of memory": 4, "push failed": 5}
OOM_HINT = (
    "the GPU ran out of memory. Lower it with a smaller preset (--preset gpu-8gb or gpu-16gb), or with "
    "--gradient-checkpointing, --mixed-precision fp16 (or bf16), --batch-size 1 with --grad-accum N, "
    "--optim.optimizer adamw8bit, --method lora, or a lower --resolution."
)


@dataclass
class TrainResult:
    out: Path
    status: Literal["finished", "diverged", "out of memory", "push failed"]
    manifest: RunManifest | None  # None unless finished (and on processes other than the main one)
    message: str = ""  # why it stopped, and what to do


def run(config: TrainConfig) -> TrainResult:
    """Train as `config` says. A run that diverges or runs out of GPU memory returns its status and what to do;
    the last good checkpoint is kept for `--resume latest`."""
    with running(config.out):
        return _train(config)


def _train(config: TrainConfig) -> TrainResult:
    start = time.perf_counter()
    out = Path(config.out)
    try:
        trainer = Trainer(config)
    except torch.cuda.OutOfMemoryError:
        return TrainResult(out, "out of memory", None, OOM_HINT)
    try:
        trainer.fit()
        exported = export(trainer)
    except TrainingDiverged as exc:
        return TrainResult(out, "diverged", None, str(exc))
    except torch.cuda.OutOfMemoryError:
        return TrainResult(out, "out of memory", None, OOM_HINT)
    finally:
        trainer.close()
    if not trainer.is_main:
        return TrainResult(out, "finished", None)
    manifest = run_manifest(trainer, exported, time.perf_counter() - start)
    manifest.write(out)
    (out / README).write_text(model_card(out, manifest, trainer.sample_prompts(), config.push_to_hub))
    if config.push_to_hub:
        try:
            source = data_source(config.data)
            url = push(out, config.push_to_hub, "model", config.hub_private, f"cxrgen train: {config.method}", source)
        except HubError as exc:
            return TrainResult(out, "push failed", manifest, str(exc))
        print(f"pushed to {url}")
    return TrainResult(out, "finished", manifest)


def export(trainer: Trainer) -> Exported:
    """The method writes the final weights (on the main process) and says how to sample from them."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    if not trainer.is_main:
        return Exported({})
    return trainer.method.export(
        trainer.out,
        trainer.components,
        {name: acc.unwrap_model(model) for name, model in trainer.trained.items()},
        trainer.ema,
        {"identity": trainer.identity, "step": trainer.step},
    )


def prompt_settings(data: str) -> dict[str, Any] | None:
    """The prepared dataset's prompt settings, so generation asks in the words training used (None for a folder
    prepared by other means)."""
    if not PrepareManifest.path(data).is_file():
        return None
    return PrepareManifest.read(data).prompt_settings


def run_manifest(trainer: Trainer, exported: Exported, seconds: float) -> RunManifest:
    """run.json. Local paths in it are relative to the run folder (see `portable`)."""
    c = trainer.config
    recent = trainer.history[-50:]
    out = trainer.out
    return RunManifest(
        config=to_dict(c, relative_to=out),
        method=c.method,
        model=to_dict(c.model, relative_to=out),
        base_model={
            "source": portable(c.model.base, out),
            "identity": trainer.identity,
            "family": trainer.family.name,
            "prediction_type": trainer.components.prediction_type,
        },
        stack=[{**s, "path": portable(s["path"], out)} for s in trainer.method.stacked()],
        data={
            "folder": portable(c.data, out),
            "split": c.split,
            "metadata_sha256": trainer.data.digest,
            "images": len(trainer.data),
        },
        prompts=prompt_settings(c.data),
        long_prompts=c.long_prompts,
        resolution=trainer.resolution,
        processes=trainer.world,
        outputs={name: portable(path, out) for name, path in exported.outputs.items()},
        sample_with={"base": exported.base, "adapters": [[portable(p, out), w] for p, w in exported.adapters]},
        figures={
            "steps": trainer.step,
            "train_loss_last50": round(sum(recent) / len(recent), 6) if recent else None,
            "val_loss": trainer.val_loss,
            "images_per_s": trainer.rate,
            "mfu": trainer.mfu,
            "flops_per_image": trainer.flops_per_image,
            "peak_memory_gb": _peak_memory(trainer),
            "peak_rss_gb": round(peak, 3) if (peak := peak_resident_gb()) is not None else None,
            "seconds": round(seconds, 1),
        },
    )


def _peak_memory(trainer: Trainer) -> float | None:
    if trainer.device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(trainer.device) / 2**30, 3)
    return None


def summarize(result: TrainResult) -> int:
    """Print what was trained and where it is. Exit codes: 3 diverged, 4 out of memory, 5 trained, not pushed."""
    if result.status not in ("finished", "push failed"):
        print(f"cxrgen train: {'stopped: ' if result.status == 'diverged' else ''}{result.message}")
        return EXIT_CODES[result.status]
    if result.manifest is None:  # not the main process
        return 0
    f, out = result.manifest.figures, result.out
    losses = f"train loss {f['train_loss_last50']}, val loss {f['val_loss']}"
    print(f"trained {f['steps']} steps in {f['seconds']:.0f} s: {losses}")
    for name, path in result.manifest.outputs.items():
        print(f"  {name:10s} {out / path}")
    print(f"  samples    {out / 'samples'}")
    if (out / "logs").is_dir():  # with --report-to tensorboard
        print(f"  logs       tensorboard --logdir {out / 'logs'}")
    print(f"  run        {RunManifest.path(out)}")
    print(f"  card       {out / README}")
    if result.status == "push failed":
        print(f"cxrgen train: {result.message}")
    return EXIT_CODES[result.status]
