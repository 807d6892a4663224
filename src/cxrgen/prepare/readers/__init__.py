"""Release readers turn a raw release into `Record`s. This package is the only place that parses source tables.

Each reader registers itself in its own module; importing the module here is its one registration line.
"""

from __future__ import annotations

from . import chexpert, folder, mimic, padchest  # noqa: F401  (the registration lines)
from .base import READERS, ReadResult, ReleaseReader, read_source

__all__ = ["READERS", "ReadResult", "ReleaseReader", "read_source"]
