"""Throughput, model-FLOPs utilisation and memory, as the run logs them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Dense bf16/fp16 matrix throughput people actually reach on each card (TFLOP/s); MFU is relative to this.
PEAK_TFLOPS = {
    "H100": 790.0,
    "H200": 790.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "4090": 165.0,
    "3090": 71.0,
    "3080": 59.0,
    "3070": 43.0,
    "A6000": 155.0,
    "V100": 125.0,
    "T4": 65.0,
}


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def measure_flops(step: Callable[[], torch.Tensor]) -> float:
    """FLOPs of one call of `step` (forward and backward), counted by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = step()
        loss.backward()
    return float(counter.get_total_flops())


class Throughput:
    """Images per second over a sliding window of steps."""

    def __init__(self, window: int = 20):
        self.window = window
        self.marks: list[tuple[float, int]] = []

    def update(self, images: int) -> float | None:
        now = time.perf_counter()
        total = (self.marks[-1][1] if self.marks else 0) + images
        self.marks.append((now, total))
        self.marks = self.marks[-self.window :]
        if len(self.marks) < 2:
            return None
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def memory_figures(device: torch.device) -> dict[str, float | None]:
    """Memory in GiB, on every device: the peaks allocated and reserved by PyTorch on a GPU; on a CPU the
    process's resident set now and at its peak."""
    if device.type == "cuda":
        return {
            "perf/gpu_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "perf/gpu_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {"perf/rss_gb": resident_gb(), "perf/peak_rss_gb": peak_resident_gb()}


def resident_gb() -> float | None:
    """The resident set size of this process now (Linux; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_resident_gb() -> float | None:
    """The largest resident set size this process has had (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20  # bytes on macOS, KiB on Linux


def describe(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
