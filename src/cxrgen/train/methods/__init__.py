"""Training methods. Each registers itself in its own module; importing the module here is its registration line."""

from . import full, lora  # noqa: F401  (the registration lines)
from .base import METHODS, Exported, TrainingMethod

__all__ = ["METHODS", "Exported", "TrainingMethod"]
