"""The seams: every command has one shape, every user error is one line, and a release reader or a training method
is added by its own class plus one registration, with nothing else to touch."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import cxrgen
from cxrgen.cli import COMMANDS, _is_user_error, main
from cxrgen.config import option, with_groups
from cxrgen.prepare import command as prepare_command
from cxrgen.prepare.readers import READERS, ReadResult, ReleaseReader
from cxrgen.records import Finding, Record
from cxrgen.train.methods import METHODS, Exported, TrainingMethod


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_resolves_to_one_shape(command):
    """A renamed module or function fails here, not as a traceback in a user's terminal."""
    module = importlib.import_module(command.module)
    assert dataclasses.is_dataclass(module.Config)
    assert list(inspect.signature(module.run).parameters) and callable(module.summarize)
    if command.presets:
        presets = importlib.import_module(command.presets)
        assert presets.PRESETS and all(isinstance(presets.preset_values(p), dict) for p in presets.PRESETS)


def _error_classes() -> list[type[Exception]]:
    found = set()
    for info in pkgutil.walk_packages(cxrgen.__path__, "cxrgen."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith("cxrgen"):
                found.add(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__name__}")


INTERNAL = {"TrainingDiverged"}  # a training outcome (exit code 3), not an input error


def test_every_error_about_inputs_is_shown_as_one_line():
    classes = _error_classes()
    names = {cls.__name__ for cls in classes}
    assert {"ConfigError", "ContractError", "TableError", "ModelError", "TokenizerError", "ExtractorError"} <= names
    for cls in classes:
        if cls.__name__ not in INTERNAL:
            assert _is_user_error(cls("x")), cls


# -- a release reader added by a test ----------------------------------------------------------------------------


@dataclass
class TinyOptions:
    label: str = option("nodule", "the one label every image carries")


class TinyListReader(ReleaseReader):
    """A release that is a text file of image names, one per line."""

    name = "tinylist"
    help = "a text file naming one image per line"
    Options = TinyOptions
    main_table = "the list of image names"

    def read(self, csv, images, options, keyer):
        result = ReadResult()
        for row, line in enumerate(Path(csv).read_text().split()):
            result.stats["rows"] += 1
            result.records.append(
                Record(id=f"t{row:04d}", source=self.name, image=line, row=row + 1, findings=[Finding(options.label)])
            )
        return result


@pytest.fixture
def tiny_reader():
    READERS.register(TinyListReader)
    yield TinyListReader
    READERS.unregister(TinyListReader.name)


def test_a_registered_reader_prepares_with_its_own_options(tiny_reader, tmp_path):
    (tmp_path / "list.txt").write_text("a.png\nb.png\nc.png\n")
    # the config class offers every registered reader's options: built after the registration
    config_class = with_groups(prepare_command.PrepareSettings, READERS.option_groups(lambda r: r.help))
    config = config_class(
        source="tinylist",
        csv=str(tmp_path / "list.txt"),
        out=str(tmp_path / "out"),
        metadata_only=True,
        patient_key_salt="s",
        tinylist=TinyOptions(label="pneumothorax"),
    )
    result = prepare_command.run(config)
    assert result.manifest is not None and result.manifest.kept == 3
    assert set(result.manifest.vocabulary["labels"]) == {"pneumothorax"}


# -- a training method added by a test ---------------------------------------------------------------------------


class BiasOnly(TrainingMethod):
    """Trains the denoiser's bias terms alone (BitFit): a real method in a dozen lines."""

    name = "bias-only"
    help = "train only the denoiser's biases"

    def prepare(self, components):
        for encoder in components.text_encoders:
            encoder.requires_grad_(False)
        for name, param in components.denoiser.named_parameters():
            param.requires_grad_(name.endswith(".bias"))

    def export(self, out, components, trained, ema, info):
        from safetensors.torch import save_file

        denoiser = trained[components.family.denoiser]
        biases = {n: p.detach().contiguous() for n, p in denoiser.named_parameters() if p.requires_grad}
        save_file(biases, out / "biases.safetensors")
        return Exported({"biases": str(out / "biases.safetensors")})


@pytest.fixture
def bias_method():
    METHODS.register(BiasOnly)
    yield BiasOnly
    METHODS.unregister(BiasOnly.name)


def test_a_registered_method_trains_exports_and_resumes(bias_method, tiny_dataset, tiny_model, tmp_path):
    args = ["train", "--preset", "cpu-smoke", "--data", str(tiny_dataset), "--model.base", str(tiny_model)]
    args += ["--method", "bias-only", "--out", str(tmp_path), "--sample-every", "-1", "--checkpoint-every", "2"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3", "--resume", "latest"]) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["method"] == "bias-only" and run["figures"]["steps"] == 3
    assert (tmp_path / "biases.safetensors").is_file() and run["outputs"] == {"biases": "biases.safetensors"}


def test_an_unknown_method_or_source_names_the_registered_ones(tmp_path, capsys):
    assert main(["train", "--data", "d", "--model.base", "m", "--out", str(tmp_path), "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "not a training method" in err and "lora" in err and "full" in err
    assert main(["prepare", "--source", "nope", "--out", str(tmp_path), "--metadata-only"]) == 2
    err = capsys.readouterr().err
    assert "not a release reader" in err and all(name in err for name in ("padchest", "mimic", "chexpert", "folder"))


def test_a_part_with_options_is_named_as_its_settings_group_can_be():
    bad = type("HyphenReader", (ReleaseReader,), {"name": "tiny-list", "help": "x", "Options": TinyOptions})
    with pytest.raises(ValueError, match="with options must be named as a Python identifier, not 'tiny-list'"):
        READERS.register(bad)
    assert "tiny-list" not in READERS
