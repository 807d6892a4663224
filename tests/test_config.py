import argparse
from dataclasses import dataclass

import pytest

from cxrgen.config import ConfigError, add_arguments, build, load, namespace_to_overrides, option


@dataclass
class Inner:
    size: int = option(512, "side")
    names: list[str] | None = option(["a", "b"], "names")


@dataclass
class Outer:
    out: str = option(help="output")
    flag: bool = option(False, "a switch")
    inner: Inner = option(factory=Inner, help="group")


def parse(argv, yaml_path=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Outer)
    return load(Outer, yaml_path, namespace_to_overrides(parser.parse_args(argv)))


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: from-yaml\ninner:\n  size: 256\n")
    c = parse(["--inner.size", "128"], cfg)
    assert (c.out, c.inner.size, c.inner.names, c.flag) == ("from-yaml", 128, ["a", "b"], False)
    c = parse(["--out", "x", "--flag", "--inner.names", "p", "q"])
    assert c.flag and c.inner.names == ["p", "q"]


def test_optional_list_all_means_no_filter():
    assert parse(["--out", "x", "--inner.names", "all"]).inner.names is None
    assert parse(["--out", "x", "--inner.names"]).inner.names is None


def test_unknown_yaml_key_suggests(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: x\ninner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match="inner.sise.*did you mean inner.size"):
        parse([], cfg)


def test_missing_required_names_flag():
    with pytest.raises(ConfigError, match="--out"):
        parse([])


def test_bad_types(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: x\ninner:\n  size: big\n")
    with pytest.raises(ConfigError, match="inner.size.*number"):
        parse([], cfg)
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse([], cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        parse([], tmp_path / "missing.yaml")


def test_lists_are_not_shared_between_instances():
    a, b = Inner(), Inner()
    a.names.append("c")
    assert b.names == ["a", "b"]


@pytest.mark.parametrize(
    "command",
    ["prepare", "train", "generate", "evaluate", "report", "make-tiny-model", "phantom", "demo"],
)
def test_every_command_help_reads_as_text(command, capsys):
    from cxrgen.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: cxrgen" in out
    assert "{'" not in out  # a help string with a bare % once printed argparse's internals


def test_prepare_never_pays_for_torch(tmp_path):
    """Only the command that runs is imported: `cxrgen prepare` answers in a fraction of a second."""
    import subprocess
    import sys

    code = (
        "import sys; from cxrgen.cli import main; "
        f"code = main(['prepare', '--source', 'padchest', '--csv', 'nope.csv', '--out', {str(tmp_path)!r}, "
        "'--metadata-only']); print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["1", "False"] and "nope.csv does not exist" in result.stderr


def test_verbose_after_the_command_shows_the_traceback(tmp_path):
    from cxrgen.cli import main
    from cxrgen.tables import TableError

    args = ["--source", "padchest", "--csv", str(tmp_path), "--out", str(tmp_path / "o"), "--metadata-only"]
    assert main(["prepare", *args]) == 1  # one line
    with pytest.raises(TableError, match="is a folder: give the table file in it"):
        main(["prepare", "-v", *args])


def test_settings_moved_by_the_restructuring_name_their_new_place():
    """A YAML file or script from before the option groups gets the new name, not a guess."""
    from cxrgen.evaluate.command import EvaluateConfig
    from cxrgen.generate.config import GenerateConfig
    from cxrgen.prepare.command import PrepareConfig

    base = {"source": "padchest", "out": "o", "metadata_only": True}
    with pytest.raises(ConfigError, match=r"'image.size' is now 'image.resolution' \(--image.resolution\)"):
        build(PrepareConfig, {**base, "image": {"size": 256}})
    with pytest.raises(ConfigError, match=r"'labels_csv' is now 'mimic.labels_csv' \(--mimic.labels-csv\)"):
        build(PrepareConfig, {**base, "labels_csv": "x.csv"})
    with pytest.raises(ConfigError, match="'size' is now 'resolution'"):
        build(GenerateConfig, {"out": "o", "model": {"base": "m"}, "size": 64})
    with pytest.raises(ConfigError, match="'forgetting' is now 'forgetting.enabled'"):
        build(EvaluateConfig, {"real": "r", "generated": "g", "out": "o", "run": "r", "forgetting": True})


def test_fidelity_settings_retired_by_the_jackknife_say_why():
    from cxrgen.evaluate.command import EvaluateConfig

    base = {"real": "r", "generated": "g", "out": "o"}
    with pytest.raises(ConfigError, match=r"'fidelity.bootstrap' is now 'fidelity.groups' \(--fidelity.groups\)"):
        build(EvaluateConfig, {**base, "fidelity": {"bootstrap": 20}})
    with pytest.raises(ConfigError, match="'fidelity.kid_subsets' is gone: KID is now computed over all pairs"):
        build(EvaluateConfig, {**base, "fidelity": {"kid_subsets": 50}})
    with pytest.raises(ConfigError, match="'kid_subset_size' is gone"):
        build(EvaluateConfig, {**base, "kid_subset_size": 1000})


def test_an_os_error_on_a_given_path_names_its_flag(tiny_dataset, capsys):
    from cxrgen.cli import main

    argv = ["prepare", "--source", "folder", "--images", str(tiny_dataset / "train"), "--out", "/proc/cxrgen-x"]
    assert main(argv) == 1
    assert "error: --out /proc/cxrgen-x: " in capsys.readouterr().err  # not a bare errno
