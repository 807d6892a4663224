"""The terms under which each release's images may be used, as cards state them. Facts from the releases' own
pages; a card names them so that whoever downloads a model or a synthetic set knows what binds its source."""

from __future__ import annotations

from pathlib import Path

from ..contracts import PrepareManifest

TERMS = {
    "padchest": (
        "PadChest (BIMCV, Hospital San Juan, Alicante)",
        "released for research use under the agreement accepted when downloading it; its images must not be "
        "redistributed",
        "https://bimcv.cipf.es/bimcv-projects/padchest/",
    ),
    "mimic": (
        "MIMIC-CXR-JPG (PhysioNet)",
        "credentialed access under the PhysioNet Credentialed Health Data License 1.5.0 and its data use agreement; "
        "the data must not be shared with anyone who has not signed it",
        "https://physionet.org/content/mimic-cxr-jpg/",
    ),
    "chexpert": (
        "CheXpert (Stanford AIMI)",
        "the Stanford University School of Medicine CheXpert Dataset Research Use Agreement: personal, "
        "non-commercial research use; no redistribution",
        "https://stanfordmlgroup.github.io/competitions/chexpert/",
    ),
}
UNKNOWN = (
    "images prepared by the user",
    "the terms of the images' own source apply; check them before sharing anything made from them",
    None,
)


def data_source(folder: str | Path | None) -> str | None:
    """The release a prepared dataset came from (padchest, mimic, chexpert, folder, ...), or None if not known."""
    if folder is None or not PrepareManifest.path(folder).is_file():
        return None
    return PrepareManifest.read(folder).config.get("source")


def terms_of(source: str | None) -> str:
    """One Markdown paragraph: the source's name and terms, with its page."""
    name, terms, link = TERMS.get(source or "", UNKNOWN)
    return f"{name}: {terms}" + (f" ({link})." if link else ".")


def restricted(source: str | None) -> bool:
    """Whether the source's terms limit who may receive what was made from it (all the credentialed releases)."""
    return source in TERMS
