"""`cxrgen vocab DATASET`: the labels and locations a prepared (or generated) dataset uses, with their counts per
split and the other ways they are written; `--name` shows how a name would be read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import ConfigError, option
from ..vocabulary import Term, Vocabulary, load_vocabulary


@dataclass
class VocabConfig:
    dataset: str = option(help="a prepared or generated dataset folder", positional=True)
    kind: Literal["labels", "locations", "all"] = option("all", "which names to list")
    top: int = option(0, "list only the N most frequent of each kind (0: all)")
    name: list[str] = option([], "names to read through the vocabulary, e.g. 'Pleural Effusion right side'")
    json: bool = option(False, "print the vocabulary as JSON")

    def __post_init__(self) -> None:
        if not Path(self.dataset).is_dir():
            raise ConfigError(f"{self.dataset} is not a folder: give a prepared dataset (cxrgen prepare --out)")
        if self.top < 0:
            raise ConfigError(f"--top must be 0 (all) or more, not {self.top}")


Config = VocabConfig


@dataclass
class VocabResult:
    config: VocabConfig  # what to show
    vocabulary: Vocabulary


def run(config: VocabConfig) -> VocabResult:
    vocabulary = load_vocabulary(config.dataset)
    if not vocabulary.labels and not vocabulary.locations:
        raise ConfigError(f"{config.dataset} has no metadata.jsonl with findings: is it a prepared dataset?")
    return VocabResult(config, vocabulary)


def summarize(result: VocabResult) -> int:
    """Print the vocabulary (or how the asked names read through it: exit code 1 when one is unknown)."""
    config, vocabulary = result.config, result.vocabulary
    if config.json:
        print(json.dumps(vocabulary.to_json(), indent=2))
        return 0
    if config.name:
        return _read_names(vocabulary, config.name)
    splits = sorted(
        {s for t in [*vocabulary.labels.values(), *vocabulary.locations.values()] for s in t.counts},
        key=lambda s: (["train", "val", "test"] + [s]).index(s),
    )
    print(
        f"{config.dataset}: {len(vocabulary.labels):,} labels, {len(vocabulary.locations):,} locations "
        "(images that state each, per split)"
    )
    for kind in ("labels", "locations"):
        if config.kind in (kind, "all"):
            _table(kind, getattr(vocabulary, kind), splits, config.top)
    return 0


def _table(kind: str, terms: dict[str, Term], splits: list[str], top: int) -> None:
    rows = sorted(terms.items(), key=lambda kv: (-kv[1].total, kv[0]))
    shown = rows[:top] if top else rows
    width = max([len(kind)] + [len(name) for name, _ in shown]) + 2
    print(f"\n{kind:<{width}}" + "".join(f"{s:>9}" for s in splits) + "   also written")
    for name, term in shown:
        counts = "".join(f"{term.counts.get(s, 0):>9,}" for s in splits)
        print(f"  {name:<{width - 2}}{counts}   {', '.join(term.synonyms)}".rstrip())
    if len(shown) < len(rows):
        print(f"  ... {len(rows) - len(shown):,} more (--top 0 lists all)")


def _read_names(vocabulary: Vocabulary, names: list[str]) -> int:
    """How each name would be read by filters and generate; exit code 1 when one is unknown."""
    code = 0
    for name in names:
        resolved = vocabulary.resolve_label(name)
        kind = "label"
        if resolved.name is None:
            location = vocabulary.resolve_location(name)
            if location.name is not None:
                resolved, kind = location, "location"
        if resolved.name is None:
            hint = f"; closest: {', '.join(resolved.closest)}" if resolved.closest else ""
            print(f"{name!r}: not in the vocabulary{hint}")
            code = 1
            continue
        side = f" at {resolved.side}" if resolved.side else ""
        print(f"{name!r}: the {kind} {resolved.name!r}{side} ({resolved.how})")
    return code
