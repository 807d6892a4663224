"""A PadChest-sized labels CSV with the real release's counts and quirks, for benchmarks.

Numbers follow what was measured on the real file: 160,861 rows, 67,625 patients, projections PA 91,728 / L 49,579
/ AP_horizontal 14,346 / AP 4,559 / COSTAL 630 / EXCLUDE 11 / UNK 8, sex M 80,920 / F 79,919 / O 18 / blank 4,
6 blank birth years, 69,085 blank views, 103 blank label cells, ~39,000 nested and ~122,000 flat
LabelsLocalizationsBySentence, and a heavy tail of long reports (labels repeated sentence after sentence).
`Labels` is the image-level set; the sentence column labels sentences as the real one does: `normal` sentences
beside findings in about a fifth of rows with findings, 26 lateralised spellings ("pleural effusion right side"),
and about 500 rows whose Labels cell is `['']` (normal or exclude only in the sentences, only locations, or
nothing). `Labels` itself puts normal beside a finding in about 200 rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrgen.phantom import padchest_row, write_padchest_csv

ROWS = 160_861
PATIENTS = 67_625
TOP_LABELS = [
    ("normal", 50616),
    ("COPD signs", 23280),
    ("cardiomegaly", 15028),
    ("unchanged", 14349),
    ("aortic elongation", 10824),
    ("pleural effusion", 10026),
    ("scoliosis", 8335),
    ("pneumonia", 8037),
    ("chronic changes", 7000),
    ("interstitial pattern", 6000),
    ("laminar atelectasis", 5000),
    ("pacemaker", 4000),
    ("nodule", 3500),
    ("alveolar pattern", 3400),
    ("costophrenic angle blunting", 3000),
    ("apical pleural thickening", 2800),
    ("vertebral degenerative changes", 2700),
    ("aortic atheromatosis", 2600),
    ("hiatal hernia", 2000),
    ("calcified granuloma", 1900),
    ("heart insufficiency", 1800),
    ("NSG tube", 1500),
    ("endotracheal tube", 1400),
    ("central venous catheter via jugular vein", 1200),
    ("suboptimal study", 600),
    ("exclude", 300),
]
# the sentence column's lateralised spellings: each a Labels label plus a side
SIDE_VARIANTS = [
    f"{label} {side}"
    for label in (
        "pleural effusion",
        "hypoexpansion",
        "laminar atelectasis",
        "costophrenic angle blunting",
        "alveolar pattern",
        "interstitial pattern",
        "pneumonia",
        "apical pleural thickening",
    )
    for side in ("right side", "left side", "both sides")
][:24] + ["hypoexpansion both side", "nodule right side"]
LOCATIONS = [
    "right",
    "left",
    "basal",
    "bilateral",
    "cardiac",
    "pleural",
    "right upper lobe",
    "left upper lobe",
    "right lower lobe",
    "left lower lobe",
    "middle lobe",
    "costophrenic angle",
    "hilar",
    "apical",
    "thoracic spine",
    "aortic button",
    "perihilar",
    "subsegmental",
    "lingula",
    "paracardiac",
]


def _vocabulary():
    labels = [name for name, _ in TOP_LABELS] + [f"rare finding {i}" for i in range(194 - len(TOP_LABELS))]
    weights = np.array([n for _, n in TOP_LABELS] + list(np.geomspace(900, 3, 194 - len(TOP_LABELS))), float)
    locations = LOCATIONS + [f"region {i}" for i in range(104 - len(LOCATIONS))]
    return labels, weights / weights.sum(), locations


def _counts(rng, n, table):
    values = np.repeat([k for k, _ in table], [v for _, v in table])
    return rng.permutation(np.concatenate([values, np.repeat(values[:1], max(0, n - len(values)))]))[:n]


def write_csv(path: Path, rows: int = ROWS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels, p, locations = _vocabulary()
    scale = rows / ROWS
    projection = _counts(
        rng,
        rows,
        [
            ("PA", 91728),
            ("L", 49579),
            ("AP_horizontal", 14346),
            ("AP", 4559),
            ("COSTAL", 630),
            ("EXCLUDE", 11),
            ("UNK", 8),
        ],
    )
    sex = _counts(rng, rows, [("M", 80920), ("F", 79919), ("O", 18), ("", 4)])
    patient = np.sort(rng.integers(0, int(PATIENTS * scale) or 1, rows))
    blank_birth = set(rng.choice(rows, max(1, int(6 * scale)), replace=False).tolist())
    blank_labels = set(rng.choice(rows, max(1, int(103 * scale)), replace=False).tolist())
    nan_rows = set(rng.choice(rows, max(1, int(40 * scale)), replace=False).tolist())
    view_by_projection = {
        "PA": ["POSTEROANTERIOR", "PA"],
        "L": ["LATERAL", "LL", "RL"],
        "AP": ["ANTEROPOSTERIOR", "AP"],
        "AP_horizontal": ["AP", "GENERICA"],
        "COSTAL": ["OBLICUA"],
        "EXCLUDE": ["LLD"],
        "UNK": ["GENERICA"],
    }
    labels_index = {name: i for i, name in enumerate(labels)}
    findings_p = p.copy()
    findings_p[labels_index["normal"]] = 0.0  # a study's findings; normal is decided per study below
    findings_p /= findings_p.sum()
    side_of = {}
    for variant in SIDE_VARIANTS:
        base = variant.rsplit(" ", 2)[0]
        side_of.setdefault(base, []).append(variant)
    blank_image_level = set(rng.choice(rows, max(1, int(500 * scale)), replace=False).tolist())
    out = []
    for i in range(rows):
        normal_study = rng.random() < 50616 / 160861
        # Sentences per report: most short, a long tail (the real maximum prompt is ~1,070 tokens).
        n_sentences = 3 + min(int(rng.pareto(1.0) * 2.2), 90)
        if normal_study:  # "sin hallazgos": a sentence or two
            n_sentences = 1 + (rng.random() < 0.2)
        study = [] if normal_study else list(dict.fromkeys(rng.choice(labels, size=rng.integers(1, 4), p=findings_p)))
        sentences = []
        for k in range(n_sentences):
            if normal_study:
                name = "normal"
            elif k < len(study):
                name = study[k]
            elif rng.random() < 0.97:  # long reports name many findings...
                name = str(rng.choice(labels, p=findings_p))
                study += [name] if name not in study else []
            else:  # ...and now and then one again
                name = str(rng.choice(study))
            if name in side_of and rng.random() < 0.25:
                name = str(rng.choice(side_of[name]))
            locs = (
                [f"loc {x}" for x in rng.choice(locations, size=rng.integers(0, 3))]
                if rng.random() < 0.5 and name != "normal"
                else []
            )
            sentences.append([(" " if rng.random() < 0.3 else "") + name] + locs)
        if study and rng.random() < 0.32:  # "normal heart size": a normal sentence in a study with findings
            sentences.insert(int(rng.integers(0, len(sentences) + 1)), ["normal"])
        image_level = study or ["normal"]
        if study and rng.random() < 200 / 110_000:
            image_level = [*study, "normal"]
        labels_cell = "[" + ", ".join(repr((" " if rng.random() < 0.3 else "") + x) for x in image_level) + "]"
        if i in blank_image_level:
            labels_cell = "['']"
            sentences = [[str(rng.choice(["normal", "exclude", "loc right"]))]] if rng.random() < 0.7 else []
        if rng.random() < 39_000 / 161_000:
            cell = "[" + ", ".join("[" + ", ".join(repr(x) for x in s) + "]" for s in sentences) + "]"
            if i in nan_rows:
                cell = "[nan, " + cell[1:]
        else:
            cell = "[" + ", ".join(repr(x) for s in sentences for x in s) + "]"
        view = "" if rng.random() < 69085 / 160861 else str(rng.choice(view_by_projection[projection[i]]))
        out.append(
            padchest_row(
                ImageID=f"{rng.integers(10**17, 10**18)}_{i:06x}.png",
                ImageDir=i % 55,
                StudyID=f"s{i // 2}",
                PatientID=f"{patient[i] * 7919 + 10**11}",
                PatientBirth="" if i in blank_birth else f"{rng.integers(1915, 2015)}.0",
                StudyDate_DICOM=f"{rng.integers(2009, 2018)}0{rng.integers(1, 10)}1{rng.integers(0, 10)}",
                PatientSex_DICOM=sex[i],
                ViewPosition_DICOM=view,
                Projection=projection[i],
                Modality_DICOM="DX" if rng.random() < 11999 / 160861 else "CR",
                MethodLabel="Physician" if rng.random() < 39053 / 160861 else "RNN_model",
                Report=" ".join(["hallazgos compatibles con la normalidad"] * int(rng.integers(1, 6))),
                Labels="" if i in blank_labels else labels_cell,
                LabelsLocalizationsBySentence="" if i in blank_labels else cell,
            )
        )
    return write_padchest_csv(path, out)
