"""The README's Python API example runs as written, on phantoms and the tiny model."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from cxrgen.cli import main

README = Path(__file__).parent.parent / "README.md"


def api_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its Python API example"
    return match.group(1)


def test_the_readme_api_example_runs(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "release"), "--n", "60", "--size", "128"]) == 0
    assert main(["make-tiny-model", "--out", str(tmp_path / "tiny-model")]) == 0
    capsys.readouterr()
    with contextlib.chdir(tmp_path):
        exec(compile(api_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+ images prepared; 4 steps; 8 made", printed[-2]), printed
    assert re.fullmatch(r"FID [0-9.]+", printed[-1])
    assert (tmp_path / "eval" / "phantom" / "report.html").is_file()
    assert os.getcwd() != str(tmp_path)
