"""Generation speed on one GPU: SD 1.5 architecture (random weights), 512 px, 25 DPM-Solver++ steps, bf16, batch
1 and 16, cxrgen (eager and compiled) beside plain diffusers. EXPERIMENTS (run when --only names them, e.g.
--only compiled) try other inductor settings and memory layouts on top of cxrgen's compiled path.
Target (issue 4): at least 10 images/s at batch 16 on an H100. cxrgen rates count the batches after the first
(which warms up and compiles). On an H200 the compiled row took 68 s, mostly compiling.

On the device machine (diffusers carried as a wheel in .whl/, see the device README):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
  python3 benchmarks/gpu_generate.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

RUNS = [
    ("diffusers", 1, 8),
    ("diffusers", 16, 64),
    ("cxrgen", 1, 8),
    ("cxrgen", 16, 64),
    ("cxrgen compiled", 16, 64),
]
# inductor settings of PyTorch's "Diffusion, fast" recipe, tried on top of plain compilation
TUNED = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False}
# name: (inductor settings, channels-last UNet, channels-last VAE); in the order to try them, most promising first
VARIANTS = {
    "cxrgen compiled": ({}, False, False),
    "cxrgen compiled-tuned": (TUNED, False, False),
    # the recipe whole: in channels-last, 1x1 convolutions are plain matrix products
    "cxrgen compiled-tuned-cl": (TUNED, True, True),
    # weights folded in as constants: inductor may then pick the convolutions' weight layouts itself
    "cxrgen compiled-frozen": ({**TUNED, "freezing": True}, False, False),
    "cxrgen compiled-vae-cl": ({}, False, True),
    "cxrgen compiled-cudagraphs": ({"triton.cudagraphs": True}, False, False),  # one launch per UNet call
    "cxrgen compiled-autotune": ({**TUNED, "max_autotune": True}, False, False),  # compiles for minutes
}
EXPERIMENTS = [(name, 16, 64) for name in VARIANTS if name != "cxrgen compiled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out/gpu_generate"))
    parser.add_argument("--work", default="/tmp/cxrgen-gpu-generate", help="where the model is built (or found)")
    parser.add_argument("--only", nargs="*", help="run only rows whose 'tool batch' contains one of these")
    parser.add_argument(
        "--smoke", action="store_true", help="every code path on a CPU: tiny model, 2 steps, small batches"
    )
    args = parser.parse_args()
    if args.only:  # experiments only by name: --only 16 runs the standard rows at batch 16
        runs = [r for r in RUNS if any(key in f"{r[0]} {r[1]}" for key in args.only)]
        runs += [r for r in EXPERIMENTS if any(key in r[0] for key in args.only)]
    else:
        runs = RUNS
    import torch

    if args.smoke:
        device, precision, arch, size, steps = "cpu", "fp32", "tiny", 64, 2
        runs = [(tool, min(batch, 2), 2 * min(batch, 2)) for tool, batch, _ in runs]
    elif torch.cuda.is_available():
        device, precision, arch, size, steps = "cuda", "bf16", "sd15", 512, 25
    else:
        sys.exit("gpu_generate.py needs a CUDA GPU (--smoke runs its code paths on a CPU)")
    torch.backends.cuda.matmul.allow_tf32 = True
    DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
    from diffusers import StableDiffusionPipeline

    from cxrgen.generate.config import GenerateConfig
    from cxrgen.generate.runner import Generator
    from cxrgen.model.loading import ModelConfig
    from cxrgen.model.random_weights import TinyModelConfig, make_tiny_model
    from cxrgen.model.sampling import make_scheduler

    work = Path(args.work)
    model = work / arch
    if not (model / "model_index.json").is_file():
        make_tiny_model(TinyModelConfig(out=str(model), arch=arch, image_size=size))
    prompt = "chest x-ray, age 60 female, view PA, projection PA, diagnosis pleural effusion, loc left"
    results = []

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if any(r[0] == "diffusers" for r in runs):
        pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=DTYPES[precision], safety_checker=None).to(
            device
        )
        pipe.scheduler = make_scheduler("dpmsolver++", pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        for _, batch, n in [r for r in runs if r[0] == "diffusers"]:
            pipe([prompt] * batch, num_inference_steps=steps, height=size, width=size)  # warm-up
            synchronize()
            start = time.perf_counter()
            for _ in range(n // batch):
                pipe([prompt] * batch, num_inference_steps=steps, height=size, width=size, output_type="np")
            synchronize()
            results.append({"tool": "diffusers", "batch": batch, "images_per_s": n / (time.perf_counter() - start)})
            print(json.dumps(results[-1]), flush=True)
        del pipe

    def config(out: Path, count: int, batch: int, compiled: bool) -> GenerateConfig:
        shutil.rmtree(out, ignore_errors=True)
        return GenerateConfig(
            out=str(out),
            model=ModelConfig(base=str(model)),
            prompt=[prompt],
            n=count,
            batch_size=batch,
            steps=steps,
            resolution=size,
            dtype=precision,
            compile=compiled,
        )

    import torch._inductor.config as inductor

    class Variant(Generator):
        """cxrgen's generator with the UNet and/or VAE in channels-last layout."""

        layouts = (False, False)

        def __init__(self, config: GenerateConfig) -> None:
            super().__init__(config)  # compiling happens at the first call, so the layout set here is what compiles
            for module, wanted in zip((self.pipe.unet, self.pipe.vae), self.layouts, strict=True):
                if wanted:
                    module.to(memory_format=torch.channels_last)

    for tool, batch, n in [r for r in runs if r[0] != "diffusers"]:
        settings, *layouts = VARIANTS.get(tool, ({}, False, False))
        torch._dynamo.reset()  # compile afresh under this row's settings
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        Variant.layouts = tuple(layouts)
        # one extra first batch warms up (and compiles, when asked to); the rate counts the batches after it
        try:
            with inductor.patch(settings):
                summary = Variant(config(work / f"cxrgen-{batch}", n + batch, batch, "compiled" in tool)).run()
        except Exception as exc:  # an experiment that fails must not cost the rows after it
            print(
                json.dumps({"tool": tool, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]}),
                flush=True,
            )
            continue
        results.append(
            {
                "tool": tool,
                "batch": batch,
                "images_per_s": summary.steady_images_per_s,
                "whole_run_images_per_s": summary.images_per_s,
                "seconds": summary.seconds,
                "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU smoke run"
    print(f"\n{name}; {arch} model, {size} px, {steps} steps, {precision}")
    for r in results:
        print(f"{r['tool']:24s} batch {r['batch']:3d}: {r['images_per_s']:7.2f} img/s")
    best = max((r["images_per_s"] for r in results if r["tool"] != "diffusers" and r["batch"] == 16), default=0.0)
    if not args.smoke:
        print(f"target >= 10 img/s at batch 16: {'PASS' if best >= 10 else 'FAIL'} ({best:.2f})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_generate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
