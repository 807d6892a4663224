"""`--report-to`: each tracker present (TensorBoard for real; wandb and MLflow as stand-in modules at the import
boundary accelerate calls) or missing (a clear error before anything loads); memory logged on the CPU."""

import json
import sys
import types
from types import SimpleNamespace

import pytest
from accelerate import tracking
from accelerate.utils import LoggerType

from cxrgen.cli import main


def run_training(data, model, out, *args):
    flags = ["--max-steps", "2", "--checkpoint-every", "2", *args]
    return main(
        ["train", "--preset", "cpu-smoke", "--data", str(data), "--model.base", str(model), "--out", str(out)] + flags
    )


class Recorder(types.ModuleType):
    """A module whose every function records its call and returns what `returns` names for it."""

    def __init__(self, name, returns=None):
        super().__init__(name)
        self.calls = []
        self.returns = returns or {}

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            self.calls.append((attr, args, kwargs))
            return self.returns.get(attr)

        return call

    def called(self, name):
        return [(args, kwargs) for attr, args, kwargs in self.calls if attr == name]


def installed(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(tracking, "_available_trackers", [*tracking._available_trackers, LoggerType(name)])


def test_tensorboard_by_default_with_memory_on_the_cpu(tiny_dataset, tiny_model, tmp_path, capfd):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_training(tiny_dataset, tiny_model, tmp_path) == 0
    bars = capfd.readouterr().err
    # the slow steps beside training show a bar (its last refresh may fall within tqdm's minimum interval: no 100%)
    assert "validation:   0%" in bars and "sample grid:   0%" in bars
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/train", "lr", "perf/rss_gb", "perf/peak_rss_gb", "perf/tflops"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert 0.05 < events.Scalars("perf/peak_rss_gb")[-1].value < 64  # GiB: a real resident size
    assert events.Tags()["images"] == ["samples"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("perf/rss_gb" in r for r in rows if "loss/train" in r)
    assert json.loads((tmp_path / "run.json").read_text())["figures"]["peak_rss_gb"] > 0.05


def test_report_to_none_writes_metrics_jsonl_only(tiny_dataset, tiny_model, tmp_path):
    assert run_training(tiny_dataset, tiny_model, tmp_path, "--report-to", "none") == 0
    assert not (tmp_path / "logs").exists() and (tmp_path / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_tracker_is_named_before_loading(name, tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "_available_trackers", [t for t in tracking._available_trackers if t != name])
    monkeypatch.setattr("cxrgen.train.trainer.load_components", lambda *a: pytest.fail("loaded the model first"))
    assert run_training(tiny_dataset, tiny_model, tmp_path / "run", "--report-to", "tensorboard", name) == 2
    err = capsys.readouterr().err
    assert f"--report-to {name}: the {name} package is not installed here (pip install {name})" in err
    assert run_training(tiny_dataset, tiny_model, tmp_path / "run", "--report-to", "tensorbord") == 2
    assert "not a tracker; choose from" in capsys.readouterr().err


def test_wandb_receives_scalars_images_and_settings(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    run = Recorder("run")
    wandb = Recorder("wandb", {"init": run})
    wandb.config = Recorder("config")
    installed(monkeypatch, "wandb", wandb)
    assert run_training(tiny_dataset, tiny_model, tmp_path / "run", "--report-to", "wandb") == 0
    [(_, init)] = wandb.called("init")
    assert init["project"] == "cxrgen" and init["name"] == "run"
    [((settings,), _)] = wandb.config.called("update")
    assert settings["optim/learning_rate"] == 1e-4 and settings["max_steps"] == 2
    logged = run.called("log")
    losses = [kw["step"] for (values,), kw in logged if "loss/train" in values]
    assert losses == [1, 2] and all("perf/peak_rss_gb" in values for (values,), _ in logged if "loss/train" in values)
    assert any("samples" in values for (values,), _ in logged)  # the sample grid
    assert run.called("finish")
    assert not (tmp_path / "run" / "logs").exists()  # TensorBoard only when asked for


def test_mlflow_receives_scalars_images_and_settings(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    mlflow = Recorder("mlflow", {"search_experiments": [], "create_experiment": "7", "start_run": SimpleNamespace()})
    mlflow.utils = SimpleNamespace(validation=SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000, MAX_PARAMS_TAGS_PER_BATCH=100))
    installed(monkeypatch, "mlflow", mlflow)
    assert run_training(tiny_dataset, tiny_model, tmp_path / "run", "--report-to", "mlflow", "tensorboard") == 0
    [(_, start)] = mlflow.called("start_run")
    assert start["experiment_id"] == "7" and start["run_name"] == "run"
    params = {k: v for (batch,), _ in mlflow.called("log_params") for k, v in batch.items()}
    assert params["method"] == "lora"
    steps = [kw["step"] for (metrics,), kw in mlflow.called("log_metrics") if "loss/train" in metrics]
    assert steps == [1, 2]
    [((pixels,), image)] = mlflow.called("log_image")
    assert image == {"key": "samples", "step": 2} and pixels.ndim == 2
    assert mlflow.called("end_run") and (tmp_path / "run" / "logs").is_dir()  # and TensorBoard beside it
