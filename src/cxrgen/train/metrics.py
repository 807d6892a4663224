"""Throughput, model-FLOPs utilisation and the run's logs (TensorBoard and metrics.jsonl)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import read_jsonl_lines, write_jsonl

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


class RunLog:
    """Scalars to TensorBoard and to metrics.jsonl (which the report reads); images to TensorBoard."""

    def __init__(self, folder: Path, enabled: bool, resumed_step: int | None = None):
        """`resumed_step`: a resumed run drops what the interrupted one logged after its checkpoint, as the steps
        are logged again."""
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(folder / "logs"), purge_step=resumed_step)
            path = folder / "metrics.jsonl"
            if resumed_step is not None and path.is_file():
                write_jsonl(path, [r for r in read_jsonl_lines(path) if r.get("step", 0) <= resumed_step])
            self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
        for key, value in clean.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self.jsonl.flush()

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        if self.enabled:
            self.writer.add_image(tag, pixels, step, dataformats="HW")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


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


def memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def describe(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
