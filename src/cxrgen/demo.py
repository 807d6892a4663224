"""`cxrgen demo`: the whole pipeline on phantom data, offline, on a CPU.

Today it writes a phantom PadChest release and prepares it; each later stage joins when it lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import option
from .filters import FilterConfig
from .imaging import ImageConfig
from .phantom import write_release
from .prepare import PrepareConfig, print_summary, run_prepare


@dataclass
class DemoConfig:
    out: str = option("demo-output", "folder for everything the demo writes")
    n: int = option(160, "phantom images")
    size: int = option(64, "training image size (the tiny demo model works at 64 px)")
    seed: int = option(0, "seed for the phantom release and every later stage")
    workers: int = option(0, "worker processes (0: all cores)")


def run_demo(config: DemoConfig) -> int:
    start = time.perf_counter()
    out = Path(config.out)
    release = out / "release"
    print(f"[1/2] phantom release: {config.n} PadChest-format 16-bit images in {release}")
    write_release(release, n=config.n, seed=config.seed, size=max(384, config.size * 4))
    print("[2/2] prepare: filters, prompts, image conversion, QC, patient-level splits")
    prepared = run_prepare(
        PrepareConfig(
            source="padchest", csv=str(release / "phantom_padchest.csv.gz"), images=str(release),
            out=str(out / "prepared"), seed=config.seed, workers=config.workers,
            filters=FilterConfig(), image=ImageConfig(size=config.size),
        )
    )  # fmt: skip
    print_summary(prepared)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Artefacts:")
    print(f"  release          {release}")
    print(f"  prepared dataset {out / 'prepared'}")
    print(
        "With a real release: cxrgen prepare --source padchest --csv <PadChest CSV> --images <image root> --out <dir>"
    )
    return 0
