"""Model and dataset cards (parsed by huggingface_hub, rendered as Markdown) and `--push-to-hub`, with the Hub's
upload calls replaced at their boundary (HfApi.create_repo / create_commit): the exact files that would be sent."""

import json
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import DatasetCard, ModelCard

from cxrgen.cli import main
from cxrgen.provenance import file_sha256

AI_MADE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def rendered_images(card_text: str) -> list[str]:
    """The image sources of the card's Markdown, as a renderer finds them."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(card_text.split("\n---\n", 1)[1])
    inline = [child for t in tokens if t.type == "inline" for child in t.children or []]
    return [t.attrs["src"] for t in inline if t.type == "image"]


def test_model_card_of_a_lora_run(smoke_run):
    card = ModelCard.load(smoke_run / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert data["license"] == "other" and data["license_name"] == "research-use-only"
    assert {"cxrgen", "lora", "stable-diffusion", "chest-x-ray"} <= set(data["tags"])
    assert "base_model" not in data  # a local folder is not a hub id the Hub could link
    text = card.text
    for heading in ("## How to use", "## Prompt format", "## Samples", "## Training", "## Data and its terms"):
        assert heading in text, heading
    assert "Research use only" in text and "not for diagnosis" in text
    assert "| simple | `chest x-ray` |" in text and "| demographic | `chest x-ray, age " in text
    assert "| full | `chest x-ray, age " in text  # an example per level, from the training data
    assert "PadChest" in text  # the phantoms are a PadChest-format release: its terms
    [grid] = rendered_images(card.content)
    assert (smoke_run / grid).is_file() and grid.startswith("samples/")
    lora = smoke_run / "lora" / "pytorch_lora_weights.safetensors"
    assert file_sha256(lora) in text
    run = json.loads((smoke_run / "run.json").read_text())
    assert str(run["figures"]["train_loss_last50"]) in text


@pytest.fixture(scope="module")
def synthetic(smoke_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "set"
    args = ["--run", str(smoke_run), "--finding", "cardiomegaly@cardiac", "--sex", "F", "--n", "3"]
    assert main(["generate", "--out", str(out), "--steps", "2", *args]) == 0
    return out


def test_dataset_card_of_a_generated_set(synthetic):
    card = DatasetCard.load(synthetic / "README.md")
    data = card.data.to_dict()
    assert data["size_categories"] == ["n<1K"] and "synthetic" in data["tags"] and data["license"] == "other"
    text = card.text
    assert "**Every image in this set is synthetic**" in text and AI_MADE in text
    assert "| F | 3 |" in text and "| cardiomegaly | 3 |" in text  # counts per condition
    assert "PadChest" in text and "Research use only" in text
    manifest = json.loads((synthetic / "generate.json").read_text())
    assert manifest["adapters"][0]["sha256"][:16] in text
    from datasets import load_dataset  # the card sits where `datasets` expects it and does not get in the way

    rows = load_dataset("imagefolder", data_dir=str(synthetic), split="train")
    assert len(rows) == 3 and rows[0]["sex"] == "F"


class FakeHub:
    """HfApi's two calls a push makes, recorded; the upload itself never leaves the machine."""

    def __init__(self, monkeypatch, fail=None):
        self.repos, self.commits = [], []
        monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda api, repo_id, **kw: self.repos.append(kw))

        def create_commit(api, repo_id, operations, **kw):
            if fail:
                raise fail
            self.commits.append({"repo": repo_id, "operations": operations, **kw})
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd")

        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)

    def sent(self):
        [commit] = self.commits
        return {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in commit["operations"]}


def train_args(data, model, out, *extra):
    base = ["train", "--preset", "cpu-smoke", "--data", str(data), "--model.base", str(model), "--out", str(out)]
    return [*base, "--max-steps", "2", "--checkpoint-every", "2", *extra]


def test_train_pushes_the_run_without_its_checkpoints(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys, caplog):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset, tiny_model, out, "--push-to-hub", "me/cxr-lora", "--hub-private")) == 0
    assert hub.repos == [{"repo_type": "model", "private": True, "exist_ok": True}]
    sent = hub.sent()
    logs = {name for name in sent if name.startswith("logs/")}
    assert logs and set(sent) - logs == {
        "README.md",
        "config.yaml",
        "metrics.jsonl",
        "run.json",
        "lora/pytorch_lora_weights.safetensors",
        "lora/lora_kohya.safetensors",
        "samples/step-0000002.png",
    }
    assert sent["README.md"] == (out / "README.md").read_bytes() and b"# me/cxr-lora:" in sent["README.md"]
    assert b'load_lora_weights("me/cxr-lora"' in sent["README.md"]
    assert (out / "checkpoints").is_dir()  # kept here, never sent
    assert "pushed to https://huggingface.co/me/cxr-lora/commit/0123abcd" in capsys.readouterr().out
    assert "public repo" not in caplog.text  # --hub-private: no reminder


def test_generate_pushes_the_set_without_its_journal(smoke_run, tmp_path, monkeypatch, caplog):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "set"
    args = ["generate", "--out", str(out), "--run", str(smoke_run), "--n", "2", "--steps", "2", "--age", "50"]
    assert main([*args, "--push-to-hub", "me/cxr-synthetic"]) == 0
    assert hub.repos == [{"repo_type": "dataset", "private": False, "exist_ok": True}]
    assert set(hub.sent()) == {
        "README.md",
        "generate.json",
        "train/metadata.jsonl",
        "train/0000/syn0000000.png",
        "train/0000/syn0000001.png",
    }
    assert (out / ".journal").is_dir()
    assert "pushing to a public repo what was made from PadChest" in caplog.text  # the phantoms are PadChest's


def test_push_is_checked_before_any_work(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr("cxrgen.train.trainer.load_components", lambda *a: pytest.fail("loaded the model first"))
    assert main(train_args(tiny_dataset, tiny_model, tmp_path / "a", "--push-to-hub", "me/x")) == 2
    assert "--push-to-hub needs a Hugging Face token: run `hf auth login`, or set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    assert main(train_args(tiny_dataset, tiny_model, tmp_path / "b", "--push-to-hub", "not a repo!")) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert main(train_args(tiny_dataset, tiny_model, tmp_path / "c", "--push-to-hub", "lonely")) == 2
    assert "give the owner too, e.g. your-name/lonely" in capsys.readouterr().err


def test_a_failed_push_keeps_the_run_and_says_how_to_push(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    FakeHub(monkeypatch, fail=ConnectionError("the network is unreachable"))
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset, tiny_model, out, "--push-to-hub", "me/cxr-lora")) == 5
    printed = capsys.readouterr().out
    assert "the network is unreachable" in printed and f"hf upload me/cxr-lora {out} --repo-type model" in printed
    assert (out / "README.md").is_file() and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
