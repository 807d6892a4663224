"""What to generate: condition sets from flags, a conditions file, a prepared dataset ("like this"), or raw
prompts. Each becomes a list of `Item`s (one per image) in a fixed order, so image i is the same in every run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import metadata_path
from ..records import (
    Conditions,
    Finding,
    clean_text,
    findings_from_value,
    merge_repeats,
    name_key,
    normalize_modality,
    normalize_projection,
    normalize_sex,
    normalize_view,
    parse_age,
)
from ..tables import TableError, is_jsonl, read_jsonl, read_table
from ..vocabulary import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)
FILE_COLUMNS = (
    "age",
    "sex",
    "view",
    "projection",
    "modality",
    "findings",
    "labels",
    "prompt",
    "count",
    "seed",
)


MAX_COUNT = 10_000_000  # images from one row: more is a typo, and would fill memory with the plan
SEED_RANGE = 2**64  # what torch.Generator.manual_seed takes


class ConditionsError(ValueError):
    """A conditions file or flag is wrong; the message names the line and the reason."""


@dataclass
class Item:
    """One image to make: its conditions (None for a raw prompt), the prompt, and where it came from."""

    conditions: Conditions | None
    prompt: str | None  # a raw prompt; else built from the conditions
    origin: str  # "flags", "<file>:<line>", "like:<dataset>", "prompt"
    seed: int | None = None  # an explicit seed from a conditions file


def from_flags(
    age: int | None,
    sex: str | None,
    view: str | None,
    projection: str | None,
    modality: str | None,
    findings: list[str],
    n: int,
) -> list[Item]:
    if age is not None and not 0 <= age <= 120:
        raise ConditionsError(f"--age {age}: give an age in years (0-120)")
    parsed = [f for text in findings for f in findings_from_value(text)]
    c = Conditions(
        age=age,
        sex=normalize_sex(sex),
        view=normalize_view(view),
        projection=normalize_projection(projection),
        modality=normalize_modality(modality),
        findings=parsed,
    )
    if sex is not None and c.sex is None:
        raise ConditionsError(f"--sex {sex!r}: use M, F or O")
    return [Item(c, None, "flags") for _ in range(n)]


def from_file(path: str | Path) -> list[Item]:
    """Rows of a CSV/JSONL file: conditions (or a `prompt`), an optional `count` and `seed` per row."""
    path = Path(path)
    items: list[Item] = []
    try:
        rows = list(read_table(path))
    except TableError as exc:
        raise ConditionsError(str(exc)) from exc
    if not rows:
        raise ConditionsError(f"{path} has no rows")
    for line, row in rows:
        where = f"{path.name} line {line + (0 if is_jsonl(path) else 1)}"  # a CSV's header is line 1
        unknown = [k for k, v in row.items() if k not in FILE_COLUMNS and v not in ("", None)]
        if unknown:
            raise ConditionsError(f"{where}: unknown column(s) {', '.join(unknown)}; use {', '.join(FILE_COLUMNS)}")
        try:
            items += _row_items(row, f"{path.name}:{line + (0 if is_jsonl(path) else 1)}")
        except ValueError as exc:
            raise ConditionsError(f"{where}: {exc}") from exc
    return items


def _row_items(row: dict[str, Any], origin: str) -> list[Item]:
    def text(key: str) -> str | None:
        value = row.get(key)
        return None if value in (None, "") else clean_text(value)

    count = _integer(row.get("count"), "count", default=1)
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be a whole number from 1 to {MAX_COUNT:,}, not {row.get('count')!r}")
    seed = _integer(row.get("seed"), "seed", default=None)
    if seed is not None and not 0 <= seed < SEED_RANGE:
        raise ValueError(f"seed {row.get('seed')!r} is outside 0 to 2**64-1")
    if text("prompt"):
        return [Item(None, text("prompt"), origin, seed if i == 0 else None) for i in range(count)]
    age = None
    if text("age") is not None:
        age = parse_age(text("age"))
        if age is None:
            raise ValueError(f"age {row.get('age')!r} is not an age in years (0-120)")
    sex = normalize_sex(text("sex"))
    if text("sex") is not None and sex is None:
        raise ValueError(f"sex {row.get('sex')!r}: use M, F or O")
    findings = findings_from_value(row.get("findings"))
    if not findings and text("labels"):
        findings = findings_from_value(text("labels"))
    c = Conditions(
        age=age,
        sex=sex,
        view=normalize_view(text("view")),
        projection=normalize_projection(text("projection")),
        modality=normalize_modality(text("modality")),
        findings=findings,
    )
    return [Item(c, None, origin, seed if i == 0 else None) for i in range(count)]


def _integer(value: Any, name: str, default: int | None) -> int | None:
    """A whole number, exactly: seeds copied from metadata.jsonl have 63 bits, more than a float holds."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"{name} {value!r} is not a whole number")
    if abs(number) > 2**53:  # "1e19" or 8.02e18: the digits after the 16th are lost
        raise ValueError(f"{name} {value!r} is not exact: write all its digits")
    return int(number)


def load_rows(dataset: str | Path, split: str) -> list[dict[str, Any]]:
    meta = metadata_path(dataset, split)
    if not meta.is_file():
        raise ConditionsError(f"{meta} does not exist: give a prepared dataset folder (cxrgen prepare)")
    try:
        return [row for _, row in read_jsonl(meta)]
    except TableError as exc:
        raise ConditionsError(str(exc)) from exc


def parse_reweight(specs: list[str]) -> dict[str, float]:
    weights = {}
    for spec in specs:
        label, sep, factor = spec.rpartition("=")
        try:
            value = float(factor)
        except ValueError:
            value = -1.0
        if not sep or not label.strip() or value <= 0:
            raise ConditionsError(
                f"--reweight {spec!r}: write label=factor with a positive factor, e.g. 'pleural effusion=5'"
            )
        weights[label.strip()] = value
    return weights


def like_dataset(dataset: str | Path, split: str, n: int, seed: int, reweight: dict[str, float]) -> list[Item]:
    """N condition sets drawn from a prepared dataset's rows, keeping the joint distribution of findings and
    demographics; `reweight` multiplies the chance of rows with the given labels (rare-finding augmentation).
    Each item's origin names the row it was drawn from (`like:<dataset>#<id>`), the way back to its source."""
    rows = load_rows(dataset, split)
    if not rows:
        raise ConditionsError(f"{metadata_path(dataset, split)} has no rows to draw from")
    reweight = _in_dataset_names(reweight, dataset)
    weights = np.ones(len(rows))
    labels = [row_labels(row) for row in rows]
    for i, row_set in enumerate(labels):  # each label once: a finding at two locations is still one finding
        for label in row_set:
            weights[i] *= reweight.get(label, 1.0)
    missing = set(reweight).difference(*labels)
    for label in sorted(missing):
        log.warning("--reweight: no row of %s has the label '%s'", dataset, label)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(rows), size=n, replace=True, p=weights / weights.sum())
    items = []
    for k in picks:
        row = rows[int(k)]
        c = Conditions(
            age=row.get("age"),
            sex=row.get("sex"),
            view=row.get("view"),
            projection=row.get("projection"),
            modality=row.get("modality"),
            findings=findings_from_value(row.get("findings") or []),
        )
        where = f"#{row['id']}" if row.get("id") else ""
        items.append(Item(c, None, f"like:{Path(dataset).name}{where}"))
    return items


def _in_dataset_names(reweight: dict[str, float], dataset: str | Path) -> dict[str, float]:
    """--reweight labels as the dataset writes them ("effusion" is its "pleural effusion"), keyed by name_key."""
    if not reweight:
        return {}
    vocabulary = load_vocabulary(dataset)
    out = {}
    for name, factor in reweight.items():
        resolved = vocabulary.resolve_label(name)
        if resolved.name is not None and resolved.how != "exact":
            log.info("--reweight: '%s' read as '%s' (%s)", name, resolved.name, resolved.how)
        out[name_key(resolved.name or name)] = factor
    return out


def row_labels(row: dict[str, Any]) -> set[str]:
    """A metadata row's finding labels, each once, as `name_key` compares them."""
    return {name_key(str(f.get("label", ""))) for f in row.get("findings") or [] if isinstance(f, dict)}


def check_names(items: list[Item], vocabulary: Vocabulary, allow_unknown: bool = False) -> list[str]:
    """Write findings and locations in the training data's names: another spelling, a synonym or a side variant
    ("Pleural Effusion right side") is mapped to the name the data uses, with a message; each label is stated
    once. A name the data never uses is an error naming the closest ones (a warning with `allow_unknown`), so
    every image's structured labels are in the training data's vocabulary. Returns the messages."""
    mapped: dict[str, None] = {}
    unknown: dict[str, None] = {}
    cache: dict[Finding, Finding] = {}  # a --like plan repeats the same findings many times
    for item in items:
        if item.conditions is None:
            continue
        for f in item.conditions.findings:
            if f not in cache:
                cache[f], notes, missing = vocabulary.resolve_finding(f)
                mapped.update(dict.fromkeys(notes))
                unknown.update(dict.fromkeys(missing))
        item.conditions.findings = merge_repeats([cache[f] for f in item.conditions.findings])[0]
    for note in mapped:
        log.info("%s, the training data's name", note)
    if unknown and not allow_unknown:
        raise ConditionsError(
            "; ".join(unknown) + ". Use the training data's names (cxrgen vocab DATASET lists them), or "
            "--allow-unknown-names to generate anyway"
        )
    for message in unknown:
        log.warning(message)
    return list(mapped) + list(unknown)
