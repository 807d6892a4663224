"""Processes started by `accelerate launch` or torchrun."""

from __future__ import annotations

import os

import torch


def cpu_processes() -> bool:
    """Several processes on a machine without GPUs: accelerate must be told to use CPU DDP (gloo), or each
    process would think it is alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
