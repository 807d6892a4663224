"""`cxrgen demo`: the whole pipeline on phantom data, offline, on a CPU.

Phantom release -> prepare -> tiny model -> LoRA training with sample grids; each later stage joins when it lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import option
from .filters import FilterConfig
from .imaging import ImageConfig
from .models import ModelConfig
from .phantom import write_release
from .prepare import PrepareConfig, print_summary, run_prepare
from .train.config import OptimConfig, TrainConfig


@dataclass
class DemoConfig:
    out: str = option("demo-output", "folder for everything the demo writes")
    n: int = option(160, "phantom images")
    size: int = option(64, "training image size (the tiny demo model works at 64 px)")
    seed: int = option(0, "seed for the phantom release and every later stage")
    workers: int = option(0, "worker processes (0: all cores)")
    steps: int = option(60, "LoRA training steps")


def run_demo(config: DemoConfig) -> int:
    from .models import TinyModelConfig, make_tiny_model
    from .train.command import print_summary as print_train_summary
    from .train.command import run_train_config

    start = time.perf_counter()
    out = Path(config.out)
    release = out / "release"
    print(f"[1/4] phantom release: {config.n} PadChest-format 16-bit images in {release}")
    write_release(release, n=config.n, seed=config.seed, size=max(384, config.size * 4))
    print("[2/4] prepare: filters, prompts, image conversion, QC, patient-level splits")
    prepared = run_prepare(
        PrepareConfig(
            source="padchest", csv=str(release / "phantom_padchest.csv.gz"), images=str(release),
            out=str(out / "prepared"), seed=config.seed, workers=config.workers,
            filters=FilterConfig(), image=ImageConfig(size=config.size),
        )
    )  # fmt: skip
    print_summary(prepared)
    model = out / "tiny-model"
    print(f"[3/4] a tiny random Stable Diffusion model (offline) in {model}")
    if not (model / "model_index.json").is_file():
        make_tiny_model(TinyModelConfig(out=str(model), image_size=config.size, seed=config.seed))
    print(f"[4/4] LoRA training, {config.steps} steps, with sample grids")
    trainer, summary = run_train_config(
        TrainConfig(
            data=str(out / "prepared"), out=str(out / "run"), model=ModelConfig(base=str(model)), seed=config.seed,
            max_steps=config.steps, batch_size=4, sample_every=max(1, config.steps // 2), sample_steps=10,
            val_every=max(1, config.steps // 2), checkpoint_every=max(1, config.steps // 2), log_every=5,
            cache_dir=str(out / "cache"), optim=OptimConfig(learning_rate=1e-3), resume="latest" if (out / "run" / "checkpoints").is_dir() else None,
        )
    )  # fmt: skip
    print_train_summary(trainer, summary)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Artefacts:")
    print(f"  release          {release}")
    print(f"  prepared dataset {out / 'prepared'}")
    print(f"  training run     {out / 'run'} (sample grids in {out / 'run' / 'samples'})")
    print("With real data and a real base model:")
    print(
        "  cxrgen prepare --source padchest --csv <PadChest CSV> --images <image root> --out data/padchest-512"
    )
    print(
        "  cxrgen train --preset gpu-8gb --data data/padchest-512 --model.base stable-diffusion-v1-5/stable-diffusion-v1-5 --out runs/cxr"
    )
    return 0
