"""`cxrgen demo` runs every stage end to end (here with very small settings)."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrgen.cli import main as cli
from cxrgen.demo import IDLE_SECONDS, MEASURED_CORES, estimate


def test_demo_runs_every_stage_and_writes_the_report(demo_run, tmp_path):
    out, printed = demo_run  # --n 48 --vae-steps 4 --steps 4 --images 8 --workers 1
    assert printed.index("estimated time: about") < printed.index("[1/6] phantom release")  # before it starts
    assert "yours differ (--n 48, --vae-steps 4, --steps 4, --images 8)" in printed
    report = out / "evaluation" / "report.html"
    assert str(report) in printed and "--model.base" in printed  # where things are, and how to go real
    assert f"cxrgen app --data {out / 'prepared'} --runs {out / 'run'} --evals {out / 'evaluation'}" in printed
    html = report.read_text()
    for section in ("Fidelity", "Diversity", "Memorization", "Samples", "Training"):
        assert section.lower() in html.lower(), section
    rows = [json.loads(line) for line in (out / "synthetic" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["findings"] is not None for r in rows)
    assert list((out / "run" / "samples").glob("*.png"))
    # no output tells where the user keeps things: every recorded path is relative to the output recording it
    for folder in {str(out), str(out.resolve())}:
        leaks = [p for p in out.rglob("*") if p.is_file() and folder.encode() in p.read_bytes()]
        assert not leaks, f"{folder} written into {leaks[:5]}"
    # a run stopped while fitting the VAE leaves no marker: the rerun makes the model (and its run) afresh; in a
    # copy, which also shows the outputs still lead to each other when moved together
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, symlinks=True)
    marker = moved / "tiny-model" / "demo-model.json"
    assert json.loads(marker.read_text())["vae_steps"] == 4
    marker.unlink()
    args = ["demo", "--out", str(moved), "--n", "48", "--vae-steps", "4", "--steps", "4", "--images", "8"]
    assert cli([*args, "--workers", "1"]) == 0
    assert marker.is_file() and list((moved / "run" / "samples").glob("*.png"))


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_demo_runs_with_each_family(tmp_path, family):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--family", family, "--n", "48", "--vae-steps", "4", "--steps", "2"]
    assert cli([*args, "--images", "4", "--workers", "1"]) == 0
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["base_model"]["family"] == family
    assert (out / "evaluation" / "report.html").is_file()


def test_estimate_scales_the_measured_time_by_how_busy_the_machine_is():
    idle, busy = estimate(0.0, MEASURED_CORES), estimate(4.0, MEASURED_CORES)
    assert idle.seconds == pytest.approx(sum(IDLE_SECONDS.values())) and not idle.busy
    assert busy.seconds == pytest.approx(3 * idle.seconds) and busy.busy  # a third of the cores is left for it
    said = "\n".join(busy.lines)
    assert "busy (load 4.0 on 2 cores)" in said and "at least" in said and "maybe much longer" in said
    assert "busy" not in "\n".join(idle.lines) and "idle 2-core machine" in idle.lines[0]
    assert "measured on 2" in "\n".join(estimate(0.0, 8).lines)  # another machine: said so
