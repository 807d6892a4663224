"""`cxrgen report DIR`: one self-contained HTML page from metrics.json (images and plots embedded)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import option
from ..fileio import read_jsonl_lines
from ..grid import image_grid
from ..records import findings_from_value
from .imagesets import ImageSetError, load_gray, open_set

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.9em}
img{max-width:100%}.pair{display:inline-block;margin:4px;text-align:center;font-size:.8em}.flag{color:#b00;font-weight:bold}
"""


@dataclass
class ReportConfig:
    folder: str = option(help="an evaluation output folder holding metrics.json", positional=True)


def _png(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(image: Any, alt: str) -> str:
    return f'<img src="{_png(image)}" alt="{html.escape(alt)}">'


def _figure(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return '<img src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def _value(d: dict[str, Any], digits: int = 3) -> str:
    if "low" in d:
        return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"
    return f"{d['value']:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sets(m: dict[str, Any]) -> str:
    return _table(
        ["set", "folder", "images", "sizes (px)"],
        [[k, v["folder"], v["images"], ", ".join(map(str, v["sizes"]))] for k, v in m["sets"].items()],
    )


def _fidelity(m: dict[str, Any]) -> str:
    rows, notes = [], []
    for name, f in m["fidelity"].items():
        p = f["prdc"]
        rows.append(
            [
                name,
                _value(f["fid"], 2),
                _value(f["kid"], 5),
                f"{p['precision']:.3f}",
                f"{p['recall']:.3f}",
                f"{p['density']:.3f}",
                f"{p['coverage']:.3f}",
            ]
        )
        notes += [f"{name}: {f[k]}" for k in ("note", "warning") if k in f]
    out = _table(["extractor", "FID [95% interval]", "KID", "precision", "recall", "density", "coverage"], rows)
    out += "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)

    def bars(ax):
        names = list(m["fidelity"])
        keys = ("precision", "recall", "density", "coverage")
        for i, key in enumerate(keys):
            ax.bar(
                np.arange(len(names)) + i * 0.2,
                [m["fidelity"][n]["prdc"][key] for n in names],
                0.2,
                label=key,
            )
        ax.set_xticks(np.arange(len(names)) + 0.3, names)
        ax.set_ylim(0, max(1.2, max(m["fidelity"][n]["prdc"]["density"] for n in names) * 1.1))
        ax.legend(ncol=4, fontsize=8)
        ax.set_title("precision, recall, density, coverage (k-NN, Naeem et al. 2020)")

    return out + _figure(bars)


def _diversity(m: dict[str, Any]) -> str:
    d = m["diversity"]
    rows = [
        [label, f"{v['mean']:.3f} ± {v['std']:.3f}", v.get("pairs", "")]
        for label, v in (
            ("generated, within a prompt", d["generated_within_prompt"]),
            ("generated, across the set", d["generated_across_set"]),
            ("real, across the set", d["real_across_set"]),
        )
        if v
    ]
    return _table(["MS-SSIM (1 = identical; lower = more diverse)", "mean ± sd", "pairs"], rows)


def _group_key(row: dict[str, Any]) -> str:
    labels = [f.label for f in findings_from_value(row.get("findings")) if not f.is_pseudo]
    return labels[0].lower() if labels else ("normal" if row.get("findings") else row.get("text", "")[:60])


def _samples(m: dict[str, Any], groups: int = 8, per_group: int = 8, thumb: int = 112) -> str:
    generated = open_set(m["sets"]["generated"]["folder"], None, "generated")
    out = []
    if generated.rows:
        by: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(generated.rows):
            by[_group_key(row)].append(i)
        for key, idx in sorted(by.items(), key=lambda kv: -len(kv[1]))[:groups]:
            tiles = [(generated.load(i), f"seed {generated.rows[i].get('seed', '')}") for i in idx[:per_group]]
            out.append(
                f"<h3>{html.escape(key)} ({len(idx)} images)</h3>{_img(image_grid(tiles, per_group, thumb), key)}"
            )
    else:
        tiles = [(generated.load(i), generated.files[i].name) for i in range(min(len(generated), groups * per_group))]
        out.append(_img(image_grid(tiles, per_group, thumb), "generated"))
    real = open_set(m["sets"]["real"]["folder"], None, "real")
    tiles = [(real.load(i), "real") for i in range(min(len(real), per_group))]
    out.append(f"<h3>real images, for comparison</h3>{_img(image_grid(tiles, per_group, thumb), 'real')}")
    return "".join(out)


def _memorization(m: dict[str, Any]) -> str:
    mem = m["memorization"]
    out = [
        f"<p>{mem['flagged']} of {m['sets']['generated']['images']} generated images are flagged as likely copies "
        f"(detail correlation above {mem['pixel_threshold']:.3f}"
        + (f" or feature cosine above {mem['feature_threshold']:.3f}" if mem["feature_threshold"] is not None else "")
        + "). Thresholds are calibrated on how close different training patients are to each other.</p>"
    ]
    for pair in mem["closest_pairs"]:
        tiles = [
            (load_gray(Path(pair["generated"]), 128), "generated"),
            (load_gray(Path(pair["train"]), 128), "training"),
        ]
        flag = '<span class="flag">FLAGGED</span> ' if pair["flagged"] else ""
        caption = f"{flag}r={pair['pixel_correlation']:.3f} ({html.escape(pair['variant'])})"
        if pair["feature_cosine"] is not None:
            caption += f", cos={pair['feature_cosine']:.3f}"
        out.append(f'<div class="pair">{_img(image_grid(tiles, 2, 128), "pair")}<br>{caption}</div>')

    def histogram(ax):
        ax.hist(mem["pixel_nn"], bins=40, color="#4a7")
        ax.axvline(mem["pixel_threshold"], color="#b00", ls="--", label="flag threshold")
        ax.set_xlabel("detail correlation of each generated image with its nearest training image")
        ax.legend()

    return "".join(out) + _figure(histogram)


def _adherence(m: dict[str, Any]) -> str:
    a = m["adherence"]
    if "skipped" in a:
        return _note(f"not measured: {a['skipped']}")
    rows = [
        [k, f"{v['auroc']:.3f}" if v["auroc"] is not None else "-", v["positives"], v["negatives"]]
        for k, v in a["per_finding"].items()
    ]
    out = _table(["finding (classifier output)", "AUROC", "images asking for it", "other images"], rows)
    extra = [f"sex accuracy {a['sex_accuracy']:.3f}" for _ in [0] if "sex_accuracy" in a] + [
        f"age error {a['age_mae']:.1f} years" for _ in [0] if "age_mae" in a
    ]
    if extra:
        out += f"<p>{', '.join(extra)}</p>"
    if a.get("labels_without_classifier_output"):
        missing = html.escape(", ".join(a["labels_without_classifier_output"]))
        out += f'<p class="note">labels the classifier has no output for: {missing}</p>'
    return out


def _forgetting(m: dict[str, Any]) -> str:
    f = m["forgetting"]
    rows = [[p, f"{v['feature_cosine']:.3f}", f"{v['detail_correlation']:.3f}"] for p, v in f["per_prompt"].items()]
    out = _table(["prompt (same seeds)", "feature cosine, fine-tuned vs base", "detail correlation"], rows)
    tuned, base = (
        open_set(f["files"]["tuned"], "train", "tuned"),
        open_set(f["files"]["base"], "train", "base"),
    )
    tiles = []
    for i in range(len(tuned)):
        if tuned.rows[i].get("seed") == tuned.rows[0].get("seed") or i % max(1, len(tuned) // 5) == 0:
            tiles += [(base.load(i), "base: " + tuned.rows[i]["text"]), (tuned.load(i), "fine-tuned")]
    return out + _img(image_grid(tiles[:20], 4, 128), "forgetting")


def _training(run: Path) -> str:
    log = run / "metrics.jsonl"
    out = []
    if log.is_file():
        rows = list(read_jsonl_lines(log))  # a killed run may have cut its last line

        def curves(ax):
            for key, label in (("loss/train", "train loss"), ("loss/val", "validation loss")):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=label, marker="." if key == "loss/val" else None)
            ax.set_xlabel("step")
            ax.legend()

        out.append(_figure(curves))
    samples = sorted((run / "samples").glob("*.png"))
    if samples:
        from PIL import Image

        with Image.open(samples[-1]) as im:
            out.append(f"<h3>sample grid at {html.escape(samples[-1].stem)}</h3>{_img(im.convert('L'), 'samples')}")
    return "".join(out)


def _shown(draw: Any, m: dict[str, Any]) -> str:
    """A section drawn from image files: a note rather than a crash when they have moved since the evaluation."""
    try:
        return draw(m)
    except (ImageSetError, OSError) as exc:
        return _note(f"images not at hand ({exc}); the metrics above stand")


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def write_report(folder: str | Path) -> Path:
    folder = Path(folder)
    m = json.loads((folder / "metrics.json").read_text())
    sections = [
        ("Image sets", _sets(m)),
        ("Fidelity", _fidelity(m)),
        ("Diversity", _diversity(m)),
        ("Samples by condition", _shown(_samples, m)),
    ]
    # a section that was not measured says how to measure it, so every report has the same outline
    run = Path(m["run"]) if m.get("run") else None
    sections += [
        (
            "Memorization: nearest training images",
            _shown(_memorization, m)
            if "memorization" in m
            else _note("not measured: give --train (the training images)"),
        ),
        (
            "Prompt adherence",
            _adherence(m)
            if "adherence" in m
            else _note(
                "not measured: needs a classifier of findings, e.g. --extractors inception xrv "
                "--weights xrv=densenet121-res224-all.pt --allow-pickle"
            ),
        ),
        (
            "Forgetting: generic prompts, fine-tuned vs base",
            _shown(_forgetting, m) if "forgetting" in m else _note("not measured: give --run RUN --forgetting"),
        ),
        (
            "Training",
            _training(run)
            if run is not None and run.is_dir()
            else _note(
                f"the run {run} is not at hand" if run is not None else "no run: give --run RUN for its loss curves"
            ),
        ),
    ]
    config = html.escape(
        json.dumps({k: m[k] for k in ("config", "extractors", "versions", "cxrgen", "created") if k in m}, indent=2)
    )
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cxrgen evaluation</title><style>{CSS}</style></head>"
        f"<body><h1>cxrgen evaluation</h1><p class='note'>{html.escape(m.get('created', ''))} · "
        f"cxrgen {html.escape(m.get('cxrgen', ''))}"
        f" · {m.get('seconds', '')} s</p>{body}<h2>Settings and versions</h2><details><summary>show</summary>"
        f"<pre>{config}</pre></details></body></html>"
    )
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(config: ReportConfig) -> int:
    print(f"report: {write_report(config.folder)}")
    return 0
