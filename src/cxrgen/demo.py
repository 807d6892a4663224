"""`cxrgen demo`: the whole pipeline on phantom data, offline, on a CPU, in a few minutes.

phantom release -> prepare -> tiny model (VAE fitted to the phantoms) -> LoRA training with sample grids ->
a labelled synthetic set -> evaluation -> report.html. Every stage runs through the same library code as the
commands; the demo only chooses small settings and prints where each artefact is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

from . import api
from .config import ConfigError, option
from .contracts import MetricsDocument, metadata_path
from .evaluate.extractors import fid_inception_file
from .fileio import write_json
from .model.families import FAMILIES
from .model.random_weights import TinyModelConfig, make_tiny_model
from .phantom import write_release
from .prepare import command as prepare_command
from .train import command as train_command
from .train.vae import fit_vae

STAGES = 6
MEASURED_CORES = 2
# Each stage's seconds with the default settings on an idle machine, measured on the development machine (2 CPU
# cores, issue 19: `cxrgen demo --out /tmp/demo-idle`, 254 s in all, nothing else running).
IDLE_SECONDS = {
    "phantom release": 12.0,
    "prepare": 1.0,
    "tiny model": 169.0,
    "training": 25.0,
    "synthetic set": 7.0,
    "evaluation": 40.0,
}
BUSY = 0.5  # other processes' load per core above which the machine is called busy


@dataclass
class DemoConfig:
    out: str = option("demo-output", "folder for everything the demo writes")
    n: int = option(240, "phantom images")
    resolution: int = option(64, "training image side in pixels (the tiny demo model works at 64 px)")
    family: str = option("sd", f"model family of the tiny model: {', '.join(FAMILIES)}")
    seed: int = option(0, "seed for the phantom release and every later stage")
    workers: int = option(0, "worker processes (0: all cores)")
    vae_steps: int = option(200, "steps fitting the tiny model's VAE to the phantoms")
    steps: int = option(120, "LoRA training steps")
    images: int = option(48, "synthetic images to generate")

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"--family {self.family!r}: choose one of {', '.join(FAMILIES)}")


def slowdown(load: float, cores: int) -> float:
    """How many times longer the demo takes beside `load` other runnable threads than alone: its PyTorch stages use
    every core, so sharing them leaves it cores / (cores + load) of the machine."""
    return 1 + max(load, 0.0) / max(cores, 1)


@dataclass(frozen=True)
class Estimate:
    seconds: float  # the expected time at least: the measured idle time, scaled by how busy the machine is
    busy: bool
    lines: list[str]


def estimate(load: float, cores: int) -> Estimate:
    """How long the demo should take with `load` (the 1-minute load average: other processes' runnable threads,
    the demo not yet started) on `cores` cores: the idle time scaled by `slowdown`. More than that is lost when
    threads that wait for each other are descheduled, which no load figure predicts (45 minutes has been seen on a
    busy machine for about 2.5 idle), so a busy machine's figure is a floor."""
    idle = sum(IDLE_SECONDS.values())
    factor = slowdown(load, cores)
    busy = load / max(cores, 1) > BUSY
    stages = ", ".join(f"{name} {s:.0f} s" for name, s in IDLE_SECONDS.items())
    lines = [f"about {_minutes(idle)} on an idle {MEASURED_CORES}-core machine ({stages})"]
    if cores != MEASURED_CORES:
        lines.append(f"this machine has {cores} cores: the figures above were measured on {MEASURED_CORES}")
    if busy:
        lines.append(
            f"this machine is busy (load {load:.1f} on {cores} cores), so expect at least {_minutes(idle * factor)}, "
            "and maybe much longer: other processes hold the cores the demo's PyTorch threads need, and those threads "
            "wait for each other when any of them is descheduled"
        )
    else:
        lines.append(f"this machine is idle enough (load {load:.1f} on {cores} cores): about {_minutes(idle * factor)}")
    return Estimate(idle * factor, busy, lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _print_estimate(config: DemoConfig) -> None:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    lines = estimate(load, cores).lines
    changed = [
        f"--{f.name.replace('_', '-')} {getattr(config, f.name)}"
        for f in fields(config)
        if f.name not in ("out", "workers", "seed") and getattr(config, f.name) != f.default
    ]
    if changed:
        lines.append(f"measured with the default settings; yours differ ({', '.join(changed)}): a rough guide only")
    print("estimated time: " + "\n  ".join(lines), flush=True)


class _Stages:
    """Prints each stage as it starts, and keeps when, for the time each took (what IDLE_SECONDS holds)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def start(self, k: int, text: str) -> None:
        self.starts.append(time.perf_counter())
        print(f"\n[{k}/{STAGES}] {text}", flush=True)

    def times(self) -> str:
        ends = [*self.starts[1:], time.perf_counter()]
        return ", ".join(f"{name} {e - s:.0f} s" for name, s, e in zip(IDLE_SECONDS, self.starts, ends, strict=False))


Config = DemoConfig


def run(config: DemoConfig) -> Path:
    """Every stage through the Python API, with small settings; returns the report's path."""
    _print_estimate(config)
    start, stages = time.perf_counter(), _Stages()
    out = Path(config.out)
    release, data, model, run_dir, synth, evaluation = (
        out / name for name in ("release", "prepared", "tiny-model", "run", "synthetic", "evaluation")
    )

    stages.start(1, f"phantom release: {config.n} PadChest-format 16-bit images in {release}")
    write_release(release, n=config.n, seed=config.seed, size=256, aspect=(1.0, 1.0))

    stages.start(2, "prepare: label parsing, filters, prompts, image conversion, QC, patient-level splits")
    prepared = api.prepare(
        source="padchest",
        csv=str(release / "phantom_padchest.csv.gz"),
        images=str(release),
        out=str(data),
        seed=config.seed,
        workers=config.workers,
        image={"resolution": config.resolution},
        qc={"min_side": 128},
    )
    prepare_command.summarize(prepared)

    stages.start(3, f"a tiny random model of the {config.family!r} family, its VAE fitted to the phantoms, in {model}")
    # made once per settings; the marker is written last, so a run stopped while fitting the VAE fits it again
    made = model / "demo-model.json"
    settings = {"family": config.family, "resolution": config.resolution, "seed": config.seed}
    settings["vae_steps"] = config.vae_steps
    if not made.is_file() or json.loads(made.read_text()) != settings:
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoints belong to the model being replaced
        tiny = TinyModelConfig(out=str(model), family=config.family, image_size=config.resolution, seed=config.seed)
        make_tiny_model(tiny)
        fit_vae(model, data, steps=config.vae_steps, batch=16, seed=config.seed)
        write_json(made, settings)

    stages.start(4, f"LoRA training, {config.steps} steps, with sample grids and validation loss")
    trained = api.train(
        data=str(data),
        out=str(run_dir),
        model={"base": str(model)},
        seed=config.seed,
        max_steps=config.steps,
        batch_size=8,
        sample_every=max(1, config.steps // 2),
        sample_steps=15,
        sample_seeds=[0, 1, 2],
        val_every=max(1, config.steps // 4),
        checkpoint_every=max(1, config.steps // 2),
        log_every=5,
        cache_dir=str(out / "cache"),
        optim={"learning_rate": 1e-3},
        resume="latest" if (run_dir / "checkpoints").is_dir() else None,
    )
    if train_command.summarize(trained):
        raise RuntimeError(f"the demo's training stopped: {trained.message}")

    stages.start(5, f"a labelled synthetic set: {config.images} images drawn like the prepared training split")
    synthetic = api.generate(
        out=str(synth), run=str(run_dir), like=str(data), n=config.images, steps=15, batch_size=16, seed=config.seed
    )
    images = synthetic.manifest.images if synthetic.manifest else synthetic.made
    print(f"  {images} images with their conditions in {metadata_path(synth, 'train')}")

    stages.start(6, "evaluation (fidelity, diversity, memorization, forgetting) and the report")
    inception = fid_inception_file() is not None  # the standard FID network when its wheel is installed
    extractors = ["inception"] if inception else ["torchvision:resnet18"]
    evaluated = api.evaluate(
        real=str(data),
        real_split="test",
        generated=str(synth),
        train=str(data),
        out=str(evaluation),
        run=str(run_dir),
        extractors=extractors,
        weights=[] if inception else ["torchvision:resnet18=random"],
        fidelity={"groups": 10},
        forgetting={"enabled": True, "images": 2, "steps": 10},
        cache_dir=str(out / "cache"),
        seed=config.seed,
    )
    sections = evaluated.document.sections
    fid = next(iter(sections["fidelity"].values()))["fid"]
    copies = sections["memorization"]["flagged"]
    print(f"  FID ({extractors[0]}) {fid['value']:.1f}; memorization: {copies} likely copies")
    report = evaluated.report

    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s ({stages.times()}). Artefacts:")
    for label, path in (
        ("release", release),
        ("prepared dataset", data),
        ("tiny model", model),
        ("training run", run_dir),
        ("sample grids", run_dir / "samples"),
        ("synthetic set", synth),
        ("metrics", MetricsDocument.path(evaluation)),
        ("report", report),
    ):
        print(f"  {label:17s} {path}")
    print(f"Look at them in the browser: cxrgen app --data {data} --runs {run_dir} --evals {evaluation}")
    print(
        "\nThe tiny model learns little in a few CPU minutes; "
        "benchmarks/learns_conditions.py measures what training learns."
    )
    print("With a real release, a real base model and a GPU:")
    print("  cxrgen prepare --source padchest --csv <PadChest CSV> --images <image root> --out data/padchest-512")
    print(
        "  cxrgen train --preset gpu-8gb --data data/padchest-512 "
        "--model.base stable-diffusion-v1-5/stable-diffusion-v1-5 "
        "--out runs/cxr --prior.enabled"
    )
    print("  cxrgen generate --run runs/cxr --like data/padchest-512 --n 2000 --out synth/cxr")
    print(
        "  cxrgen evaluate --real data/padchest-512 --generated synth/cxr --train data/padchest-512 "
        "--run runs/cxr --out eval/cxr"
    )
    return report


def summarize(report: Path) -> int:
    return 0
