"""The run's logs: metrics.jsonl (which the report reads) and the experiment trackers of `--report-to`
(TensorBoard by default; wandb, MLflow and the others accelerate knows), through accelerate's trackers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..fileio import read_jsonl_lines, write_jsonl

PROJECT = "cxrgen"  # the project (wandb) or experiment (MLflow) a run is logged under


def tracker_names(report_to: list[str]) -> list[str]:
    """The trackers `--report-to` asks for, each installed: 'all' is every installed one, 'none' is none. A tracker
    that is not installed is an error before anything is loaded, never a silent omission."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    installed = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    if "none" in report_to:
        if len(report_to) > 1:
            raise ConfigError("--report-to none cannot be combined with a tracker")
        return []
    for name in report_to:
        if name != "all" and name not in known:
            raise ConfigError(f"--report-to {name}: not a tracker; choose from {', '.join(known)}, all or none")
        if name != "all" and name not in installed:
            raise ConfigError(
                f"--report-to {name}: the {name} package is not installed here (pip install {name}); "
                "TensorBoard needs nothing more (--report-to tensorboard)"
            )
    names = [t for t in known if t in installed] if "all" in report_to else report_to
    return list(dict.fromkeys(names))


def accelerate_trackers(names: list[str], out: Path) -> list[Any]:
    """What `Accelerator(log_with=...)` takes: TensorBoard writing straight into <out>/logs, the others by name."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker("", out / "logs") if n == "tensorboard" else n for n in names]


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The run's settings flattened to the scalar values trackers take ('optim/learning_rate': 1e-4)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}/"))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        else:  # None and lists: trackers take scalars
            flat[name] = json.dumps(value)
    return flat


class RunLog:
    """Scalars to metrics.jsonl and to every tracker; images (sample grids) to the trackers that show images."""

    def __init__(
        self, folder: Path, accelerator: Any, enabled: bool, config: dict[str, Any], resumed_step: int | None = None
    ):
        """`enabled` on the main process only. `resumed_step`: a resumed run drops what the interrupted one logged
        after its checkpoint, as the steps are logged again."""
        self.enabled = enabled
        self.accelerator = accelerator
        self.jsonl = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "metrics.jsonl"
            if resumed_step is not None and path.is_file():
                write_jsonl(path, [r for r in read_jsonl_lines(path) if r.get("step", 0) <= resumed_step])
            self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            for tracker in accelerator.log_with:  # TensorBoard drops the interrupted run's later events too
                if getattr(tracker, "name", None) == "tensorboard":
                    tracker.init_kwargs["purge_step"] = resumed_step
            accelerator.init_trackers(
                PROJECT,
                config=hyperparameters(config),
                init_kwargs={"wandb": {"name": folder.name, "dir": str(folder)}, "mlflow": {"run_name": folder.name}},
            )

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
        self.accelerator.log(clean, step=step)
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self.jsonl.flush()

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        """A grey image (height x width) to the trackers that keep images by step: TensorBoard, wandb, MLflow."""
        if not self.enabled:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, pixels, step, dataformats="HW")
            elif tracker.name == "wandb":
                tracker.log_images({tag: [pixels]}, step=step)
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(pixels, key=tag, step=step)

    def close(self) -> None:
        if self.enabled:
            self.accelerator.end_training()
            self.jsonl.close()
