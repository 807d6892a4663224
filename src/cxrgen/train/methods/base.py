"""The training-method seam: what a method decides, and nothing the trainer can decide alone.

A method is a registered `TrainingMethod` (`@METHODS.register`) in its own module: a name, its own options (a
dataclass, offered as `--<name>.<option>`), which parameters train, what it exports and how to sample from that,
and the settings a resumed run must share. The trainer does the rest the same way for every method: the optimizer
over whatever requires a gradient, caches (text embeddings only while the text encoder is frozen), the loss,
checkpoints of the trainable weights, exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...registry import Registry

if TYPE_CHECKING:
    from ...model.loading import Components


@dataclass
class Exported:
    """What a method wrote at the end of training, and how to sample from it (see `RunManifest.sample_with`)."""

    outputs: dict[str, str]  # name -> path
    base: str | None = None  # a folder inside the run to sample from instead of the training base
    adapters: list[tuple[str, float]] = field(default_factory=list)  # applied on the base in order


class TrainingMethod:
    name: ClassVar[str]
    help: ClassVar[str]  # one line for `cxrgen train --help`
    Options: ClassVar[type | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config  # the TrainConfig
        self.options = getattr(config, self.name, None)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise ConfigError for settings this method cannot honour."""

    @property
    def trains_text_encoder(self) -> bool:
        return False

    def stacked(self) -> list[dict[str, Any]]:
        """What the method trains on top of (earlier adapters): path, weight, identity each, for the manifest."""
        return []

    def stack_identity(self) -> list[Any]:
        """What the method puts under the trained weights, for cache keys."""
        return []

    def load_stack(self, components: Components) -> None:
        """Put what the method trains on top of into the freshly loaded model (before class images are drawn)."""

    def prepare(self, components: Components) -> None:
        """Choose the trainable parameters: `requires_grad` on exactly them (the VAE is frozen already)."""
        raise NotImplementedError

    def wholly_trained(self, components: Components) -> list[Any]:
        """Modules trained as a whole: kept in float32 (master weights) under mixed precision."""
        return []

    def ema(self, components: Components, device: Any) -> Any:
        """An exponential moving average of the trained weights, or None."""
        return None

    def resume_settings(self) -> dict[str, Any]:
        """Settings, by flag name, that a resumed run must share with the saved one to continue it exactly."""
        return {}

    def export(self, out: Path, components: Components, trained: dict[str, Any], ema: Any, info: dict) -> Exported:
        """Write the final weights into the run folder `out`. `trained`: the trained models (unwrapped) by part
        name; `info`: the base model's identity and the step."""
        raise NotImplementedError


METHODS: Registry[type[TrainingMethod]] = Registry("training method")
