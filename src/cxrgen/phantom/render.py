"""Render chest-radiograph-like images with findings drawn where the labels say.

Anatomy in normalised coordinates (x to the viewer's right, y down), PA display convention: the patient's right
is on the image's left, the heart bulges to the image's right. Values are attenuation-like (air dark, bone
bright), with exposure, positioning and noise varied per image by its seed. Findings change the anatomy:
cardiomegaly widens the heart, an effusion fills a lung base with a meniscus, a pacemaker adds a bright device
and lead, a nodule a small round opacity at its lobe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Where lobes and zones sit, as (x, y) centres in normalised image coordinates (patient's right = image left).
LOCATIONS = {
    "right upper lobe": (0.33, 0.33),
    "left upper lobe": (0.67, 0.33),
    "right lower lobe": (0.31, 0.58),
    "left lower lobe": (0.69, 0.58),
    "middle lobe": (0.36, 0.48),
    "right": (0.32, 0.45),
    "left": (0.68, 0.45),
}
FINDINGS = ("cardiomegaly", "pleural effusion", "pacemaker", "nodule")


@dataclass
class Anatomy:
    """Per-image variation, drawn from the seed."""

    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    heart_width: float = 0.20  # half-width of the heart shadow; cardiomegaly raises it
    lung_darkness: float = 0.25
    exposure: float = 1.0
    noise: float = 0.02
    border: tuple[int, int, int, int] = (
        0,
        0,
        0,
        0,
    )  # black border widths: left, top, right, bottom (per mille)


def draw_anatomy(rng: np.random.Generator, findings: list[tuple[str, tuple[str, ...]]]) -> Anatomy:
    labels = {label for label, _ in findings}
    border = tuple(int(v) for v in (rng.random(4) < 0.25) * rng.integers(20, 90, 4))
    return Anatomy(
        shift=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.015))),
        scale=float(rng.uniform(0.94, 1.06)),
        heart_width=float(rng.uniform(0.25, 0.28) if "cardiomegaly" in labels else rng.uniform(0.15, 0.18)),
        lung_darkness=float(rng.uniform(0.18, 0.3)),
        exposure=float(rng.uniform(0.85, 1.15)),
        noise=float(rng.uniform(0.01, 0.03)),
        border=border,  # type: ignore[arg-type]
    )


def render(
    height: int,
    width: int,
    findings: list[tuple[str, tuple[str, ...]]] = (),  # type: ignore[assignment]
    seed: int = 0,
    bits: int = 16,
) -> np.ndarray:
    """A (height, width) radiograph-like image; uint16 holding 12-bit data scaled to 16 bits (as PadChest
    stores it) when bits=16, else uint8."""
    rng = np.random.default_rng(seed)
    a = draw_anatomy(rng, list(findings))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    x = ((xx + 0.5) / width - 0.5 - a.shift[0]) / a.scale + 0.5
    y = ((yy + 0.5) / height - 0.5 - a.shift[1]) / a.scale + 0.5

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2

    def soft(d: np.ndarray, edge: float = 0.08) -> np.ndarray:
        """1 inside (d < 1), 0 outside, with a soft edge."""
        return np.clip((1.0 - d) / edge, 0.0, 1.0)

    img = np.full((height, width), 0.05, np.float32)  # air around the patient
    body = soft(ellipse(0.5, 0.62, 0.47, 0.62), 0.15)
    img += 0.45 * body
    lungs = np.maximum(soft(ellipse(0.32, 0.45, 0.15, 0.27)), soft(ellipse(0.68, 0.45, 0.15, 0.27)))
    img -= a.lung_darkness * lungs * body
    img += 0.12 * soft(np.abs(x - 0.5) / 0.045, 0.5) * (y > 0.12)  # spine / mediastinum
    heart = soft(ellipse(0.54, 0.63, a.heart_width, 0.14), 0.15)
    img = np.maximum(img, 0.5 * heart)
    diaphragm = np.maximum(
        soft(ellipse(0.32, 0.86, 0.2, 0.16), 0.05), soft(ellipse(0.68, 0.88, 0.2, 0.16), 0.05)
    )
    img = np.maximum(img, 0.52 * diaphragm * body)
    for side in (-1, 1):  # clavicles
        d = np.abs((y - 0.2) - side * 0.25 * (x - 0.5)) / 0.015
        img += 0.12 * soft(d, 0.6) * (np.abs(x - 0.5) < 0.32) * (np.abs(x - 0.5) > 0.03)
    ribs = 0.5 + 0.5 * np.sin((y + 0.35 * (x - 0.5) ** 2) * 2 * np.pi * 9.0)
    img += 0.05 * (ribs > 0.8) * lungs

    for label, locations in findings:
        if label == "pleural effusion":
            for side in locations or ("right",):
                cx = 0.32 if "right" in side else 0.68
                level = 0.58 + 0.04 * rng.random()
                meniscus = level - 0.08 * np.abs(x - cx) / 0.15
                fluid = (y > meniscus) * soft(ellipse(cx, 0.45, 0.17, 0.3), 0.05)
                img = np.maximum(img, 0.5 * fluid)
        elif label == "pacemaker":
            px, py = 0.72 + 0.03 * rng.random(), 0.2 + 0.03 * rng.random()
            img = np.maximum(img, 1.0 * (np.abs(x - px) < 0.035) * (np.abs(y - py) < 0.025))
            t = np.clip((x - 0.52) / (px - 0.52), 0, 1)
            lead = np.abs(y - (0.62 + (py - 0.62) * t + 0.05 * np.sin(np.pi * t))) < 0.004
            img = np.maximum(img, 0.95 * lead * (x > 0.52) * (x < px))
        elif label == "nodule":
            for where in locations or ("right upper lobe",):
                cx, cy = LOCATIONS.get(where, LOCATIONS["right upper lobe"])
                img = np.maximum(img, 0.55 * soft(ellipse(cx, cy, 0.03, 0.03 * width / height), 0.4))

    img = img * a.exposure
    img += rng.normal(0, a.noise, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    left, top, right, bottom = (
        int(v / 1000 * s) for v, s in zip(a.border, (width, height, width, height), strict=True)
    )
    img[:, :left] = 0
    img[:top, :] = 0
    img[:, width - right :] = 0  # an empty slice when right == 0
    img[height - bottom :, :] = 0
    if bits == 16:
        return (np.round(img * 4095).astype(np.uint16) * 16).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)
