"""The folders the app was given, what is in them, and the only way a browser's request reaches a file.

A request names a folder by its id (a digest of its path) and a file by a path inside it. `FolderIndex.file`
answers a file only when its real path (links followed) lies inside the folder's real path and is a regular file;
anything else (`..`, absolute paths, links leading out, unknown ids) is None, which the server answers with 404.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from ..contracts import METADATA_FILE, MetricsDocument, PrepareManifest, RunManifest

Kind = Literal["data", "runs", "evals", "out"]
SPLITS = ("train", "val", "test")
# prepare's way back to source paths and its list of source paths left out: never served (nor are dot files)
LOCAL_ONLY = {"source_index.csv", "rejected.csv"}


@dataclass(frozen=True)
class Folder:
    kind: Kind
    id: str
    path: Path  # resolved
    name: str  # as shown: the path as given, or the given parent's name / the folder's name


def folder_id(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def is_dataset(path: Path) -> bool:
    return PrepareManifest.path(path).is_file() or any((path / s / METADATA_FILE).is_file() for s in SPLITS)


def is_run(path: Path) -> bool:
    return RunManifest.path(path).is_file() or ((path / "config.yaml").is_file() and (path / "metrics.jsonl").exists())


def is_evaluation(path: Path) -> bool:
    return MetricsDocument.path(path).is_file() or (path / "report.html").is_file()


RECOGNISE = {"data": is_dataset, "runs": is_run, "evals": is_evaluation}


def discover(kind: Kind, given: list[str]) -> list[Folder]:
    """Each given folder that is one of `kind`, else its subfolders that are (a folder of runs, of datasets)."""
    found: dict[Path, Folder] = {}
    for text in given:
        root = Path(text).expanduser().resolve()
        shown = shown_name(text)
        candidates = [(root, shown)]
        if not RECOGNISE[kind](root) and root.is_dir():
            candidates = [(p, f"{shown}/{p.name}") for p in sorted(root.iterdir()) if p.is_dir()]
        for path, name in candidates:
            if RECOGNISE[kind](path) and path not in found:
                found[path] = Folder(kind, folder_id(path), path, name)
    return list(found.values())


def shown_name(given: str) -> str:
    """A folder as the page names it: as given when relative, else its last two parts (a page shown to others,
    or a screenshot, need not tell the whole directory layout)."""
    path = Path(given.rstrip("/") or "/")
    return given.rstrip("/") if not path.is_absolute() else "/".join(path.parts[-2:])


class FolderIndex:
    """The folders of each kind, looked up again on each request (a run started after the app is found)."""

    def __init__(self, data: list[str], runs: list[str], evals: list[str], out: Path):
        self.given: dict[Kind, list[str]] = {"data": data, "runs": runs, "evals": evals}
        self.out = Folder("out", "out", out.resolve(), str(out))

    def all(self, kind: Kind) -> list[Folder]:
        return [self.out] if kind == "out" else discover(kind, self.given[kind])

    def get(self, kind: str, id: str) -> Folder | None:
        if kind not in ("data", "runs", "evals", "out"):
            return None
        return next((f for f in self.all(kind) if f.id == id), None)  # type: ignore[arg-type]

    def file(self, kind: str, id: str, relative: str) -> Path | None:
        """The file `relative` (URL-encoded, '/'-separated) inside folder `id` of `kind`, or None. In --out, only
        the sets the app made (set-NNNN): --out may be a folder holding other things."""
        folder = self.get(kind, id)
        if folder is None or (kind == "out" and not re.fullmatch(r"set-\d{4}", unquote(relative).split("/")[0])):
            return None
        return inside(folder.path, relative)


def inside(root: Path, relative: str) -> Path | None:
    """`root/relative` if it is a regular file whose real path is under `root`'s real path; no dot files (the
    local-only salt, journals, the running marker), no local-only index, and nothing named by an absolute path or
    `..`."""
    parts = unquote(relative).split("/")
    if not relative or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    try:
        real_root = root.resolve(strict=True)
        target = real_root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if real_root not in target.parents or not target.is_file():
        return None
    # what the path leads to, links followed: a link named "salt" to .patient_key_salt is still a dot file
    # (compared without case: SOURCE_INDEX.CSV is the same file on macOS and Windows file systems)
    reached = target.relative_to(real_root).parts
    if any(p.startswith(".") for p in reached) or reached[-1].lower() in LOCAL_ONLY:
        return None
    return target
