"""One vocabulary per dataset: the finding labels and locations its images use, the other ways they are written,
and how many images of each split have them.

`prepare` writes it into prepare.json; label filters, generate's name checks and adherence's label mapping read
names through it, so a name written another way ("Pleural Effusion", "pleural effusion right side", "effusion")
finds the label the data uses, and a filter on a label finds every image with it.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import NO_FINDING, Conditions, Finding, Record, location_name, merge_repeats
from .records import name_key as key

# PadChest's sentence column writes some labels with a side ("pleural effusion right side", "hypoexpansion both
# side"); the image-level column has the label alone. The side is a location of the label.
_SIDE = re.compile(r"^(?P<label>.+?)\s+(?P<side>right|left|both)\s+sides?$", re.IGNORECASE)
SIDE_LOCATIONS = {"right": "right", "left": "left", "both": "bilateral"}

# Names other releases and users write for a label of the PadChest vocabulary (keys as `key` spells them)
LABEL_SYNONYMS = {
    **dict.fromkeys(NO_FINDING, "normal"),
    "effusion": "pleural effusion",
    "infiltration": "infiltrates",
    "edema": "pulmonary edema",
    "fibrosis": "pulmonary fibrosis",
    "hiatus hernia": "hiatal hernia",
    "enlarged heart": "cardiomegaly",
    "pace maker": "pacemaker",
}
LOCATION_SYNONYMS = {
    "both sides": "bilateral",
    "both": "bilateral",
    "right side": "right",
    "left side": "left",
}


def split_side(name: str) -> tuple[str, str | None]:
    """("pleural effusion", "right") for "pleural effusion right side"; (name, None) without a side."""
    if name[-4:].lower() not in ("side", "ides"):  # most names: no regular expression needed (a hot path)
        return name, None
    m = _SIDE.match(name.strip())
    if m is None:
        return name, None
    return m.group("label").strip(), SIDE_LOCATIONS[m.group("side").lower()]


def standard_key(name: str) -> str:
    """The key of a label's standard name, side and synonyms aside: what two datasets' labels compare by."""
    base, _ = split_side(str(name))
    k = key(base)
    return LABEL_SYNONYMS.get(k, k)


def unify_spellings(records: Iterable[Conditions]) -> dict[str, list[str]]:
    """Write each label and location the way most images of a release write it ("COPD signs", not "copd signs"),
    in place. Returns {name: other spellings seen}. Cheap when, as usual, every name has one spelling."""
    records = list(records)
    labels = Counter(f.label for r in records for f in r.findings)  # counted in C: a release has millions
    locations = Counter(x for r in records for f in r.findings for x in f.locations)
    chosen: dict[str, str] = {}
    variants: dict[str, list[str]] = {}
    for counts in (labels, locations):
        groups: dict[str, list[str]] = defaultdict(list)
        for name in counts:
            groups[key(name)].append(name)
        for names in groups.values():
            if len(names) > 1:
                best = max(names, key=lambda n: (counts[n], n))
                variants[best] = sorted(set(names) - {best})
                chosen.update({n: best for n in names if n != best})
    if chosen:
        for r in records:
            r.findings = [
                Finding(chosen.get(f.label, f.label), tuple(chosen.get(x, x) for x in f.locations)) for f in r.findings
            ]
    return variants


def settle_findings(records: Iterable[Record]) -> None:
    """Findings as PadChest's reader leaves them, in place, for readers of free-form tables (a folder's): a side
    written into a label ("pleural effusion right side") becomes its location, and each label is stated once
    (notes say so)."""
    for r in records:
        findings = r.findings
        sided = [f for f in findings if split_side(f.label)[1]]
        if sided:
            findings = [_side_as_location(f) if f in sided else f for f in findings]
            r.label_notes += tuple(f"side variant: {f.label}" for f in sided)
        merged, repeated = merge_repeats(findings)
        if repeated and "repeat" not in r.label_notes:
            r.label_notes += ("repeat",)
        if sided or repeated:
            r.findings = merged


def _side_as_location(f: Finding) -> Finding:
    label, side = split_side(f.label)
    return Finding(label, tuple(dict.fromkeys((side, *f.locations))))


@dataclass
class Term:
    """A name of the vocabulary: how many images of each split have it, and the other ways it is written."""

    counts: dict[str, int] = field(default_factory=dict)
    synonyms: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Resolved:
    """A name read through a vocabulary: the vocabulary's name (None when it has none), a side that came with it
    ("pleural effusion right side"), how it was matched, and the closest names when it was not."""

    name: str | None
    side: str | None = None
    how: str = "exact"  # exact, spelling, synonym, side, unknown
    closest: list[str] = field(default_factory=list)


@dataclass
class Vocabulary:
    labels: dict[str, Term] = field(default_factory=dict)
    locations: dict[str, Term] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    def from_conditions(
        cls, by_split: Mapping[str, Iterable[Conditions]], synonyms: Mapping[str, Iterable[str]] | None = None
    ) -> Vocabulary:
        """Counts of images per split that state each label and location (each once per image)."""
        vocab = cls()
        for split, items in by_split.items():
            vocab._count(split, (c.findings for c in items))
        vocab._add_synonyms(synonyms or {})
        return vocab

    @classmethod
    def from_rows(cls, by_split: Mapping[str, Iterable[dict[str, Any]]]) -> Vocabulary:
        """From metadata rows (a generated set, or a dataset prepared before prepare.json held a vocabulary)."""
        from .records import findings_from_value

        def findings(rows: Iterable[dict[str, Any]]) -> Iterator[list[Finding]]:
            for row in rows:
                try:
                    yield findings_from_value(row.get("findings"))
                except ValueError:
                    continue

        vocab = cls()
        for split, rows in by_split.items():
            vocab._count(split, findings(rows))
        return vocab

    def _count(self, split: str, findings_of: Iterable[list[Finding]]) -> None:
        """Images of `split` that state each label and location, each once per image."""
        self._cache.clear()
        findings_of = list(findings_of)
        labels = Counter(x for findings in findings_of for x in {f.label for f in findings})
        locations = Counter(x for findings in findings_of for x in {y for f in findings for y in f.locations})
        for table, counts in ((self.labels, labels), (self.locations, locations)):
            for name, n in counts.items():
                term = table.setdefault(name, Term())
                term.counts[split] = term.counts.get(split, 0) + n

    def _add_synonyms(self, synonyms: Mapping[str, Iterable[str]]) -> None:
        """Other spellings of names, matched to them as `key` compares (a side variant's base may differ in case)."""
        self._cache.clear()
        for table in (self.labels, self.locations):
            names = {key(name): name for name in table}
            for name, others in synonyms.items():
                if key(name) in names:
                    term = table[names[key(name)]]
                    term.synonyms = sorted(set(term.synonyms) | set(others))

    # -- reading and writing -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def terms(table: dict[str, Term]) -> dict[str, Any]:
            ordered = sorted(table.items(), key=lambda kv: (-kv[1].total, kv[0]))
            return {
                name: {"images": t.counts, **({"synonyms": t.synonyms} if t.synonyms else {})} for name, t in ordered
            }

        return {"labels": terms(self.labels), "locations": terms(self.locations)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        def terms(table: dict[str, Any]) -> dict[str, Term]:
            return {name: Term(dict(v.get("images") or {}), list(v.get("synonyms") or [])) for name, v in table.items()}

        return cls(terms(data.get("labels") or {}), terms(data.get("locations") or {}))

    def label_counts(self) -> Counter:
        """Images that state each label, all splits together (what findings are ranked by)."""
        return Counter({name: t.total for name, t in self.labels.items()})

    # -- resolving names -----------------------------------------------------------------------------------
    def resolve_label(self, name: str) -> Resolved:
        return _resolve(name, self.labels, self._lookups("labels"), standard_key, sides=True)

    def resolve_location(self, name: str) -> Resolved:
        text = location_name(name)
        return _resolve(text, self.locations, self._lookups("locations"), standard_location, sides=False)

    def _lookups(self, kind: str) -> _Lookups:
        """Built once per vocabulary (generate reads every image's names through it); building clears them."""
        if kind not in self._cache:
            standard = standard_key if kind == "labels" else standard_location
            self._cache[kind] = _lookups(getattr(self, kind), standard)
        return self._cache[kind]

    def resolve_finding(self, finding: Finding) -> tuple[Finding, list[str], list[str]]:
        """The finding in the vocabulary's names, notes on what was mapped, and the names it does not know
        (each with its closest known names)."""
        notes, unknown = [], []
        label = self.resolve_label(finding.label)
        # a side written into the label is a location like any other: the data must use it too
        raw_locations = ([label.side] if label.side else []) + list(finding.locations)
        locations = []
        if label.name is None:
            unknown.append(_unknown("finding", finding.label, label.closest))
        elif label.how != "exact":
            side = f" at {label.side}" if label.side else ""
            notes.append(f"finding '{finding.label}' read as '{label.name}'{side} ({label.how})")
        for raw in raw_locations:
            loc = self.resolve_location(raw)
            if loc.name is None:
                unknown.append(_unknown("location", raw, loc.closest))
            elif loc.how != "exact":
                notes.append(f"location '{raw}' read as '{loc.name}' ({loc.how})")
            locations.append(loc.name or raw)
        resolved = Finding(label.name or finding.label, tuple(dict.fromkeys(locations)))
        return resolved, notes, unknown


_Lookups = tuple[dict[str, str], dict[str, str], dict[str, str]]


def _resolve(
    name: str, table: dict[str, Term], lookups: _Lookups, standard: Callable[[str], str], sides: bool
) -> Resolved:
    """Exactly; in another spelling; (a label) with a side written in; as a synonym the data recorded; or by the
    standard name both sides share ("effusion" and "pleural effusion", whichever the data uses)."""
    if name in table:
        return Resolved(name)
    canonical, recorded, standards = lookups
    k = key(name)
    if k in canonical:
        return Resolved(canonical[k], how="spelling")
    # a side before the recorded synonyms: "pleural effusion right side" is one of them, and its side counts
    if sides:
        base, side = split_side(name)
        if side is not None:
            inner = _resolve(base, table, lookups, standard, sides=False)
            if inner.name is not None:
                return Resolved(inner.name, side, "side")
    if k in recorded:
        return Resolved(recorded[k], how="synonym")
    if standard(name) in standards:
        return Resolved(standards[standard(name)], how="synonym")
    names = {**recorded, **canonical}
    closest = difflib.get_close_matches(k, list(names), n=3, cutoff=0.5)
    return Resolved(None, how="unknown", closest=list(dict.fromkeys(names[c] for c in closest)))


def _lookups(table: dict[str, Term], standard: Callable[[str], str]) -> _Lookups:
    """{key: name} of the names, of their recorded synonyms, and of their standard names."""
    canonical = {key(name): name for name in table}
    recorded = {key(s): name for name, term in table.items() for s in term.synonyms}
    standards: dict[str, str] = {}
    for name in sorted(table, key=lambda n: -table[n].total):  # the commonest when two share one
        standards.setdefault(standard(name), name)
    return canonical, recorded, standards


def standard_location(name: str) -> str:
    k = key(location_name(name))
    return LOCATION_SYNONYMS.get(k, k)


def _unknown(kind: str, name: str, closest: list[str]) -> str:
    hint = f"; closest known: {', '.join(closest)}" if closest else ""
    return f"unknown {kind} '{name}': the training data never uses it{hint}"


def load_vocabulary(dataset: str | Path) -> Vocabulary:
    """A prepared dataset's vocabulary: from prepare.json, else counted from its metadata rows."""
    from .contracts import METADATA_FILE, PrepareManifest
    from .tables import read_jsonl

    dataset = Path(dataset)
    if PrepareManifest.path(dataset).is_file():
        vocabulary = PrepareManifest.read(dataset).vocabulary
        if vocabulary:  # prepare.json files from before vocabularies have none
            return Vocabulary.from_json(vocabulary)
    rows = {
        meta.parent.name: [row for _, row in read_jsonl(meta)] for meta in sorted(dataset.glob(f"*/{METADATA_FILE}"))
    }
    return Vocabulary.from_rows(rows)
