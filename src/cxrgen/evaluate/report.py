"""`cxrgen report DIR`: one self-contained HTML page from metrics.json (images and plots embedded).

The page frame, the image sets, samples by condition and the training curves are drawn here; each registered
metric draws its own section (metric.py), in the order the metrics were registered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import option
from ..contracts import MetricsDocument
from ..fileio import read_jsonl_lines
from ..grid import image_grid
from ..records import findings_from_value
from .html import CSS, escape, figure, img, note, table
from .imagesets import open_set
from .metric import METRICS, QUESTIONS, answers, from_images, section_html


@dataclass
class ReportConfig:
    folder: str = option(help="an evaluation output folder holding metrics.json", positional=True)


Config = ReportConfig


def run(config: ReportConfig) -> Path:
    return write_report(config.folder)


def summarize(path: Path) -> int:
    print(f"report: {path}")
    return 0


def write_report(folder: str | Path) -> Path:
    """report.html beside the folder's metrics.json (of any schema version this cxrgen reads)."""
    folder = Path(folder)
    doc = MetricsDocument.read(folder)
    sections = [("Faithful, useful, safe?", _answers(doc)), ("Image sets", _sets(doc))]
    sections.append(("Samples by condition", from_images(_samples, doc, folder)))
    sections += [
        (metric.title, section_html(metric(), doc.sections.get(name), doc, folder)) for name, metric in METRICS.items()
    ]
    # sections of metrics not registered here (a plugin this process did not load): shown as they are, not lost
    sections += [
        (name, f"<pre>{escape(json.dumps(section, indent=2))}</pre>")
        for name, section in doc.sections.items()
        if name not in METRICS
    ]
    sections.append(("Training", _training_section(str(folder / doc.run) if doc.run else None)))
    settings = {
        "config": doc.config,
        "extractors": doc.extractors,
        "versions": doc.versions,
        "cxrgen": doc.cxrgen,
        "created": doc.created,
    }
    body = "".join(f"<h2>{escape(title)}</h2>{content}" for title, content in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cxrgen evaluation</title><style>{CSS}</style></head>"
        f"<body><h1>cxrgen evaluation</h1><p class='note'>{escape(doc.created)} · cxrgen {escape(doc.cxrgen)}"
        f" · {doc.seconds} s</p>{body}<h2>Settings and versions</h2><details><summary>show</summary>"
        f"<pre>{escape(json.dumps(settings, indent=2))}</pre></details></body></html>"
    )
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _answers(doc: MetricsDocument) -> str:
    """The three questions side by side, each with its metrics' one-line verdicts and caveats."""
    cells = []
    for question, found in answers(doc).items():
        lines = "".join(
            f"<li><b>{escape(title)}</b>: {escape(verdict)}<br><span class='note'>{escape(caveat)}</span></li>"
            for title, verdict, caveat in found
        )
        cells.append(
            f"<td style='vertical-align:top;text-align:left'><h3>{escape(QUESTIONS[question])}</h3>"
            f"<ul>{lines}</ul></td>"
        )
    return f"<table class='questions'><tr>{''.join(cells)}</tr></table>"


def _sets(doc: MetricsDocument) -> str:
    return table(
        ["set", "folder", "images", "sizes (px)"],
        [[k, v["folder"], v["images"], ", ".join(map(str, v["sizes"]))] for k, v in doc.sets.items()],
    )


def _group_key(row: dict[str, Any]) -> str:
    labels = [f.label for f in findings_from_value(row.get("findings")) if not f.is_pseudo]
    return labels[0].lower() if labels else ("normal" if row.get("findings") else row.get("text", "")[:60])


def _samples(doc: MetricsDocument, folder: Path, groups: int = 8, per_group: int = 8, thumb: int = 112) -> str:
    # metrics.json records the sets' folders relative to itself (absolute ones stay absolute in the join)
    generated = open_set(folder / doc.sets["generated"]["folder"], None, "generated")
    out = []
    if generated.rows:
        by: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(generated.rows):
            by[_group_key(row)].append(i)
        for key, idx in sorted(by.items(), key=lambda kv: -len(kv[1]))[:groups]:
            tiles = [(generated.load(i), f"seed {generated.rows[i].get('seed', '')}") for i in idx[:per_group]]
            out.append(f"<h3>{escape(key)} ({len(idx)} images)</h3>{img(image_grid(tiles, per_group, thumb), key)}")
    else:
        tiles = [(generated.load(i), generated.files[i].name) for i in range(min(len(generated), groups * per_group))]
        out.append(img(image_grid(tiles, per_group, thumb), "generated"))
    real = open_set(folder / doc.sets["real"]["folder"], None, "real")
    tiles = [(real.load(i), "real") for i in range(min(len(real), per_group))]
    out.append(f"<h3>real images, for comparison</h3>{img(image_grid(tiles, per_group, thumb), 'real')}")
    return "".join(out)


def _training_section(run: str | None) -> str:
    if run is None:
        return note("no run: give --run RUN for its loss curves")
    if not Path(run).is_dir():
        return note(f"the run {run} is not at hand")
    return _training(Path(run))


def _training(run_dir: Path) -> str:
    log = run_dir / "metrics.jsonl"
    out = []
    if log.is_file():
        rows = list(read_jsonl_lines(log))  # a killed run may have cut its last line

        def curves(ax: Any) -> None:
            for key, label in (("loss/train", "train loss"), ("loss/val", "validation loss")):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=label, marker="." if key == "loss/val" else None)
            ax.set_xlabel("step")
            ax.legend()

        out.append(figure(curves))
    samples = sorted((run_dir / "samples").glob("*.png"))
    if samples:
        from PIL import Image

        with Image.open(samples[-1]) as im:
            out.append(f"<h3>sample grid at {escape(samples[-1].stem)}</h3>{img(im.convert('L'), 'samples')}")
    return "".join(out)
