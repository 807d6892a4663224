"""The Python API: each stage as one function, for notebooks and scripts.

    from cxrgen.api import prepare, train, generate, evaluate

    data = prepare(source="padchest", csv="labels.csv.gz", images="padchest/", out="data/p512")
    run = train(data=str(data.out), out="runs/lora", model={"base": "sd15/"}, max_steps=1000)
    synth = generate(run=str(run.out), like=str(data.out), n=100, out="synth/p512")
    result = evaluate(real=str(data.out), generated=str(synth.out), train=str(data.out), out="eval/p512")
    result.document.sections["fidelity"]

Each takes its stage's config, or the same settings as keyword arguments (nested groups as mappings, or as their
dataclasses; the names are the command's flags with `_` for `-`), checks them as the command line does
(`ConfigError` names the fix), runs the stage and returns its typed result without printing. The CLI is a thin
layer over these same functions. The stages are imported when called, so importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .config import build, merge, to_dict

if TYPE_CHECKING:
    from .evaluate.command import EvaluateConfig, EvaluateResult
    from .generate.command import GenerateConfig, GenerateResult
    from .prepare.command import PrepareConfig, PrepareResult
    from .train.command import TrainConfig, TrainResult

__all__ = ["evaluate", "generate", "prepare", "train"]


def prepare(config: PrepareConfig | None = None, /, **settings: Any) -> PrepareResult:
    """A raw release -> a prepared dataset (`cxrgen prepare`)."""
    from .prepare import command

    return command.run(_config(command.Config, config, settings))


def train(config: TrainConfig | None = None, /, preset: str | None = None, **settings: Any) -> TrainResult:
    """A prepared dataset -> a training run (`cxrgen train`); `preset` as `--preset`, under the settings given."""
    from .train import command
    from .train.config import preset_values

    base = preset_values(preset) if preset else {}
    return command.run(_config(command.Config, config, settings, base))


def generate(config: GenerateConfig | None = None, /, **settings: Any) -> GenerateResult:
    """A run (or base model and LoRAs) and conditions -> a labelled synthetic set (`cxrgen generate`)."""
    from .generate import command

    return command.run(_config(command.Config, config, settings))


def evaluate(config: EvaluateConfig | None = None, /, **settings: Any) -> EvaluateResult:
    """Real, generated (and training) images -> metrics.json and report.html (`cxrgen evaluate`)."""
    from .evaluate import command

    return command.run(_config(command.Config, config, settings))


def _config(cls: type, config: Any, settings: dict[str, Any], base: dict[str, Any] | None = None) -> Any:
    if config is not None:
        if settings or base:
            raise TypeError("give a config or keyword settings, not both")
        return config
    plain = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in settings.items()}
    return build(cls, merge(base or {}, plain))
