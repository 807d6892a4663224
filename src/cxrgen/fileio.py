"""Writing files so that an interrupted run never leaves a partial one: write beside, then rename."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def cache_root(configured: str | None = None) -> Path:
    """Where cxrgen keeps what it computes once and reuses: `configured`, else $CXRGEN_CACHE, else ~/.cache/cxrgen."""
    return Path(configured or os.environ.get("CXRGEN_CACHE", Path.home() / ".cache" / "cxrgen")).expanduser()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(targets: Iterable[str | Path]) -> int:
    """Delete what atomic writes of `targets` left behind when killed before their cleanup ran (SIGKILL, power
    loss). Only for files this process alone writes: another writer's temporary file may be in use. One folder
    scan per parent, not one per file."""
    folders: dict[Path, set[str]] = {}
    for target in map(Path, targets):
        folders.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in folders.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            stem, tmp, pid = entry.name.rpartition(".tmp")
            if tmp and pid.isdigit() and stem.startswith(".") and stem[1:] in names:
                os.unlink(entry.path)
                removed += 1
    return removed


def stat_digest(paths: Iterable[Path], root: Path | None = None) -> str:
    """A cheap identity of files for cache keys: each one's name (relative to `root` when given), size and
    modification time. A rewritten file changes it without its content being read."""
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        name = path.relative_to(root).as_posix() if root is not None else str(path)
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def write_text(path: str | Path, text: str, private: bool = False) -> Path:
    """`private`: readable by the owner only (mode 600), for files that must stay on this machine."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if private:
            tmp.chmod(0o600)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]], private: bool = False) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue(), private)


def read_jsonl_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    """Complete lines of a JSON Lines file that may have been cut off mid-line by a kill."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def sort_safetensors_metadata(path: str | Path) -> None:
    """Put a safetensors file's `__metadata__` keys in sorted order, in place. The safetensors writer keeps them in
    a hash map, whose order changes from process to process: the same weights and metadata written by a resumed run
    and by an uninterrupted one would otherwise differ in their bytes. The header keeps its length (the same keys
    and values), so the tensor data does not move."""
    with open(path, "r+b") as fh:
        length = int.from_bytes(fh.read(8), "little")
        raw = fh.read(length)
        header = json.loads(raw)
        if len(header.get("__metadata__") or {}) < 2:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # never: reordering keeps the length; leave the file as the writer made it
            return
        fh.seek(8)
        fh.write(text + b" " * (length - len(text)))  # the format pads its header with spaces
