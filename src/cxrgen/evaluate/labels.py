"""Which images of a set carry which finding, read from the set's metadata rows.

A row's labels are its `findings` (`records.findings_from_value`: a prepared dataset's rows and `cxrgen generate`'s
rows write them alike), named as the vocabulary compares names across releases (`vocabulary.standard_key`:
"Pleural_Effusion", "effusion" and "pleural effusion right side" are one finding; "No Finding" is "normal").
PadChest's labels that describe the study rather than state a finding (NOT_STATEMENTS) carry none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import PSEUDO_LABELS, findings_from_value, name_key
from ..vocabulary import standard_key

NOT_STATEMENTS = frozenset(PSEUDO_LABELS) - {"normal"}  # "unchanged", "exclude", "suboptimal study"


def finding_names(row: dict[str, Any]) -> set[str]:
    """The standard names of the findings a metadata row states, "normal" included, each once."""
    labels = (f.label for f in findings_from_value(row.get("findings")))
    return {standard_key(label) for label in labels if name_key(label) not in NOT_STATEMENTS}


def images_by_finding(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Finding name -> the indices (ascending) of the rows that state it; an image stating several is in each."""
    found: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for name in finding_names(row):
            found.setdefault(name, []).append(i)
    return {name: np.array(indices, dtype=np.int64) for name, indices in found.items()}
