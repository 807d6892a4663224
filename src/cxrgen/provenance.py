"""What made an output: code version, library versions, input hashes. Recorded by every stage."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from . import __version__

_LIBRARIES = ("numpy", "pillow", "pydicom", "torch", "transformers", "diffusers", "peft", "accelerate")


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0 and commit.stdout.strip():
            return f"{__version__}+g{commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance() -> dict[str, Any]:
    return {
        "cxrgen": code_version(),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def portable(value: str, root: str | Path) -> str:
    """A local path as seen from `root`, the output folder that records it ('../prepared'), in POSIX form; the
    path part of 'name=PATH' and 'PATH:weight' forms likewise. Hub ids and other words stay as they are."""
    if _is_local(value):
        return _relative(value, root)
    name, sep, path = value.partition("=")
    if sep and _is_local(path):
        return f"{name}={_relative(path, root)}"
    path, sep, weight = value.rpartition(":")
    if sep and path and Path(path).exists():
        return _relative(path, root) + sep + weight
    return value


def _is_local(value: str) -> bool:
    return bool(value) and (Path(value).expanduser().is_absolute() or Path(value).exists())


def _relative(path: str, root: str | Path) -> str:
    return Path(os.path.relpath(Path(path).expanduser().resolve(), Path(root).resolve())).as_posix()


def portable_tree(value: Any, root: str | Path) -> Any:
    """`value` (JSON-like) with every absolute path in it made relative to `root`, for documents whose paths are
    not in typed fields (a metric's closest image pairs)."""
    if isinstance(value, dict):
        return {k: portable_tree(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_tree(v, root) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return _relative(value, root)
    return value
