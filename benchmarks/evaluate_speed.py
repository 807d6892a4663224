"""How long `cxrgen evaluate` takes for 2,000 real against 2,000 generated images at 256 px, on this machine.

Two phantom releases with different seeds are prepared at 256 px: one plays the real (and training) set, the other
the generated set. Evaluation runs with the FID Inception network (FID, KID, PRDC with jackknife intervals),
MS-SSIM diversity and memorization against the 2,000 training images; then once more, reading cached features;
then, with --utility-reid, once more with the utility classifiers and the re-identification network at CPU-sized
settings (UTILITY_REID below), whose extra minutes are what they add; and again, reading the trained networks.
Acceptance (issue 5): it runs here, and the time is reported.
Run: .venv/bin/python benchmarks/evaluate_speed.py [--images 2000] [--utility-reid]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cxrgen.cli import main as cli
from cxrgen.contracts import MetricsDocument

OUT = Path(__file__).parent / "out" / "evaluate_speed"
# The small CNN at 64 px: CPU-sized networks (ResNet-18 takes seconds a step on 2 cores; a GPU affords the defaults).
# Only their time counts here: the real set is also the training set, so their figures mean nothing.
UTILITY_REID = ["--utility", "--utility.arch", "cnn", "--utility.size", "64", "--utility.steps", "300"]
UTILITY_REID += ["--utility.fractions", "0.1", "0.25", "0.5", "1"]
UTILITY_REID += ["--reid", "--reid.arch", "cnn", "--reid.size", "64", "--reid.steps", "400", "--reid.dim", "64"]


def run(cmd: list[str]) -> None:
    code = cli(cmd)
    if code != 0:
        raise SystemExit(f"failed ({code}): cxrgen {' '.join(cmd)}")


def dataset(name: str, n: int, seed: int) -> Path:
    """A prepared phantom dataset with at least n frontal images in its train split (reused when present)."""
    release, data = OUT / f"{name}-release", OUT / name
    if not (data / "train" / "metadata.jsonl").is_file():
        # a fifth of phantom studies are lateral and filtered out, as in PadChest
        run(["phantom", "--out", str(release), "--n", str(int(n * 1.3)), "--size", "320", "--seed", str(seed)])
        run(
            [
                "prepare",
                "--source",
                "padchest",
                "--csv",
                str(release / "phantom_padchest.csv.gz"),
                "--images",
                str(release),
                "--out",
                str(data),
                "--image.resolution",
                "256",
                "--qc.contact-sheet",
                "0",
                "--splits.train",
                "1",
                "--splits.val",
                "0",
                "--splits.test",
                "0",
            ]
        )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images per set")
    parser.add_argument("--utility-reid", action="store_true", help="also time --utility and --reid")
    args = parser.parse_args()
    real, generated = dataset("real", args.images, 1), dataset("generated", args.images, 2)
    cache = OUT / "cache"
    times = []
    attempts = {"first (features computed)": [], "second (features cached)": []}
    if args.utility_reid:
        attempts["third (cached features, + utility and re-ID)"] = UTILITY_REID
        attempts["fourth (+ utility and re-ID, networks cached)"] = UTILITY_REID
    for attempt, extra in attempts.items():
        start = time.perf_counter()
        run(
            [
                "evaluate",
                "--real",
                str(real),
                "--real-split",
                "train",
                "--generated",
                str(generated),
                "--train",
                str(real),
                "--out",
                str(OUT / "evaluation"),
                "--max-images",
                str(args.images),
                "--max-train-images",
                str(args.images),
                "--cache-dir",
                str(cache),
                *extra,
            ]
        )
        times.append((attempt, time.perf_counter() - start))
    metrics = MetricsDocument.read(OUT / "evaluation")
    sizes = {k: (v["images"], v["sizes"]) for k, v in metrics.sets.items()}
    print(f"\nsets (images, sizes): {sizes}")
    for attempt, seconds in times:
        print(f"evaluate, {attempt}: {seconds:.0f} s ({seconds / 60:.1f} min)")
    if args.utility_reid:
        added = (times[2][1] - times[1][1]) / 60
        print(f"utility and re-identification add {added:.1f} min ({' '.join(UTILITY_REID)})")


if __name__ == "__main__":
    main()
