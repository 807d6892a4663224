"""Images per second: `cxrgen generate` against a plain diffusers StableDiffusionPipeline.

Same model, prompts, steps, sampler (DPM-Solver++ 2M), guidance and batch size; both write 8-bit PNGs (cxrgen
also writes its provenance and metadata, which is part of what is measured). Model loading is excluded; each
configuration runs after a warm-up, cxrgen and diffusers alternating, best of --repeats. Targets (issue 4): at least
1.0x, plus the speed-up of batching. The "lora" setup loads one LoRA (random weights) into both: diffusers as its
`load_lora_weights` leaves it (adapter layers run at each step), cxrgen merged into the weights (its default).
Run: .venv/bin/python benchmarks/generate_speed.py [--setups tiny lora sd15] [--sd15-steps 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from cxrgen.generate.config import GenerateConfig
from cxrgen.generate.runner import Generator
from cxrgen.model.loading import ModelConfig
from cxrgen.model.random_weights import make_random_lora
from cxrgen.model.sampling import make_scheduler

OUT = Path(__file__).parent / "out" / "generate_speed"
PROMPTS = [
    "chest x-ray, age 60 female, view PA, projection PA, diagnosis pleural effusion, loc left",
    "chest x-ray, age 45 male, view PA, projection PA, diagnosis normal",
]


def ensure_model(arch: str, size: int) -> Path:
    folder = Path(__file__).parent / "out" / ("sd15-random" if arch == "sd15" else "tiny-random")
    if not (folder / "model_index.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cxrgen",
                "make-tiny-model",
                "--arch",
                arch,
                "--image-size",
                str(size),
                "--out",
                str(folder),
            ],
            check=True,
        )
    return folder


def ensure_lora(model: Path) -> Path:
    file = model.parent / "lora-random" / "pytorch_lora_weights.safetensors"
    return file if file.is_file() else make_random_lora(model, file.parent)


def diffusers_rate(model: Path, n: int, batch: int, steps: int, size: int, lora: Path | None) -> float:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    if lora is not None:
        pipe.load_lora_weights(lora.parent, weight_name=lora.name)
    pipe.scheduler = make_scheduler("dpmsolver++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = OUT / "diffusers"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    pipe(prompts[:batch], num_inference_steps=steps, height=size, width=size)  # warm-up
    start = time.perf_counter()
    for i in range(0, n, batch):
        generators = [torch.Generator().manual_seed(k) for k in range(i, min(n, i + batch))]
        images = pipe(
            prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=size,
            width=size,
            generator=generators,
        ).images
        for k, image in enumerate(images):
            image.convert("L").save(out / f"{i + k}.png")
    return n / (time.perf_counter() - start)


def cxrgen_rate(model: Path, n: int, batch: int, steps: int, size: int, lora: Path | None) -> float:
    def config(out: Path, count: int) -> GenerateConfig:
        shutil.rmtree(out, ignore_errors=True)
        return GenerateConfig(
            out=str(out),
            model=ModelConfig(base=str(model)),
            prompt=PROMPTS,
            n=count // len(PROMPTS),
            batch_size=batch,
            steps=steps,
            resolution=size,
            loras=[str(lora)] if lora else [],
        )

    Generator(config(OUT / "cxrgen-warm", batch * len(PROMPTS))).run()  # warm-up
    summary = Generator(config(OUT / "cxrgen", n)).run()
    return summary.made / summary.seconds


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-images", type=int, default=32)
    parser.add_argument("--sd15-images", type=int, default=8)
    parser.add_argument("--sd15-steps", type=int, default=5, help="sampling steps for the SD 1.5 model on a CPU")
    parser.add_argument("--sd15-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration; the fastest counts")
    parser.add_argument("--setups", nargs="+", choices=["tiny", "lora", "sd15"], default=["tiny", "lora", "sd15"])
    args = parser.parse_args()
    tiny = ensure_model("tiny", 64)
    setups = {
        "tiny": ("tiny random model, 64 px, 25 steps", tiny, args.tiny_images, 25, 64, (1, 8), None),
        "lora": (
            "tiny model + LoRA (rank 4), 64 px, 25 steps",
            tiny,
            args.tiny_images,
            25,
            64,
            (1, 8),
            ensure_lora(tiny),
        ),
        "sd15": (
            f"SD 1.5 architecture, {args.sd15_size} px, {args.sd15_steps} steps",
            ensure_model("sd15", 512),
            args.sd15_images,
            args.sd15_steps,
            args.sd15_size,
            (1, 4),
            None,
        ),
    }
    print(f"{torch.get_num_threads()} CPU threads; DPM-Solver++ 2M, guidance 7.5")
    print(f"{'model':44s} {'batch':>5s} {'diffusers img/s':>15s} {'cxrgen img/s':>12s} {'ratio':>6s}")
    for name, model, n, steps, size, batches, lora in (setups[key] for key in args.setups):
        rates = {}
        for batch in batches:
            # alternate the two and keep each one's fastest: single runs on a shared CPU vary by about 5%
            d = c = 0.0
            for _ in range(args.repeats):
                d = max(d, diffusers_rate(model, n, batch, steps, size, lora))
                c = max(c, cxrgen_rate(model, n, batch, steps, size, lora))
            rates[batch] = c
            print(f"{name:44s} {batch:5d} {d:15.3f} {c:12.3f} {c / d:5.2f}x", flush=True)
        lo, hi = batches
        print(f"{'':44s} batching {lo} -> {hi}: {rates[hi] / rates[lo]:.2f}x images/s for cxrgen")


if __name__ == "__main__":
    run()
