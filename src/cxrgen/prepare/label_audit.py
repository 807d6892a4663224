"""How a prepared dataset's labels were settled, in figures a user can check against the release.

Readers note, per record, what they had to decide (`Record.label_notes`): a label repeated, a report-sentence
column that disagrees with the image-level one, a side variant mapped, an image-level cell with no label. The
audit counts those over the images kept, for prepare.json and the summary it prints.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..records import Record, merge_repeats, name_key


def label_audit(records: list[Record], sentence_column: bool) -> dict[str, Any]:
    """`sentence_column`: the release labels report sentences too (PadChest), so their agreement is measured."""
    n = len(records)
    kinds: Counter = Counter()
    sentence_only: Counter = Counter()  # images whose sentences state a label their image-level labels lack
    side_spellings: Counter = Counter()
    stated_twice = 0
    for r in records:
        split = [note.partition(": ")[::2] for note in r.label_notes]
        kinds.update({kind for kind, _ in split})  # images, not notes
        sentence_only.update({what for kind, what in split if kind == "sentence only"})
        side_spellings.update(what for kind, what in split if kind == "side variant")
        stated_twice += merge_repeats(r.findings)[1]
    known = {name_key(f.label) for r in records for f in r.findings}
    outside = Counter({name: c for name, c in sentence_only.items() if name_key(name) not in known})
    audit: dict[str, Any] = {
        "images": n,
        "as_image_level_labels": n - kinds["from sentences"],
        "labelled_from_sentences": kinds["from sentences"],  # the image-level cell named no label
        "normal_beside_a_finding": kinds["normal beside finding"],
        "repeats_merged": kinds["repeat"],
        "labels_stated_twice": stated_twice,
    }
    if sentence_column:
        audit |= {
            "sentence_labels_agree": n - kinds["sentences differ"],
            "sentence_only_labels": dict(sentence_only.most_common(20)),
            "side_variants_mapped": kinds["side variant"],
            "side_variant_spellings": dict(side_spellings.most_common()),
            "labels_outside_vocabulary": dict(outside.most_common(20)),
        }
    return audit


def audit_line(audit: dict[str, Any]) -> str:
    """One line for prepare's summary."""
    n = audit["images"] or 1
    line = f"labels: {audit['as_image_level_labels'] / n:.1%} of images as the image-level labels say"
    if "sentence_labels_agree" in audit:
        line += f" (the report-sentence labels alone: {audit['sentence_labels_agree'] / n:.1%})"
    extras = [
        f"{audit['repeats_merged']:,} with a repeated label merged",
        f"{audit['labelled_from_sentences']:,} labelled from sentences (no image-level label)",
    ]
    if "side_variants_mapped" in audit:
        extras += [
            f"{audit['side_variants_mapped']:,} with side variants mapped",
            f"{sum(audit['labels_outside_vocabulary'].values()):,} sentence labels outside the vocabulary",
        ]
    return line + "; " + ", ".join(extras)
