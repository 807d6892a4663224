"""Fidelity by finding (CheXGenBench's conditional analysis): the whole-set distances, finding by finding.

For each finding, the real images whose labels state it are compared with the generated images whose conditions
asked for it (labels.py reads both sets' metadata rows alike; an image stating several findings counts in each),
in every extractor's features, with the same figures and intervals as the whole sets. A generated set can match
the real one as a whole and still draw one finding poorly: this is where that shows. A finding is measured only
with enough images in both sets (`--fidelity.min-per-finding`); the others are listed with their counts.

The distances are passed in (`measure`), so this module knows nothing of how they are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from .html import as_figure, escape, figure, note, table, with_interval
from .labels import images_by_finding

Measure = Callable[[np.ndarray, np.ndarray], dict[str, Any]]

METHOD = (
    "By finding: the real images whose labels state the finding against the generated images whose conditions "
    "asked for it (labels compared by their standard names; an image stating several findings counts in each), "
    "with the same figures and intervals as the whole sets. Each finding's FID is from its own, smaller, sets: "
    "compare findings by KID or the bias-corrected FID, and each with the whole sets' KID (dashed)."
)


def unavailable(real_rows: Sequence[dict[str, Any]], generated_rows: Sequence[dict[str, Any]]) -> str | None:
    """Why the sets cannot be compared finding by finding, or None when they can."""
    for name, rows in (("real", real_rows), ("generated", generated_rows)):
        if not rows:
            return f"the {name} set has no metadata.jsonl (a plain folder): no labels to group its images by"
    for name, rows in (("real", real_rows), ("generated", generated_rows)):
        if not any(row.get("findings") for row in rows):
            return f"no image of the {name} set states a finding"
    return None


def by_finding(
    real: np.ndarray,
    generated: np.ndarray,
    real_rows: Sequence[dict[str, Any]],
    generated_rows: Sequence[dict[str, Any]],
    minimum: int,
    measure: Measure,
    label: str = "",
) -> dict[str, Any]:
    """The distances between each finding's real and generated images (features in the rows' order), for the
    findings with at least `minimum` images in both sets, largest first; the rest as `skipped` with their counts."""
    real_groups, generated_groups = images_by_finding(real_rows), images_by_finding(generated_rows)
    sizes = {
        name: (len(real_groups.get(name, ())), len(generated_groups.get(name, ())))
        for name in real_groups.keys() | generated_groups.keys()
    }
    order = sorted(sizes, key=lambda name: (-min(sizes[name]), name))
    kept = [name for name in order if min(sizes[name]) >= minimum]
    findings = {}
    for name in tqdm(kept, desc=f"{label} fidelity by finding".strip(), unit="finding", dynamic_ncols=True):
        result = measure(real[real_groups[name]], generated[generated_groups[name]])
        result.pop("warning", None)  # each finding's `headline` says it; the section's note says why
        findings[name] = {"real_images": sizes[name][0], "generated_images": sizes[name][1], **result}
    skipped = {
        name: {"real_images": sizes[name][0], "generated_images": sizes[name][1]} for name in order if name not in kept
    }
    return {"minimum": minimum, "findings": findings, "skipped": skipped}


def summary_lines(extractor: str, section: dict[str, Any]) -> list[str]:
    """A count line, then one line per measured finding: its sizes and the headline figures."""
    findings, skipped = section["findings"], section["skipped"]
    lines = [
        f"{extractor} by finding: {len(findings)} measured, {len(skipped)} with fewer than {section['minimum']} "
        "images in a set"
    ]
    for name, f in findings.items():
        figures = [f"KID {with_interval(f['kid'], 5)}", f"FID {with_interval(f['fid'], 2)}"]
        if f.get("headline") == "fid":
            figures.reverse()
        lines.append(f"  {name} ({f['real_images']} real, {f['generated_images']} generated): " + "  ".join(figures))
    return lines


def report_html(
    extractor: str, section: dict[str, Any], whole_set_kid: dict[str, Any] | float | None, prdc: Sequence[str]
) -> str:
    """A table of each finding's figures (`prdc`: the PRDC figures' keys, in order), a plot of KID by finding, and
    the findings left out."""
    findings, skipped = section["findings"], section["skipped"]
    out = f"<h3>{escape(extractor)}: by finding</h3>"
    if findings:
        rows = []
        for name, f in findings.items():
            kid = with_interval(f["kid"], 5) + (" (headline)" if f.get("headline") == "kid" else "")
            corrected = with_interval(f["fid_corrected"], 2) if "fid_corrected" in f else "-"
            shares = [with_interval(f["prdc"][key]) for key in prdc]
            rows.append(
                [name, f["real_images"], f["generated_images"], kid, with_interval(f["fid"], 2), corrected, *shares]
            )
        header = ["finding", "real images", "generated images", "KID [95% interval]", "FID at this size"]
        out += table([*header, "FID bias-corrected", *prdc], rows)
        out += figure(lambda ax: _kid_plot(ax, findings, whole_set_kid))
    else:
        out += note(f"no finding has {section['minimum']} images in both sets")
    if skipped:
        listed = ", ".join(
            f"{name} ({s['real_images']} real, {s['generated_images']} generated)" for name, s in skipped.items()
        )
        out += note(f"not measured, fewer than {section['minimum']} images in a set: {listed}")
    return out


def _kid_plot(ax: Any, findings: dict[str, Any], whole_set_kid: dict[str, Any] | float | None) -> None:
    """KID per finding with its 95% interval, one row each, the whole sets' KID as a dashed line."""
    names = list(findings)
    figures = [as_figure(findings[name]["kid"]) for name in names]
    values = np.array([d["value"] for d in figures])
    spread = np.array(
        [[d["value"] - d.get("low", d["value"]), d.get("high", d["value"]) - d["value"]] for d in figures]
    )
    ax.figure.set_figheight(max(2.4, 1.2 + 0.3 * len(names)))
    y = np.arange(len(names))[::-1]
    ax.errorbar(values, y, xerr=spread.T, fmt="o", capsize=3)
    ax.set_yticks(y, names)
    if whole_set_kid is not None:
        ax.axvline(as_figure(whole_set_kid)["value"], color="grey", linestyle="--", label="whole sets")
        ax.legend(fontsize=8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("KID: real images with the finding vs generated images asked for it")
    ax.set_title("KID by finding, 95% intervals")
