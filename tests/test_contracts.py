"""The typed hand-offs between stages: manifests round-trip, files from before schema versions are read, and a file
from a newer cxrgen is refused with one line saying so."""

from __future__ import annotations

import json

import pytest

from cxrgen.cli import main
from cxrgen.contracts import ContractError, GenerateManifest, MetricsDocument, PrepareManifest, RunManifest
from cxrgen.model.source import ModelSource

V1_RUN = {  # a run.json as cxrgen wrote it before schema versions (LoRA on top of one stacked LoRA)
    "cxrgen": "0.1.0",
    "config": {
        "method": "lora",
        "model": {"base": "sd15", "revision": None, "variant": None, "allow_pickle": False, "prediction_type": None},
        "lora": {"stack": ["/loras/cxr"], "stack_weights": [0.7]},
    },
    "data": {"folder": "data/p512", "split": "train", "metadata_sha256": "ab", "images": 10},
    "prompts": {"level": "full"},
    "long_prompts": False,
    "base_model": {"source": "sd15", "identity": "sd15@x", "prediction_type": "epsilon"},
    "stack": [{"path": "/loras/cxr", "identity": "cd"}],
    "resolution": 512,
    "processes": 1,
    "outputs": {"diffusers": "runs/r/lora/pytorch_lora_weights.safetensors"},
    "figures": {"steps": 10},
}


def test_manifests_round_trip(tmp_path):
    manifest = GenerateManifest(
        config={"n": 2}, model="m@1", adapters=[], sampler={"steps": 2}, images=2, prompt_settings={}
    )
    manifest.write(tmp_path)
    written = json.loads((tmp_path / "generate.json").read_text())
    assert written["schema"] == {"kind": "generate", "version": GenerateManifest.VERSION} and written["cxrgen"]
    assert GenerateManifest.read(tmp_path) == manifest


def test_a_run_from_before_schema_versions_is_upgraded(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(V1_RUN))
    run = RunManifest.read(tmp_path)
    assert run.method == "lora" and run.model["base"] == "sd15"
    assert run.stack == [{"path": "/loras/cxr", "identity": "cd", "weight": 0.7}]
    assert run.sample_with == {"base": None, "adapters": [["/loras/cxr", 0.7], ["lora", 1.0]]}
    (tmp_path / "lora").mkdir()
    source = ModelSource.from_run(tmp_path)
    assert source.adapters == [("/loras/cxr", 0.7), (str(tmp_path / "lora"), 1.0)] and source.resolution == 512
    assert source.prompts is not None and source.prompts.pseudo_labels == "keep"  # as runs before the policy did

    full = {**V1_RUN, "config": {**V1_RUN["config"], "method": "full", "lora": {"stack": [], "stack_weights": []}}}
    (tmp_path / "run.json").write_text(json.dumps({**full, "stack": []}))
    source = ModelSource.from_run(tmp_path, base="/local/sd15")
    assert source.base.base == str(tmp_path / "pipeline") and source.adapters == []
    assert source.before_training().base.base == "/local/sd15"  # the forgetting test's reference


def test_a_metrics_document_from_before_schema_versions_keeps_its_sections(tmp_path):
    old = {"config": {}, "sets": {"real": {"folder": "r", "images": 2, "sizes": [64]}}, "fidelity": {"inception": {}}}
    (tmp_path / "metrics.json").write_text(json.dumps({**old, "adherence": {"skipped": "no findings asked"}}))
    document = MetricsDocument.read(tmp_path)
    assert document.sections == {"fidelity": {"inception": {}}, "adherence": {"skipped": "no findings asked"}}


@pytest.mark.parametrize("manifest", [PrepareManifest, RunManifest, GenerateManifest, MetricsDocument])
def test_a_file_from_a_newer_cxrgen_is_refused(manifest, tmp_path):
    path = tmp_path / manifest.FILE
    path.write_text(json.dumps({"schema": {"kind": manifest.KIND, "version": 99}, "cxrgen": "9.0.0"}))
    with pytest.raises(ContractError, match="written by a newer cxrgen .9.0.0.*version 99.*upgrade cxrgen"):
        manifest.read(tmp_path)
    path.write_text(json.dumps({"schema": {"kind": "other", "version": 1}}))
    with pytest.raises(ContractError, match=f"is a other manifest, not a {manifest.KIND} manifest"):
        manifest.read(tmp_path)


def test_commands_refuse_a_newer_manifest_in_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"schema": {"kind": "run", "version": 99}}))
    assert main(["generate", "--run", str(tmp_path / "run"), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer cxrgen" in err and "Traceback" not in err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepare.json").write_text(json.dumps({"schema": {"kind": "prepare", "version": 99}}))
    assert main(["vocab", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer cxrgen" in err


def test_a_truncated_manifest_names_what_it_lacks(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"schema": {"kind": "run", "version": 2}, "config": {}}))
    with pytest.raises(ContractError, match="lacks method, model, base_model"):
        RunManifest.read(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ContractError, match="not valid JSON"):
        RunManifest.read(tmp_path)
