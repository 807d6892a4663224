"""How long the memorization audit takes for N generated x N training images (and N held-out real), on this machine,
and what it finds: the similarity of planted copies under each transformation against the threshold, and the
false-flag rates of independent generated and held-out images.

Phantoms of distinct patients play every set; the generated set holds N - 10 * len(TRANSFORMS) independent phantoms
and 10 copies of training images under each transformation.
Run: .venv/bin/python benchmarks/memorization_speed.py [--images 2000] [--size 64]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrgen.evaluate.imagesets import ImageSet
from cxrgen.evaluate.memorization import check
from cxrgen.phantom.render import render

OUT = Path(__file__).parent / "out" / "memorization_speed"


def _jpeg(t: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(t).save(buffer, "JPEG", quality=70)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def _affine(t: np.ndarray, matrix: tuple[float, ...]) -> np.ndarray:
    return np.asarray(Image.fromarray(t).transform(t.shape[::-1], Image.Transform.AFFINE, matrix, fillcolor=0))


TRANSFORMS = {
    "exact": lambda t: t,
    "mirrored": lambda t: t[:, ::-1].copy(),
    "rotated 2": lambda t: np.asarray(Image.fromarray(t).rotate(2, Image.Resampling.BICUBIC)),
    "rotated 5": lambda t: np.asarray(Image.fromarray(t).rotate(5, Image.Resampling.BICUBIC)),
    "shifted 5%": lambda t: _affine(t, (1, 0, -round(0.05 * t.shape[1]), 0, 1, -round(0.05 * t.shape[0]))),
    "scaled 95%": lambda t: _affine(t, (1 / 0.95, 0, -t.shape[1] / 38, 0, 1 / 0.95, -t.shape[0] / 38)),
    "gamma 0.9": lambda t: np.round(255 * (t / 255.0) ** 0.9).astype(np.uint8),
    "jpeg 70": _jpeg,
    "noise sd 8": lambda t: np.clip(t + np.random.default_rng(0).normal(0, 8, t.shape), 0, 255).astype(np.uint8),
}


def image_set(name: str, images: list[np.ndarray]) -> ImageSet:
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:05d}.png" for i in range(len(images))]
    for f, pixels in zip(files, images, strict=True):
        Image.fromarray(pixels).save(f)
    return ImageSet(name, folder, files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    n, side = args.images, args.size
    train = [render(side, side, [], seed=1_000_000 + i, bits=8) for i in range(n)]
    sources = np.linspace(0, n - 1, 10).astype(int)
    planted = [transform(train[s]) for transform in TRANSFORMS.values() for s in sources]
    independent = n - len(planted)
    generated = [render(side, side, [], seed=2_000_000 + i, bits=8) for i in range(independent)] + planted
    heldout = [render(side, side, [], seed=3_000_000 + i, bits=8) for i in range(n)]
    sets = image_set("train", train), image_set("generated", generated), image_set("heldout", heldout)
    start = time.perf_counter()
    result = check(sets[1], sets[0], heldout=sets[2])
    seconds = time.perf_counter() - start
    rate = result.false_flag_rate()
    assert rate is not None
    print(f"\n{n} generated x {n} training + {rate['images']} held-out real, {side} px: {seconds:.0f} s")
    print(
        f"threshold {result.pixel_threshold:.3f} (m {result.pixel_null.m:.3f}, quantile {result.quantile}, "
        f"margin {result.margin}); {len(result.pixel_null.set_aside)} calibration images set aside"
    )
    for k, name in enumerate(TRANSFORMS):
        rows = independent + k * len(sources) + np.arange(len(sources))
        found, values = (result.pixel_index[rows] == sources).mean(), result.pixel_nn[rows]
        print(
            f"  {name:11s} similarity min {values.min():.3f} median {np.median(values):.3f}"
            f"  flagged {np.isin(rows, result.flagged).mean():.0%}  source found {found:.0%}"
        )
    flagged = sum(i < independent for i in result.flagged)
    print(
        f"  independent generated flagged: {flagged} of {independent} ({flagged / independent:.2%}); "
        f"max similarity {result.pixel_nn[:independent].max():.3f}"
    )
    print(f"  held-out false-flag rate {rate['value']:.2%} [{rate['low']:.2%}, {rate['high']:.2%}]")


if __name__ == "__main__":
    main()
