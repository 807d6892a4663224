"""The release-reader seam: what a reader is, what it returns, and where a record's image file is.

A reader is a registered `ReleaseReader` (`@READERS.register`) in its own module: a name, its own options (a small
dataclass, offered as `--<name>.<option>`), and `read`, which turns the release's tables into `Record`s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tqdm import tqdm

from ...records import PatientKeyer, Record, Rejection
from ...registry import Registry
from ...tables import TableError

T = TypeVar("T")


def with_progress(rows: Iterable[T], source: str) -> Iterator[T]:
    """A release table's rows with a progress bar: a full release's table (160,000+ rows) can take tens of seconds to
    parse. Its length is not known before reading, so the bar counts rows and their rate."""
    yield from tqdm(rows, desc=f"{source}: reading rows", unit="row", dynamic_ncols=True)


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)  # "rows", per-layout counts, ...


def resolve_image(root: Path, relative: str) -> Path | None:
    """The source file for a record, or None if it lies outside the images root (also through a link). A
    CheXpert-style path that repeats the root's own name (CheXpert-v1.0-small/train/...) works either way."""
    candidate = (root / relative).resolve()
    parts = Path(relative).parts
    if not candidate.exists() and len(parts) > 1 and parts[0] == root.name:
        candidate = (root / Path(*parts[1:])).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None


class ReleaseReader:
    name: ClassVar[str]
    help: ClassVar[str]  # one line for `cxrgen prepare --help`
    Options: ClassVar[type | None] = None  # its own settings, a dataclass of `config.option` fields
    main_table: ClassVar[str | None] = None  # what --csv must point at; None: the release has no main table

    def read(self, csv: Path | None, images: Path | None, options: Any, keyer: PatientKeyer) -> ReadResult:
        raise NotImplementedError

    def input_name(self, csv: Path | None, images: Path | None, options: Any) -> str:
        """The input a user would look at when nothing could be read from it."""
        return str(csv)


READERS: Registry[type[ReleaseReader]] = Registry("release reader")


def read_source(
    kind: str,
    keyer: PatientKeyer,
    *,
    csv: str | Path | None = None,
    images: str | Path | None = None,
    options: Any = None,
) -> ReadResult:
    """Read a release with the reader registered as `kind` (its default options unless given)."""
    reader = READERS[kind]
    if reader.main_table is not None and csv is None:
        raise TableError(f"a {kind} source needs --csv pointing at {reader.main_table}")
    if options is None and reader.Options is not None:
        options = reader.Options()
    return reader().read(Path(csv) if csv else None, Path(images) if images else None, options, keyer)
