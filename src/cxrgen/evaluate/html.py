"""Small HTML pieces the report and each metric's section are built from: tables, notes, embedded images and
plots. Everything is inlined (data URLs), so report.html is one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["CSS", "as_figure", "data_url", "escape", "figure", "img", "note", "pair_html", "table", "with_interval"]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.9em}
img{max-width:100%}.pair{display:inline-block;margin:4px;text-align:center;font-size:.8em}.flag{color:#b00;font-weight:bold}
"""


def data_url(image: Any) -> str:
    """A PIL image as a PNG data URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def img(image: Any, alt: str) -> str:
    return f'<img src="{data_url(image)}" alt="{escape(alt)}">'


def figure(draw: Callable[[Any], None]) -> str:
    """A matplotlib plot drawn by `draw(axes)`, as an embedded PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written by scripts and on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return '<img src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def as_figure(value: dict[str, Any] | float) -> dict[str, Any]:
    """A figure as {"value", ...}: metrics.json files written before the intervals hold some as bare numbers."""
    return value if isinstance(value, dict) else {"value": value}


def with_interval(d: dict[str, Any] | float, digits: int = 3) -> str:
    """A figure with its interval ({"value", "low", "high"}) as "value [low, high]", or the value alone."""
    d = as_figure(d)
    if "low" in d:
        return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"
    return f"{d['value']:.{digits}f}"


def pair_html(generated: str | Path, train: str | Path, caption: Callable[[], str], size: int = 128) -> str:
    """A generated image beside a training image, captioned by `caption()` (HTML: escape what it quotes), called
    once the images are read, so that a report whose images moved says so before anything else."""
    from ..grid import image_grid
    from .imagesets import load_gray

    tiles = [(load_gray(Path(generated), size), "generated"), (load_gray(Path(train), size), "training")]
    return f'<div class="pair">{img(image_grid(tiles, 2, size), "pair")}<br>{caption()}</div>'


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def note(text: str) -> str:
    return f"<p class='note'>{escape(text)}</p>"
