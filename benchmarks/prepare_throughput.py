"""Image conversion throughput: ~2,000 px 16-bit PNGs to 512 px 8-bit, against only decoding the same files.

Targets (issue 2): conversion at least 0.8x the decode-only rate per worker, near-linear scaling with workers.
Run: .venv/bin/python benchmarks/prepare_throughput.py [--images 48] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrgen.imaging import ImageConfig
from cxrgen.phantom import render
from cxrgen.prepare.jobs import Job, run_jobs


def make_images(folder: Path, n: int) -> list[Path]:
    """PadChest-like sources: 12-bit data scaled to 16 bits, 1,700-2,900 px, not square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            h = int(rng.integers(1900, 2900))
            w = int(h * rng.uniform(0.75, 1.0))
            Image.fromarray(render(h, w, [("pleural effusion", ("left",))] if i % 3 == 0 else [], seed=i)).save(path)
        paths.append(path)
    return paths


def decode_only(path: Path) -> int:
    """Decoding alone: the file's pixels in memory, as Pillow holds them."""
    with Image.open(path) as im:
        im.load()
        return im.height


def rate_decode(paths: list[Path], workers: int) -> float:
    t = time.perf_counter()
    if workers == 1:
        for p in paths:
            decode_only(p)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap_unordered(decode_only, paths, chunksize=2))
    return len(paths) / (time.perf_counter() - t)


def rate_convert(paths: list[Path], workers: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    jobs = [Job(p.stem, str(p), str(out / "train" / f"{p.stem}.png")) for p in paths]
    t = time.perf_counter()
    results = run_jobs(jobs, ImageConfig(resolution=512), out / "journal.jsonl", workers)
    seconds = time.perf_counter() - t
    assert all(r.status == "ok" for r in results.values()), [r.reason for r in results.values() if r.status != "ok"]
    return len(paths) / seconds


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = Path(__file__).parent / "out" / "throughput"
    t = time.perf_counter()
    paths = make_images(root / "source", args.images)
    sizes = [Image.open(p).size for p in paths]
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(
        f"{len(paths)} source PNGs, {np.mean([w for w, _ in sizes]):.0f}x{np.mean([h for _, h in sizes]):.0f} px mean, "
        f"{mb:.1f} MB each (ready in {time.perf_counter() - t:.0f} s)"
    )
    rate_decode(paths[:4], 1)  # warm the page cache
    rows = []
    for workers in sorted({1, args.workers}):
        d = rate_decode(paths, workers)
        c = rate_convert(paths, workers, root / f"converted-{workers}")
        rows.append((workers, d, c))
    print(f"\n{'workers':>7} {'decode-only img/s':>18} {'convert img/s':>14} {'convert/decode':>15}")
    for workers, d, c in rows:
        print(f"{workers:>7} {d:>18.2f} {c:>14.2f} {c / d:>15.2f}")
    one = rows[0][2]
    for workers, _, c in rows[1:]:
        print(f"scaling 1 -> {workers} workers: {c / one:.2f}x (linear would be {workers:.0f}x)")
    ok = all(c / d >= 0.8 for _, d, c in rows)
    print(f"target convert >= 0.8x decode-only per worker: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    run()
