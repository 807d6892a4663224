"""Where one GPU spends a training step and a sampling step: SD 1.5 architecture, random weights, 512 px, bf16.

The bare UNet, without cxrgen around it, in the variants that decide speed (batch size, channels-first against
channels-last convolutions, per-tensor against fused AdamW, cuDNN's autotuner), each timed over several steps
after warm-up; then one profiled step of each kind, giving GPU busy time against wall time (is the step
launch-bound?) and the kernel families that take the time (convolutions, matrix products, attention, norms,
elementwise). Also the attention backends on SD 1.5's largest attention shape and the VAE decoder. Figures give
TFLOP/s against the 790 TFLOP/s bf16 matrix rate measured on this workplace's H100 and H200.

On the device machine (diffusers carried as a wheel, see gpu_train.py):
  python3 benchmarks/gpu_profile.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

PEAK = 790e12
PROFILE_TABLES = Path("gpu_profile_tables.txt")  # set under --out in main
FAMILIES = [  # first match wins; names of cuDNN, cuBLAS, CUTLASS, flash-attention and PyTorch kernels
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("convolution", ("conv", "cudnn", "xmma_fprop", "dgrad", "wgrad", "implicit", "nhwc", "nchw")),
    ("matmul", ("gemm", "cutlass", "nvjet", "cublas", "sm90_xmma", "splitk")),
    ("norm", ("group_norm", "layer_norm", "norm")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
]


def family(name: str) -> str:
    low = name.lower()
    return next((fam for fam, keys in FAMILIES if any(k in low for k in keys)), "elementwise/other")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(step, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - start) / repeats


def profile(label: str, step, steps: int = 2) -> dict:
    """Wall time and GPU kernel time per step, and kernel time by family."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - start) / steps
    by_family: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    launches = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            us = event.time_range.elapsed_us()  # a kernel's own duration
            by_family[family(event.name)] += us / 1e6 / steps
            kernels[event.name[:90]] += us / 1e6 / steps
            launches += 1
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)
    with open(PROFILE_TABLES, "a", encoding="utf-8") as fh:
        fh.write(f"\n# {label}: wall {wall * 1e3:.1f} ms per step\n{table}\n")
    busy = sum(by_family.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    return {
        "wall_ms": wall * 1e3,
        "gpu_busy_ms": busy * 1e3,
        "busy_share": busy / wall if wall else None,
        "kernels_per_step": launches / steps,
        "by_family_ms": {k: round(v * 1e3, 2) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(name, round(v * 1e3, 2)) for name, v in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out/gpu_profile"))
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU: checks this script runs")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from cxrgen.model.random_weights import SD15, TINY

    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("gpu_profile.py needs a CUDA GPU (or --smoke)")
    dev, spec = ("cpu", TINY) if args.smoke else ("cuda", SD15)
    side, ctx = (8, 64) if args.smoke else (64, 768)  # latent side, text embedding width
    big, sample_b, heads, head_dim = (4, 4, 4, 16) if args.smoke else (32, 32, 8, 40)
    gpu = torch.cuda if dev == "cuda" else None
    results: dict = {"device": gpu.get_device_name(0) if gpu else "cpu", "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global PROFILE_TABLES
    PROFILE_TABLES = out / "gpu_profile_tables.txt"
    PROFILE_TABLES.unlink(missing_ok=True)

    def save(key: str, value) -> None:
        results[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)
        (out / "gpu_profile.json").write_text(json.dumps(results, indent=2))

    torch.manual_seed(0)
    with torch.device(dev):
        unet = UNet2DConditionModel(**spec["unet"])
    unet.train()

    def batch(b: int, dtype=torch.float32, channels_last: bool = False):
        x = torch.randn(b, 4, side, side, device=dev, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (b,), device=dev)
        emb = torch.randn(b, 77, ctx, device=dev, dtype=dtype)
        return x, t, emb

    # -- training: full fine-tuning, float32 master weights under bf16 autocast, as cxrgen trains -----------------
    def train_case(b: int, channels_last: bool, fused: bool, benchmark: bool, compiled: bool = False):
        torch.backends.cudnn.benchmark = benchmark
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-6, fused=fused, foreach=None if fused else True)
        model = torch.compile(unet) if compiled else unet
        x, t, emb = batch(b, channels_last=channels_last)
        noise = torch.randn_like(x)

        def step():
            with torch.autocast(dev, dtype=torch.bfloat16):
                pred = model(x.to(torch.bfloat16), t, emb.to(torch.bfloat16)).sample
            F.mse_loss(pred.float(), noise).backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, opt

    counter = FlopCounterMode(display=False)
    step, opt = train_case(1, False, True, False)
    with counter:
        step()
    train_flops = counter.get_total_flops()  # one image, forward and backward
    save("train_tflop_per_image", train_flops / 1e12)
    del opt
    cases = [
        (8, False, False, False),
        (8, True, True, False),
        (big, True, True, False),
        (big, True, True, True),
    ]
    for b, cl, fused, bench in cases:
        step, opt = train_case(b, cl, fused, bench)
        seconds = timed(step, 3, 6)
        name = f"train b{b} {'channels-last' if cl else 'NCHW'} {'fused' if fused else 'foreach'} AdamW" + (
            " cudnn-benchmark" if bench else ""
        )
        save(
            name,
            {
                "images_per_s": round(b / seconds, 2),
                "mfu": round(b * train_flops / seconds / PEAK, 4),
                "peak_gb": round(gpu.max_memory_allocated() / 2**30, 2) if gpu else None,
            },
        )
        del opt
        if gpu:
            gpu.empty_cache()
            gpu.reset_peak_memory_stats()
    for b in (big,):
        step, opt = train_case(b, True, True, False)
        label = f"profile train b{b} channels-last fused"
        save(label, profile(label, step))
        del opt

    # -- sampling: pure bf16 weights, 32 latents per call (batch 16 with classifier-free guidance) ---------------
    if gpu:
        gpu.empty_cache()
    unet.requires_grad_(False).eval().to(torch.bfloat16)
    with torch.no_grad():
        x, t, emb = batch(sample_b, torch.bfloat16)
        t = t[:1].expand(sample_b)  # one timestep per call, as in sampling
        with counter:
            unet(x, t, emb)
        call_flops = counter.get_total_flops()
        save("sample_tflop_per_unet_call_32_latents", call_flops / 1e12)
        for cl, bench in ((False, False), (True, False)):
            torch.backends.cudnn.benchmark = bench
            unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xi = x.contiguous(memory_format=torch.channels_last) if cl else x
            seconds = timed(lambda xi=xi: unet(xi, t, emb), 3, 10)
            save(
                f"sample UNet call, 32 latents, {'channels-last' if cl else 'NCHW'}"
                + (" cudnn-benchmark" if bench else ""),
                {
                    "ms": round(seconds * 1e3, 2),
                    "mfu": round(call_flops / seconds / PEAK, 4),
                    "img_per_s_if_only_unet_25_steps_b16": round(16 / (25 * seconds), 2),
                },
            )
        torch.backends.cudnn.benchmark = False
        unet.to(memory_format=torch.channels_last)
        xi = x.contiguous(memory_format=torch.channels_last)
        label = "profile sample UNet call channels-last"
        save(label, profile(label, lambda: unet(xi, t, emb)))

        # attention on the 64x64 level: 4096 tokens, 8 heads of 40
        from torch.nn.attention import SDPBackend, sdpa_kernel

        tokens = side * side
        qkv = torch.randn(3, sample_b, heads, tokens, head_dim, device=dev, dtype=torch.bfloat16)
        attn_flops = 4 * sample_b * heads * tokens * tokens * head_dim
        for backend in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
        ):
            try:
                with sdpa_kernel(backend):
                    seconds = timed(lambda: F.scaled_dot_product_attention(*qkv), 2, 10)
                save(
                    f"attention 32x8x4096x40 {backend.name}",
                    {"ms": round(seconds * 1e3, 3), "tflops": round(attn_flops / seconds / 1e12, 1)},
                )
            except (RuntimeError, NotImplementedError) as exc:
                save(f"attention 32x8x4096x40 {backend.name}", {"error": str(exc)[:200]})

        # the VAE decoder: 16 latents to 512 px images
        with torch.device(dev):
            vae = AutoencoderKL(**spec["vae"]).to(torch.bfloat16).eval()
        z = torch.randn(sample_b // 2, 4, side, side, device=dev, dtype=torch.bfloat16)
        for cl in (False, True):
            vae.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            zi = z.contiguous(memory_format=torch.channels_last) if cl else z
            seconds = timed(lambda zi=zi: vae.decode(zi).sample, 1, 3)
            save(f"VAE decode 16 latents {'channels-last' if cl else 'NCHW'}", {"ms": round(seconds * 1e3, 1)})

    print("\nsummary")
    for key, value in results.items():
        if isinstance(value, dict) and "top_kernels_ms" not in value:
            print(f"  {key:60s} {value}")
        elif isinstance(value, dict):
            print(
                f"  {key}: wall {value['wall_ms']:.1f} ms, GPU busy {value['gpu_busy_ms']:.1f} ms, "
                f"{value['kernels_per_step']:.0f} kernels; {value['by_family_ms']}"
            )


if __name__ == "__main__":
    main()
