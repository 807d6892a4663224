"""`cxrgen phantom`: write a PadChest-format release of phantom radiographs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, option
from .release import write_release


@dataclass
class PhantomConfig:
    out: str = option(help="folder for the release (CSV + numbered image folders)")
    n: int = option(200, "number of images")
    size: int = option(512, "image height in pixels (widths vary, as in real releases)")
    seed: int = option(0, "seed: the same seed writes the same release")
    findings_rate: float = option(0.6, "share of images with findings (the rest are labelled normal)")
    max_findings: int = option(2, "most drawn findings per image (cardiomegaly, pleural effusion, pacemaker, nodule)")
    background: float = option(0.3, "chance of an extra label the renderer does not draw (COPD signs, ...)")
    square: bool = option(False, "square images (else widths vary from 0.8 to 1.0 of the height)")
    repeats: float = option(0.2, "share of images that are a later study of the previous patient (PadChest: ~0.58)")
    patients: bool = option(
        True, "a patient's studies show the same body, a little varied (--no-patients: every image a stranger)"
    )

    def __post_init__(self) -> None:
        if self.n < 1 or self.size < 32:
            raise ConfigError("phantom needs --n >= 1 and --size >= 32")
        if not 0 <= self.repeats < 1:
            raise ConfigError(f"--repeats must be a share in [0, 1), not {self.repeats}")


Config = PhantomConfig


def run(config: PhantomConfig) -> Path:
    """Write the release; returns its folder."""
    out = write_release(
        config.out,
        n=config.n,
        seed=config.seed,
        size=config.size,
        findings_rate=config.findings_rate,
        max_findings=config.max_findings,
        background=config.background,
        aspect=(1.0, 1.0) if config.square else (0.8, 1.0),
        patients=config.patients,
        repeats=config.repeats,
    )
    return out


def summarize(out: Path) -> int:
    images = sum(1 for _ in out.glob("*/*.png"))
    print(f"wrote {images} phantom images and {out / 'phantom_padchest.csv.gz'}")
    return 0
