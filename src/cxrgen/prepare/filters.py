"""Choose which records go into a dataset. Every choice is by seed and independent of row order or sharding."""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ..config import ConfigError, option
from ..records import (
    FRONTAL_PROJECTIONS,
    Record,
    Rejection,
    is_radiograph,
    name_key,
    normalize_modality,
    normalize_projection,
    normalize_sex,
    normalize_view,
)
from ..vocabulary import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class FilterConfig:
    projections: list[str] | None = option(
        list(FRONTAL_PROJECTIONS),
        "keep these projections (PadChest vocabulary: PA, AP, AP_horizontal, L, COSTAL, ...; 'all': no filter); "
        "the default (frontal) keeps and counts images whose projection is not known, unless strict_projection",
    )
    strict_projection: bool = option(
        False,
        "also drop images whose projection (or view) is not known, instead of keeping and counting them",
    )
    views: list[str] | None = option(None, "keep these view positions (PA, AP, LATERAL, ...)")
    modalities: list[str] | None = option(None, "keep these modalities (CR, DX)")
    radiographs_only: bool = option(
        True,
        "drop images whose modality is known and is not a radiograph (CT, MR, US, NM, PT, MG, XA, RF, ...)",
    )
    sexes: list[str] | None = option(None, "keep these sexes (M, F, O)")
    min_age: int | None = option(None, "keep ages at or above this")
    max_age: int | None = option(None, "keep ages at or below this")
    include_labels: list[str] | None = option(None, "keep images with at least one of these labels")
    exclude_labels: list[str] | None = option(None, "drop images with any of these labels")
    normal_only: bool = option(False, "keep only images labelled normal with no finding")
    labelers: list[str] | None = option(
        None, "keep images labelled by these (physician, rnn, chexpert-labeler, negbio)"
    )
    per_patient: int | None = option(None, "keep at most this many images per patient (chosen by seed)")
    subset: int | None = option(None, "keep a random subset of this many images (chosen by seed)")

    def __post_init__(self) -> None:
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise ConfigError(f"filters.min_age ({self.min_age}) is above filters.max_age ({self.max_age})")
        for name in ("per_patient", "subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"filters.{name} must be at least 1 (or left out), not {value}")


def keeps_unknown_projections(config: FilterConfig) -> bool:
    """The default frontal filter keeps (and prepare counts) images whose projection is not known: a plain folder
    says nothing of its views. A projection list asked for by name, or strict_projection, drops them."""
    return _frontal_default(config.projections) and not config.strict_projection


def _frontal_default(projections: list[str] | None) -> bool:
    """The frontal list prepare filters by unless told otherwise (in any order)."""
    return projections is not None and set(projections) == set(FRONTAL_PROJECTIONS)


def seeded_rank(seed: int, key: str) -> int:
    """A stable pseudo-random rank for `key`: the same for every shard and run with the same seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


def apply_filters(records: list[Record], config: FilterConfig, seed: int) -> tuple[list[Record], list[Rejection]]:
    rejected: list[Rejection] = []
    checks = _field_checks(records, config)
    kept = []
    for r in records:
        reason = next((why for check in checks if (why := check(r))), None)
        if reason:
            rejected.append(Rejection(r.row, r.image, f"filter: {reason}"))
        else:
            kept.append(r)
    if config.per_patient:
        by_patient: dict[str, list[Record]] = defaultdict(list)
        for r in kept:
            by_patient[r.patient_key or r.id].append(r)
        chosen = set()
        for group in by_patient.values():
            group.sort(key=lambda r: seeded_rank(seed, r.order_key or r.id))
            chosen.update(r.id for r in group[: config.per_patient])
        rejected += [
            Rejection(r.row, r.image, f"filter: more than {config.per_patient} per patient")
            for r in kept
            if r.id not in chosen
        ]
        kept = [r for r in kept if r.id in chosen]
    if config.subset and len(kept) > config.subset:
        chosen = {r.id for r in sorted(kept, key=lambda r: seeded_rank(seed, r.order_key or r.id))[: config.subset]}
        rejected += [
            Rejection(r.row, r.image, f"filter: outside the random subset of {config.subset}")
            for r in kept
            if r.id not in chosen
        ]
        kept = [r for r in kept if r.id in chosen]
    return kept, rejected


def _field_checks(records: list[Record], config: FilterConfig):
    """One function per active filter, returning a reason when a record fails. A filter on a field no record
    has (a folder without projections, MIMIC without ages) is skipped with a warning rather than emptying the set."""
    checks = []

    def known(name: str) -> bool:
        if any(getattr(r, name) is not None for r in records):
            return True
        log.warning("no record has a %s: the %s filter is not applied", name, name)
        return False

    def member(
        name: str, allowed: list[str] | None, normalize: Callable[[str], str | None], keep_unknown: bool = False
    ) -> None:
        if allowed is None:
            return
        if keep_unknown and all(getattr(r, name) is None for r in records):
            log.warning(
                "no record has a view or projection: the %s filter could not apply and kept every image "
                "(give the table a view column, or check for laterals by eye)",
                name,
            )
            return
        if not keep_unknown and name != "projection" and not known(name):
            return
        # the records' spelling: "male" is M, "lateral" is the projection L
        wanted = {(normalize(a) or a).upper() for a in allowed}
        spelled = {str(v).upper(): str(v) for r in records if (v := getattr(r, name)) is not None}
        default = name == "projection" and _frontal_default(allowed)  # not asked for by name
        for value in [] if default else sorted(wanted.difference(spelled)):
            if len(spelled) <= 15:
                hint = f" (the records have: {', '.join(sorted(spelled.values()))})"
            else:
                close = difflib.get_close_matches(value, sorted(spelled), n=3, cutoff=0.3)
                hint = f" (the closest the records have: {', '.join(spelled[c] for c in close)})" if close else ""
            log.warning("filters: no record has the %s '%s'%s", name, value, hint)

        def check(r: Record) -> str | None:
            v = getattr(r, name)
            if v is None:
                return None if keep_unknown else f"{name} not known"
            return None if v.upper() in wanted else f"{name} {v}"

        checks.append(check)

    member("projection", config.projections, normalize_projection, keep_unknown=keeps_unknown_projections(config))
    member("view", config.views, normalize_view)
    member("modality", config.modalities, lambda m: normalize_modality(m) or m)
    member("sex", config.sexes, normalize_sex)
    if config.radiographs_only:
        checks.append(lambda r: None if is_radiograph(r.modality) is not False else f"modality {r.modality}")
    if (config.min_age is not None or config.max_age is not None) and known("age"):
        lo = config.min_age if config.min_age is not None else -1
        hi = config.max_age if config.max_age is not None else 10**6
        checks.append(lambda r: None if r.age is not None and lo <= r.age <= hi else f"age {r.age}")
    if config.labelers is not None and known("labeler"):
        wanted_by = {a.lower() for a in config.labelers}
        checks.append(lambda r: None if (r.labeler or "").lower() in wanted_by else f"labeler {r.labeler}")
    if config.include_labels or config.exclude_labels:
        vocabulary = Vocabulary.from_conditions({"all": records})
    if config.include_labels:
        include = _label_set(config.include_labels, vocabulary, "include_labels")
        checks.append(lambda r: None if _hits(r, include) else "no included label")
    if config.exclude_labels:
        exclude = _label_set(config.exclude_labels, vocabulary, "exclude_labels")
        checks.append(lambda r: f"excluded label {hit[0]}" if (hit := _hits(r, exclude)) else None)
    if config.normal_only:
        checks.append(lambda r: None if r.is_normal else "not normal")
    return checks


Wanted = dict[str, set[str | None]]  # label key -> sides asked for (None: any)


def _hits(r: Record, wanted: Wanted) -> list[str]:
    """The record's labels that a filter names, at a side it asks for when it names one."""
    return [
        f.label
        for f in r.findings
        if (sides := wanted.get(name_key(f.label))) is not None and (None in sides or sides & set(f.locations))
    ]


def _label_set(names: list[str], vocabulary: Vocabulary, option_name: str) -> Wanted:
    """The labels the records use for the names given: another spelling or a synonym finds its label, and a side
    variant ("pleural effusion right side") its label at that side; a name no record has warns with the
    closest ones."""
    wanted: Wanted = {}
    for name in names:
        resolved = vocabulary.resolve_label(name)
        if resolved.name is None:
            hint = f"; closest known: {', '.join(resolved.closest)}" if resolved.closest else ""
            log.warning("filters.%s: no image has the label '%s'%s", option_name, name, hint)
            wanted.setdefault(name_key(name), set()).add(None)
            continue
        if resolved.how != "exact":
            side = f" at {resolved.side}" if resolved.side else ""
            log.info(
                "filters.%s: '%s' read as the label '%s'%s (%s)", option_name, name, resolved.name, side, resolved.how
            )
        wanted.setdefault(name_key(resolved.name), set()).add(resolved.side)
    return wanted
