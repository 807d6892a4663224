"""Seconds per LoRA training step: cxrgen against kohya's sd-scripts and diffusers' DreamBooth-LoRA examples.

Equal settings: a random-weight model of the family (`--family`): SD 1.5's architecture, or for SDXL and SD 3.5
Medium their real widths at reduced depth (`cxrgen make-tiny-model --arch reduced`: SDXL's UNet with one transformer
layer per block, SD 3.5 Medium's MMDiT with two blocks, two-layer text encoders), the same 8 images captioned
"chest x-ray", 256 px,
batch 1, LoRA rank 4 (alpha = rank), AdamW at 1e-4, constant schedule, float32, gradient clipping at 1.0, no prior
preservation, no data-loading workers. The trainers:
- kohya `train_network.py` (`--cache_latents --network_train_unet_only --sdpa`), run by kohya_ref.sh, which sets
  sd-scripts up offline in its own virtual environment (CPU torch 2.13.0). kohya adapts every Linear and 1x1
  Conv2d of the transformer blocks: proj_in, proj_out, attention and feed-forward.
- cxrgen with cached latents and text, once with kohya's modules (`--lora.targets`) and once with its default
  (the attention projections to_q, to_k, to_v, to_out.0).
- diffusers' official example (no caching; attention projections), and cxrgen without caching.
- SDXL and SD 3.5 (`--family sdxl|sd3`, `--script` train_dreambooth_lora_sdxl.py / train_dreambooth_lora_sd3.py):
  the example as it runs by default (VAE every step) and, where it offers `--cache_latents` (SD 3's), with it,
  against cxrgen cached and without latent caching. Both examples encode their one instance prompt once before
  training, so cxrgen's uncached run keeps its text cache (the SD 1.5 example encodes the prompt every step, and
  cxrgen then does too). LoRA on each family's default modules, which are the examples' (SD 3.5: the joint
  attention of both streams).

A step's time is read from each trainer's own TensorBoard log, which all three write once a step: the wall-clock
gap between consecutive steps, after WARMUP steps. Start-up, latent caching and saving are left out, and a slow
spell of the shared machine shows as a few long steps rather than moving a whole run. Each round runs every
trainer once, in turn; the estimate is the median step, and each ratio's 95% interval comes from a bootstrap over
rounds, then steps within them, with the rounds drawn alike for both trainers (pairing runs of the same period).
Verdict per target: PASS when the interval's lower bound reaches it, FAIL when its upper bound is below it,
otherwise not shown either way.

Targets (issues 3, 17 and 18): kohya's step / cxrgen's >= 1.1 at kohya's modules and >= 1.0 at cxrgen's default;
the diffusers example's step / cxrgen's >= 1.4 with caching and >= 1.0 without; for SD 3.5 also the
example with cached latents / cxrgen cached >= 1.0 (like for like).

Neither reference is part of cxrgen. Give diffusers' examples/dreambooth/train_dreambooth_lora.py with --script,
a copy of kohya-ss/sd-scripts (work tree or bare git directory) with --sd-scripts, and kohya_ref.sh with
--kohya-ref (default: ../shared/tools/kohya_ref.sh beside the repository).
Run: .venv/bin/python benchmarks/train_speed.py --script PATH --sd-scripts PATH [--rounds 3] [--steps 12]
     .venv/bin/python benchmarks/train_speed.py --family sdxl --script PATH/train_dreambooth_lora_sdxl.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrgen.fileio import write_jsonl
from cxrgen.phantom import render

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out" / "train_speed"
PROMPT = "chest x-ray"
WARMUP = 2  # steps whose gaps are left out: the first steps allocate and warm caches
KOHYA_TARGETS = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
TARGETS = {  # (numerator, denominator, target)
    "kohya / cxrgen at kohya's modules": ("kohya", "cxrgen, kohya's modules", 1.1),
    "kohya / cxrgen at cxrgen's default": ("kohya", "cxrgen", 1.0),
    "diffusers / cxrgen cached": ("diffusers", "cxrgen", 1.4),
    "diffusers / cxrgen uncached": ("diffusers", "cxrgen, no caching", 1.0),
    "diffusers cached / cxrgen cached": ("diffusers, cached latents", "cxrgen", 1.0),
}
ARCHITECTURES = {  # family: (random architecture, image size it is built for, what the summary calls it)
    "sd": ("sd15", 512, "SD 1.5 architecture"),
    "sdxl": ("reduced", 1024, "SDXL widths at reduced depth"),
    "sd3": ("reduced", 1024, "SD 3.5 Medium widths at reduced depth"),
}
UNCACHED = {  # what cxrgen's uncached run leaves out, as the family's diffusers example does
    "sd": ["--no-cache-latents", "--no-cache-text"],
    "sdxl": ["--no-cache-latents"],
    "sd3": ["--no-cache-latents"],
}


def model_folder(family: str) -> Path:
    arch, size, _ = ARCHITECTURES[family]
    folder = Path(__file__).parent / "out" / ("sd15-random" if family == "sd" else f"{family}-{arch}")
    if not (folder / "model_index.json").is_file():
        cmd = [sys.executable, "-m", "cxrgen", "make-tiny-model", "--family", family, "--arch", arch]
        subprocess.run([*cmd, "--image-size", str(size), "--out", str(folder)], check=True)
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


def argv(flags: dict[str, object]) -> list[str]:
    return [str(x) for pair in flags.items() for x in pair]


def official(
    script: str, model: Path, instance: Path, out: Path, steps: int, resolution: int, cache: bool = False
) -> list[str]:
    flags = {
        "--pretrained_model_name_or_path": model,
        "--instance_data_dir": instance,
        "--instance_prompt": PROMPT,
        "--output_dir": out,
        "--resolution": resolution,
        "--train_batch_size": 1,
        "--max_train_steps": steps,
        "--rank": 4,
        "--learning_rate": 1e-4,
        "--lr_scheduler": "constant",
        "--lr_warmup_steps": 0,
        "--seed": 0,
        "--mixed_precision": "no",
        "--checkpointing_steps": 1000000,
        "--dataloader_num_workers": 0,
        "--report_to": "tensorboard",
    }
    return [sys.executable, script, *argv(flags), *(["--cache_latents"] if cache else [])]


def kohya(ref: Path, model: Path, instance: Path, out: Path, steps: int, resolution: int) -> list[str]:
    return [
        "bash",
        str(ref),
        str(model),
        str(instance),
        str(resolution),
        str(steps),
        str(out),
        "--logging_dir",
        str(out / "logs"),
    ]


def ours(
    model: Path, prepared: Path, out: Path, steps: int, resolution: int, uncached: list[str], targets: list[str]
) -> list[str]:
    flags = {
        "--data": prepared,
        "--model.base": model,
        "--out": out,
        "--max-steps": steps,
        "--resolution": resolution,
        "--batch-size": 1,
        "--lora.rank": 4,
        "--optim.learning-rate": 1e-4,
        "--optim.lr-scheduler": "constant",
        "--seed": 0,
        "--mixed-precision": "no",
        "--checkpoint-every": 1000000,
        "--sample-every": -1,
        "--val-split": "none",
        "--workers": 1,
        "--log-every": 1,
        "--cache-dir": out / "cache",
    }
    cmd = [sys.executable, "-m", "cxrgen", "train", *argv(flags), *uncached]
    return [*cmd, "--lora.targets", *targets] if targets else cmd


def step_gaps(logs: Path) -> np.ndarray:
    """Seconds between consecutive steps after the warm-up, from the TensorBoard tag logged at the most steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    best: dict[int, float] = {}
    for events in sorted(logs.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            times = {e.step: e.wall_time for e in acc.Scalars(tag)}
            if len(times) > len(best):
                best = times
    steps = sorted(s for s in best if s > WARMUP - 1)
    return np.diff([best[s] for s in steps])


@dataclass
class Run:
    gaps: np.ndarray
    seconds: float  # the whole process
    peak_rss_gb: float


def timed(cmd: list[str], out: Path, env: dict[str, str]) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(out.parent / f'{out.name}.log').read_text()[-4000:]}")
    gaps = step_gaps(out)
    if len(gaps) < 3:
        sys.exit(f"{out}: fewer than 3 logged steps after the warm-up; raise --steps")
    return Run(gaps, seconds, usage.ru_maxrss / 2**20)


def ratio_interval(num: list[np.ndarray], den: list[np.ndarray], draws: int = 2000) -> tuple[float, float, float]:
    """Median step of `num` over median step of `den`, and a 95% bootstrap interval: rounds drawn with
    replacement (the same rounds for both), then steps within each drawn round."""
    rng = np.random.default_rng(0)
    point = float(np.median(np.concatenate(num)) / np.median(np.concatenate(den)))
    rounds = len(num)
    values = []
    for _ in range(draws):
        chosen = rng.integers(0, rounds, rounds)
        a = np.concatenate([rng.choice(num[r], len(num[r])) for r in chosen])
        b = np.concatenate([rng.choice(den[r], len(den[r])) for r in chosen])
        values.append(np.median(a) / np.median(b))
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def verdict(low: float, high: float, target: float) -> str:
    return "PASS" if low >= target else "FAIL" if high < target else "not shown either way"


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=list(ARCHITECTURES), default="sd", help="model family")
    parser.add_argument(
        "--script", help="diffusers' examples/dreambooth/train_dreambooth_lora.py (_sdxl.py, _sd3.py for the families)"
    )
    parser.add_argument("--sd-scripts", help="a copy of kohya-ss/sd-scripts (work tree or bare git directory)")
    parser.add_argument("--kohya-ref", default=str(ROOT.parent / "shared" / "tools" / "kohya_ref.sh"))
    parser.add_argument("--steps", type=int, default=12, help=f"steps per run; the first {WARMUP} are warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="runs per trainer, interleaved")
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args()
    family = args.family
    model = model_folder(family)
    instance, prepared = data(args.resolution)
    r = args.resolution
    trainers: dict[str, tuple[Callable[[Path, int], list[str]], dict[str, str]]] = {
        "cxrgen": (lambda out, n: ours(model, prepared, out, n, r, [], []), {}),
        "cxrgen, no caching": (lambda out, n: ours(model, prepared, out, n, r, UNCACHED[family], []), {}),
    }
    if family == "sd":
        trainers["cxrgen, kohya's modules"] = (lambda out, n: ours(model, prepared, out, n, r, [], KOHYA_TARGETS), {})
    if args.sd_scripts and family == "sd":
        env = {"SD_SCRIPTS": str(Path(args.sd_scripts).resolve())}
        trainers["kohya"] = (lambda out, n: kohya(Path(args.kohya_ref), model, instance, out, n, r), env)
    if args.script:
        trainers["diffusers"] = (lambda out, n: official(args.script, model, instance, out, n, r), {})
        if family != "sd" and "--cache_latents" in Path(args.script).read_text():  # the SD 3 example's option
            trainers["diffusers, cached latents"] = (
                lambda out, n: official(args.script, model, instance, out, n, r, cache=True),
                {},
            )
    runs: dict[str, list[Run]] = {name: [] for name in trainers}
    for round_ in range(args.rounds):
        order = list(trainers) if round_ % 2 == 0 else list(reversed(trainers))  # neither always goes first
        for name in order:
            make, env = trainers[name]
            out = OUT / "runs" / family / name.replace(",", "").replace("'", "").replace(" ", "-")
            result = timed(make(out, args.steps), out, env)
            runs[name].append(result)
            print(
                f"[round {round_ + 1}/{args.rounds}] {name:26s} median step {np.median(result.gaps):6.2f} s "
                f"({len(result.gaps)} steps, {result.gaps.min():.2f}-{result.gaps.max():.2f}), "
                f"process {result.seconds:5.0f} s, peak RSS {result.peak_rss_gb:.1f} GB",
                flush=True,
            )
    print(
        f"\n{ARCHITECTURES[family][2]} (random weights), {r} px, batch 1, LoRA rank 4, fp32, "
        f"{os.cpu_count()} CPU cores, {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'trainer':26s} {'median s/step':>13s}  per round")
    for name, results in runs.items():
        rounds = " ".join(f"{np.median(x.gaps):.2f}" for x in results)
        print(f"{name:26s} {np.median(np.concatenate([x.gaps for x in results])):13.2f}  {rounds}")
    print(f"\n{'ratio (step time)':36s} {'value':>6s}  {'95% interval':>14s}  target  verdict")
    for label, (num, den, target) in TARGETS.items():
        if num not in runs or den not in runs:
            continue
        point, low, high = ratio_interval([x.gaps for x in runs[num]], [x.gaps for x in runs[den]])
        print(f"{label:36s} {point:5.2f}x  [{low:.2f}, {high:.2f}]  {target:5.1f}x  {verdict(low, high, target)}")


if __name__ == "__main__":
    run()
