"""Keeping freed memory for reuse: fewer fresh pages for a loop that frees and reallocates large tensors."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOOP = """
import random, resource, sys
import torch
from cxrgen.allocator import reuse_freed_memory
if sys.argv[1] == "tuned":
    assert reuse_freed_memory()
rng = random.Random(0)
sizes = [rng.randint(33, 48) << 18 for _ in range(6)]  # floats: 33-48 MiB, over any mapping threshold, as the VAE's
start = None
for step in range(20):  # like training steps: the same activations each time, written, then freed
    held = [torch.ones(n) for n in sizes]
    del held
    if step == 0:  # the first step's pages are new either way
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_not_faulted_in_again():
    def page_faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.split()[-1])

    default, tuned = page_faults("default"), page_faults("tuned")
    assert tuned < 0.2 * default, (tuned, default)
