"""Generation speed on one GPU: SD 1.5 architecture (random weights), 512 px, 25 DPM-Solver++ steps, bf16, batch
1 and 16, cxrgen (eager and compiled; --only tuned adds PyTorch's tuned inductor settings) beside plain diffusers.
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
EXPERIMENTS = [("cxrgen compiled-tuned", 16, 64)]  # run only when --only names them
# inductor settings of PyTorch's "Diffusion, fast" recipe, tried on top of plain compilation
TUNED = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out/gpu_generate"))
    parser.add_argument(
        "--work", default="/tmp/cxrgen-gpu-generate", help="where the model is built (or found)"
    )
    parser.add_argument("--only", nargs="*", help="run only rows whose 'tool batch' contains one of these")
    args = parser.parse_args()
    if args.only:
        runs = [r for r in RUNS + EXPERIMENTS if any(key in f"{r[0]} {r[1]}" for key in args.only)]
    else:
        runs = RUNS
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_generate.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    from diffusers import StableDiffusionPipeline

    from cxrgen.generate.config import GenerateConfig
    from cxrgen.generate.runner import Generator
    from cxrgen.models import ModelConfig, TinyModelConfig, make_tiny_model
    from cxrgen.sampling import make_scheduler

    work = Path(args.work)
    model = work / "sd15"
    if not (model / "model_index.json").is_file():
        make_tiny_model(TinyModelConfig(out=str(model), arch="sd15", image_size=512))
    prompt = "chest x-ray, age 60 female, view PA, projection PA, diagnosis pleural effusion, loc left"
    results = []
    if any(r[0] == "diffusers" for r in runs):
        pipe = StableDiffusionPipeline.from_pretrained(
            model, torch_dtype=torch.bfloat16, safety_checker=None
        ).to("cuda")
        pipe.scheduler = make_scheduler("dpmsolver++", pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        for _, batch, n in [r for r in runs if r[0] == "diffusers"]:
            pipe([prompt] * batch, num_inference_steps=25, height=512, width=512)  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(n // batch):
                pipe([prompt] * batch, num_inference_steps=25, height=512, width=512, output_type="np")
            torch.cuda.synchronize()
            results.append(
                {"tool": "diffusers", "batch": batch, "images_per_s": n / (time.perf_counter() - start)}
            )
            print(json.dumps(results[-1]), flush=True)
        del pipe
        torch.cuda.empty_cache()

    def config(out: Path, count: int, batch: int, compiled: bool) -> GenerateConfig:
        shutil.rmtree(out, ignore_errors=True)
        return GenerateConfig(out=str(out), model=ModelConfig(base=str(model)), prompt=[prompt], n=count,
                              batch_size=batch, steps=25, size=512, dtype="bf16", compile=compiled)  # fmt: skip

    for tool, batch, n in [r for r in runs if r[0] != "diffusers"]:
        if "tuned" in tool:
            import torch._inductor.config as inductor

            torch._dynamo.reset()  # compile afresh with these settings
            for key, value in TUNED.items():
                setattr(inductor, key, value)
        # one extra first batch warms up (and compiles, when asked to); the rate counts the batches after it
        summary = Generator(config(work / f"cxrgen-{batch}", n + batch, batch, "compiled" in tool)).run()
        results.append({"tool": tool, "batch": batch, "images_per_s": summary["steady_images_per_s"],
                        "whole_run_images_per_s": summary["images_per_s"], "seconds": summary["seconds"],
                        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name(0)}; SD 1.5 architecture, 512 px, 25 steps, bf16")
    for r in results:
        print(f"{r['tool']:16s} batch {r['batch']:3d}: {r['images_per_s']:7.2f} img/s")
    best = max(
        (r["images_per_s"] for r in results if r["tool"] != "diffusers" and r["batch"] == 16), default=0.0
    )
    print(f"target >= 10 img/s at batch 16: {'PASS' if best >= 10 else 'FAIL'} ({best:.2f})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_generate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
