"""Patient-level train/val/test splits.

A patient's split depends only on the seed and the patient key, never on which other records are present: the
same patient lands in the same split whatever the filters, subsets or shards, so two datasets prepared from one
release with one seed never leak test patients into training. A release's official split wins when asked, for
all of a patient's images: an image the split file does not list goes where the patient's listed images go.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from ..config import ConfigError, option
from ..records import Record
from .filters import seeded_rank

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    train: float = option(0.8, "share of patients in train")
    val: float = option(0.1, "share of patients in val")
    test: float = option(0.1, "share of patients in test")
    official: bool = option(True, "use the release's official split when it has one (MIMIC-CXR)")

    def __post_init__(self) -> None:
        shares = (self.train, self.val, self.test)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ConfigError(f"splits.train/val/test must be non-negative and sum to 1, not {shares}")


def _patient(record: Record) -> str:
    return record.split_key or record.patient_key or record.order_key or record.id


def assign_split(record: Record, config: SplitConfig, seed: int) -> str:
    u = seeded_rank(seed, "split\0" + _patient(record)) / 2**64
    if u < config.train:
        return "train"
    return "val" if u < config.train + config.val else "test"


def assign_splits(records: list[Record], config: SplitConfig, seed: int) -> dict[str, str]:
    """record id -> split. Warns when records have no patient key (then each image is its own patient) and
    when a split with a non-zero share comes out empty."""
    missing = sum(r.split_key is None and r.patient_key is None for r in records)
    if missing:
        log.warning("%d of %d records have no patient id: they are split image by image", missing, len(records))
    official = _official_by_patient(records) if config.official else {}
    splits = {r.id: official.get(_patient(r)) or assign_split(r, config, seed) for r in records}
    sizes = Counter(splits.values())
    for name in SPLITS:
        if getattr(config, name) > 0 and records and sizes[name] == 0:
            log.warning("split '%s' is empty (%d records in all): too few patients for its share", name, len(records))
    return splits


def _official_by_patient(records: list[Record]) -> dict[str, str]:
    """Each patient's official split. A patient listed in several (another release version of the split file)
    goes to the most held-out one, so no image of a test patient is trained on."""
    listed: dict[str, set[str]] = {}
    for r in records:
        if r.official_split in SPLITS:
            listed.setdefault(_patient(r), set()).add(r.official_split)
    conflicts = sum(len(names) > 1 for names in listed.values())
    if conflicts:
        log.warning(
            "%d patient(s) have images in several official splits: each goes to the most held-out of them "
            "(test, then val)",
            conflicts,
        )
    return {key: next(s for s in ("test", "val", "train") if s in names) for key, names in listed.items()}
