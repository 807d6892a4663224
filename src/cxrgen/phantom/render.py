"""Render chest-radiograph-like images with findings drawn where the labels say.

Anatomy in normalised coordinates (x to the viewer's right, y down), PA display convention: the patient's right
is on the image's left, the heart bulges to the image's right. Values are attenuation-like (air dark, bone
bright). Every image varies by its seed: positioning (shift, scale, rotation), body and lung shape, heart size,
diaphragm domes, rib spacing and phase, clavicles, a patient-specific soft-tissue and vessel texture, exposure,
noise and black borders. Given a patient seed, what belongs to the patient (body habitus, lung and heart shape,
diaphragm, rib spacing, clavicles, tissue and vessel texture, how they stand) is drawn from it and varies only
slightly between that patient's studies (breathing, positioning), while exposure, noise and findings belong to
the study.
Findings change the anatomy: cardiomegaly widens the heart, an effusion fills a lung
base with a meniscus on its side, a pacemaker adds a bright device and lead, a nodule a round opacity at its lobe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

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
NORMAL_HEART = (0.14, 0.17)  # half-width of the heart shadow
LARGE_HEART = (0.24, 0.27)


@dataclass
class Anatomy:
    """Per-image variation, drawn from the seed."""

    shift: tuple[float, float]
    scale: float
    rotation: float  # radians
    body: tuple[float, float]  # half-width, half-height of the torso
    lungs: tuple[
        tuple[float, float, float, float], tuple[float, float, float, float]
    ]  # (cx, cy, rx, ry) image left, right
    heart: tuple[float, float, float, float]  # cx, cy, half-width, half-height
    domes: tuple[float, float]  # diaphragm dome tops, image left and right
    ribs: tuple[float, float, float]  # frequency, phase, curvature
    clavicle: float  # slope
    lung_darkness: float
    texture: float
    exposure: float
    gamma: float
    noise: float
    border: tuple[int, int, int, int]  # black border widths: left, top, right, bottom (per mille)


def draw_anatomy(rng: np.random.Generator, findings: list[tuple[str, tuple[str, ...]]]) -> Anatomy:
    labels = {label for label, _ in findings}
    u = rng.uniform

    def lung(cx: float) -> tuple[float, float, float, float]:
        return (cx + u(-0.02, 0.02), u(0.43, 0.47), u(0.13, 0.17), u(0.24, 0.30))

    width = LARGE_HEART if "cardiomegaly" in labels else NORMAL_HEART
    return Anatomy(
        shift=(float(rng.normal(0, 0.02)), float(rng.normal(0, 0.02))),
        scale=u(0.92, 1.08),
        rotation=float(np.deg2rad(rng.normal(0, 2.0))),
        body=(u(0.43, 0.50), u(0.58, 0.66)),
        lungs=(lung(0.32), lung(0.68)),
        heart=(u(0.52, 0.56), u(0.61, 0.65), u(*width), u(0.12, 0.15)),
        domes=(u(0.80, 0.84), u(0.83, 0.87)),
        ribs=(u(8.0, 10.5), u(0, 2 * np.pi), u(0.25, 0.45)),
        clavicle=u(0.18, 0.32),
        lung_darkness=u(0.18, 0.30),
        texture=u(0.03, 0.07),
        exposure=u(0.85, 1.15),
        gamma=u(0.85, 1.2),
        noise=u(0.008, 0.025),
        border=tuple(int(v) for v in (rng.random(4) < 0.25) * rng.integers(20, 90, 4)),  # type: ignore[arg-type]
    )


def _patient_anatomy(study: Anatomy, patient: Anatomy, rng: np.random.Generator, large_heart: bool) -> Anatomy:
    """The study's exposure and noise on the patient's body and stance, varied a little (breathing, positioning);
    an enlarged heart keeps the patient's heart shape, widened."""
    j = rng.normal

    def lung(p: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        return (p[0] + j(0, 0.003), p[1] + j(0, 0.004), p[2] * (1 + j(0, 0.015)), p[3] * (1 + j(0, 0.015)))

    cx, cy, hw, hh = patient.heart
    widen = (sum(LARGE_HEART) / sum(NORMAL_HEART)) if large_heart else 1.0
    frequency, phase, curve = patient.ribs
    return Anatomy(
        shift=(patient.shift[0] + j(0, 0.01), patient.shift[1] + j(0, 0.01)),
        scale=patient.scale * (1 + j(0, 0.015)),
        rotation=patient.rotation + float(np.deg2rad(j(0, 0.7))),
        body=(patient.body[0] * (1 + j(0, 0.01)), patient.body[1] * (1 + j(0, 0.01))),
        lungs=(lung(patient.lungs[0]), lung(patient.lungs[1])),
        heart=(cx + j(0, 0.003), cy + j(0, 0.004), hw * widen * (1 + j(0, 0.02)), hh * (1 + j(0, 0.02))),
        domes=(patient.domes[0] + j(0, 0.006), patient.domes[1] + j(0, 0.006)),
        ribs=(frequency * (1 + j(0, 0.01)), phase + j(0, 0.15), curve),
        clavicle=patient.clavicle + j(0, 0.01),
        lung_darkness=patient.lung_darkness * (1 + j(0, 0.03)),
        texture=patient.texture,
        exposure=study.exposure,
        gamma=study.gamma,
        noise=study.noise,
        border=study.border,
    )


def _field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth random texture: cells x cells Gaussian noise upsampled with bicubic interpolation, unit spread."""
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BICUBIC))
    return field / (field.std() + 1e-6)


def render(
    height: int,
    width: int,
    findings: list[tuple[str, tuple[str, ...]]] = (),  # type: ignore[assignment]
    seed: int = 0,
    bits: int = 16,
    patient: int | None = None,
) -> np.ndarray:
    """A (height, width) radiograph-like image; uint16 holding 12-bit data scaled to 16 bits (as PadChest
    stores it) when bits=16, else uint8. `patient` (a seed) gives the image that patient's body; without it
    every image is a new person."""
    rng = np.random.default_rng(seed)
    a = draw_anatomy(rng, list(findings))
    tissue = rng  # the texture fields: the patient's own when there is one
    if patient is not None:
        tissue = np.random.default_rng([patient, 0x9A7])
        own = draw_anatomy(tissue, [])
        a = _patient_anatomy(a, own, rng, any(label == "cardiomegaly" for label, _ in findings))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    px, py = (xx + 0.5) / width - 0.5 - a.shift[0], (yy + 0.5) / height - 0.5 - a.shift[1]
    cos, sin = np.cos(a.rotation), np.sin(a.rotation)
    x = (cos * px - sin * py) / a.scale + 0.5
    y = (sin * px + cos * py) / a.scale + 0.5

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2

    def soft(d: np.ndarray, edge: float = 0.08) -> np.ndarray:
        """1 inside (d < 1), 0 outside, with a soft edge."""
        return np.clip((1.0 - d) / edge, 0.0, 1.0)

    img = np.full((height, width), 0.05, np.float32)  # air around the patient
    body = soft(ellipse(0.5, 0.62, *a.body), 0.15)
    img += 0.45 * body * (1 + a.texture * _field(tissue, height, width, 6))
    lungs = np.maximum(soft(ellipse(*a.lungs[0])), soft(ellipse(*a.lungs[1])))
    # fine vessel-like texture; a patient's has as many cells in every study, whatever the film's width
    cells = max(16, (height if patient is not None else min(height, width)) // 5)
    vessels = _field(tissue, height, width, cells)
    img -= a.lung_darkness * lungs * body * (1 - 0.12 * np.clip(vessels, -2, 2) * a.texture / 0.05)
    img += 0.12 * soft(np.abs(x - 0.5) / 0.045, 0.5) * (y > 0.12)  # spine and mediastinum
    hx, hy, hw, hh = a.heart
    img = np.maximum(img, 0.5 * soft(ellipse(hx, hy, hw, hh), 0.15))
    domes = np.maximum(
        soft(ellipse(0.32, a.domes[0] + 0.04, 0.2, 0.16), 0.05),
        soft(ellipse(0.68, a.domes[1] + 0.04, 0.2, 0.16), 0.05),
    )
    img = np.maximum(img, 0.52 * domes * body)
    for side in (-1, 1):  # clavicles
        d = np.abs((y - 0.2) - side * a.clavicle * (x - 0.5)) / 0.015
        img += 0.12 * soft(d, 0.6) * (np.abs(x - 0.5) < 0.32) * (np.abs(x - 0.5) > 0.03)
    frequency, phase, curve = a.ribs
    ribs = 0.5 + 0.5 * np.sin((y + curve * (x - 0.5) ** 2) * 2 * np.pi * frequency + phase)
    img += 0.05 * (ribs > 0.8) * lungs

    for label, locations in findings:
        if label == "pleural effusion":
            for side in locations or ("right",):
                lung = a.lungs[0] if "right" in side else a.lungs[1]
                level = 0.56 + 0.05 * rng.random()
                meniscus = level - 0.08 * np.abs(x - lung[0]) / 0.15
                fluid = (y > meniscus) * soft(ellipse(lung[0], lung[1], lung[2] + 0.02, lung[3] + 0.03), 0.05)
                img = np.maximum(img, 0.5 * fluid)
        elif label == "pacemaker":
            px0, py0 = 0.72 + 0.03 * rng.random(), 0.2 + 0.03 * rng.random()
            # a generator about 5 cm across on a 35 cm film, the brightest thing in the image
            img = np.maximum(img, 1.0 * soft(((x - px0) / 0.06) ** 4 + ((y - py0) / 0.045) ** 4, 0.2))
            t = np.clip((x - 0.52) / (px0 - 0.52), 0, 1)
            lead = np.abs(y - (0.62 + (py0 - 0.62) * t + 0.05 * np.sin(np.pi * t))) < 0.004
            img = np.maximum(img, 0.95 * lead * (x > 0.52) * (x < px0))
        elif label == "nodule":
            for where in locations or ("right upper lobe",):
                cx, cy = LOCATIONS.get(where, LOCATIONS["right upper lobe"])
                img = np.maximum(img, 0.55 * soft(ellipse(cx, cy, 0.03, 0.03 * width / height), 0.4))

    img = np.clip(img * a.exposure, 0, 1) ** a.gamma
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
