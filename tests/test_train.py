import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import prepare_phantoms, training_stops_after
from safetensors.torch import load_file

from cxrgen.cli import main
from cxrgen.train import trainer as trainer_module

LORA = "lora/pytorch_lora_weights.safetensors"
# the IPTC term for AI-made images, spelled out here rather than taken from the code under test
AI_MADE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def train(data, model, out, *args):
    return main(
        [
            "train",
            "--preset",
            "cpu-smoke",
            "--data",
            str(data),
            "--model.base",
            str(model),
            "--out",
            str(out),
            *args,
        ]
    )


def weights(path):
    return {k: v.clone() for k, v in load_file(path).items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def lora_run(tiny_dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert train(tiny_dataset, tiny_model, out, "--max-steps", "6") == 0
    return out


def digital_source_type(path):
    from PIL import Image

    return Image.open(path).getxmp()["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"]


def generate(model, lora=None, weight_name=None, seed=0):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora, weight_name=weight_name)
    g = torch.Generator().manual_seed(seed)
    return pipe(
        "chest x-ray, diagnosis pacemaker",
        num_inference_steps=3,
        height=64,
        width=64,
        generator=g,
        output_type="np",
    ).images[0]


def test_lora_run_outputs(lora_run):
    run = json.loads((lora_run / "run.json").read_text())
    assert run["figures"]["steps"] == 6 and run["figures"]["val_loss"] is not None
    assert run["prompts"]["level"] == "full" and run["data"]["metadata_sha256"]
    assert sorted(p.name for p in (lora_run / "checkpoints").iterdir()) == [
        "step-0000002",
        "step-0000004",
        "step-0000006",
    ]
    assert (lora_run / "samples" / "step-0000006.png").is_file() and list((lora_run / "logs").iterdir())
    # the sample grid is AI-made: an independent reader (Pillow's XMP) finds the IPTC digital source type
    assert digital_source_type(lora_run / "samples" / "step-0000006.png") == AI_MADE
    lines = [json.loads(x) for x in (lora_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss/train" in x] == [1, 2, 3, 4, 5, 6]


def test_lora_loads_in_plain_diffusers_and_changes_images(lora_run, tiny_model):
    base = generate(tiny_model)
    tuned = generate(tiny_model, lora_run / "lora", "pytorch_lora_weights.safetensors")
    kohya = generate(tiny_model, lora_run / "lora", "lora_kohya.safetensors")
    assert np.abs(base - tuned).max() > 1e-4
    assert np.abs(tuned - kohya).max() < 1e-4  # the kohya file holds the same adapter
    from types import SimpleNamespace

    from safetensors import safe_open

    from cxrgen.model.families import FAMILIES

    with safe_open(str(lora_run / "lora" / "lora_kohya.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_base_model_version"] == "sd_v1"  # what UIs match the base model by

    def version(width: int, prediction: str) -> str:
        denoiser = SimpleNamespace(config=SimpleNamespace(cross_attention_dim=width))
        return FAMILIES["sd"].kohya_version(SimpleNamespace(denoiser=denoiser, prediction_type=prediction))

    assert version(1024, "v_prediction") == "sd_v2_768_v"
    assert version(1024, "epsilon") == "sd_v2_512"


def test_resume_after_interruption_equals_uninterrupted(lora_run, tiny_dataset, tiny_model, tmp_path, capsys):
    with training_stops_after(5):
        assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "6") == 130
    assert (tmp_path / "checkpoints" / "step-0000004").is_dir() and not (tmp_path / "lora").exists()
    assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "6") == 2  # refuses to overwrite a run
    assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "6", "--resume", "latest", "--seed", "7") == 2
    assert "cannot continue exactly with --seed 7 (was 0)" in capsys.readouterr().err

    def train_steps():
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if "loss/train" in r]

    assert train_steps() == [1, 2, 3, 4, 5]  # step 5 came after the last checkpoint (step 4)
    assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "6", "--resume", "latest") == 0
    assert same(weights(tmp_path / LORA), weights(lora_run / LORA))
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):  # byte for byte, metadata included
        assert (tmp_path / "lora" / name).read_bytes() == (lora_run / "lora" / name).read_bytes()
    assert train_steps() == [1, 2, 3, 4, 5, 6]  # the resumed run's step 5 replaces the interrupted one's


def test_kill_9_leaves_a_resumable_run(tiny_dataset, tiny_model, tmp_path):
    reference = tmp_path / "reference"
    args = ["--max-steps", "24", "--checkpoint-every", "3", "--keep-checkpoints", "2"]
    assert train(tiny_dataset, tiny_model, reference, *args) == 0
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "cxrgen",
        "train",
        "--preset",
        "cpu-smoke",
        "--data",
        str(tiny_dataset),
        "--model.base",
        str(tiny_model),
        "--out",
        str(run),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-0000006" / "state.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((run / "checkpoints").glob("step-*")), "killed before the first checkpoint"
    assert train(tiny_dataset, tiny_model, run, *args, "--resume", "latest") == 0
    assert same(weights(run / LORA), weights(reference / LORA))
    kohya = "lora/lora_kohya.safetensors"  # the case: equal tensors, metadata in another order
    assert (run / kohya).read_bytes() == (reference / kohya).read_bytes()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_stacked_lora_is_frozen_and_active(lora_run, tiny_dataset, tiny_model, tmp_path):
    earlier = weights(lora_run / LORA)
    before = (lora_run / LORA).read_bytes()
    seen = {}
    real_fit = trainer_module.Trainer.fit

    def fit_and_inspect(self):
        unet = self.accelerator.unwrap_model(self.denoiser)
        seen["active"] = list(unet.active_adapters())  # peft's: the stacked ones
        seen["trained"] = [n for n, p in unet.named_parameters() if p.requires_grad]
        seen["stack_trainable"] = [n for n, p in unet.named_parameters() if ".stack0." in n and p.requires_grad]
        seen["stack_before"] = {n: p.detach().clone() for n, p in unet.named_parameters() if ".stack0." in n}
        real_fit(self)
        seen["stack_after"] = {n: p.detach().clone() for n, p in unet.named_parameters() if ".stack0." in n}

    trainer_module.Trainer.fit = fit_and_inspect
    try:
        assert (
            train(
                tiny_dataset,
                tiny_model,
                tmp_path,
                "--lora.stack",
                str(lora_run),
                "--lora.stack-weights",
                "0.7",
            )
            == 0
        )
    finally:
        trainer_module.Trainer.fit = real_fit
    assert seen["active"] == ["stack0"] and seen["stack_trainable"] == []
    assert seen["trained"] and all(".cxrgen." in n for n in seen["trained"])
    assert seen["stack_before"] and same(seen["stack_before"], seen["stack_after"])
    assert (lora_run / LORA).read_bytes() == before and same(weights(lora_run / LORA), earlier)
    new = weights(tmp_path / LORA)
    assert new.keys() == earlier.keys() and not same(new, earlier)  # a new adapter, saved alone
    stacked = json.loads((tmp_path / "run.json").read_text())["stack"][0]["path"]
    assert not stacked.startswith("/") and (tmp_path / stacked).resolve() == lora_run.resolve()


def test_stack_merged_accepts_kohya_files(lora_run, tiny_dataset, tiny_model, tmp_path):
    assert (
        train(
            tiny_dataset,
            tiny_model,
            tmp_path,
            "--lora.stack",
            str(lora_run / "lora" / "lora_kohya.safetensors"),
            "--lora.stack-mode",
            "merged",
        )
        == 0
    )


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "full"],
        [
            "--method",
            "full",
            "--full.ema",
            "--full.train-text-encoder",
            "--optim.lr-scheduler",
            "cosine",
            "--optim.warmup-steps",
            "2",
        ],
        ["--lora.text-encoder", "--lora.dropout", "0.1", "--lora.alpha", "8"],
        ["--prior.enabled", "--prior.loss-weight", "0.5"],
        ["--snr-gamma", "5", "--noise-offset", "0.05"],
        ["--long-prompts", "--no-cache-text"],
        ["--no-cache-latents", "--grad-accum", "2", "--batch-size", "2"],
        ["--gradient-checkpointing", "--optim.lr-scheduler", "linear"],
        ["--model.prediction-type", "v_prediction"],
    ],
    ids=[
        "full",
        "full-ema-te-cosine",
        "lora-te",
        "prior",
        "snr-offset",
        "long-prompts",
        "uncached-accum",
        "checkpointing",
        "v-pred",
    ],
)
def test_each_option_trains(options, tiny_dataset, tiny_model, tmp_path):
    assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "2", *options) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["figures"]["steps"] == 2 and np.isfinite(run["figures"]["train_loss_last50"])
    if "full" in options:
        from diffusers import StableDiffusionPipeline

        assert StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline", safety_checker=None) is not None


def test_class_images_are_made_once(tiny_dataset, tiny_model, tmp_path, caplog):
    caplog.set_level("INFO")
    for i in range(2):
        assert (
            train(
                tiny_dataset,
                tiny_model,
                tmp_path / str(i),
                "--prior.enabled",
                "--prior.class-prompt",
                "a cat",
            )
            == 0
        )
    assert caplog.text.count("generating 2 class images of 'a cat'") == 1
    class_images = sorted(Path(os.environ["CXRGEN_CACHE"]).glob("class-images/*/train/class-*.png"))
    assert class_images and all(digital_source_type(p) == AI_MADE for p in class_images)


def test_fewer_class_images_than_a_run_before(tmp_path):
    from cxrgen.fileio import write_jsonl
    from cxrgen.train.config import PriorConfig
    from cxrgen.train.prior import ensure_class_images

    split = tmp_path / "train"
    split.mkdir()
    for name in ("class-00000.png", "class-00001.png"):
        (split / name).write_bytes(b"png")
    write_jsonl(split / "metadata.jsonl", [{"file_name": f"class-0000{i}.png", "text": "a cat"} for i in range(2)])
    config = PriorConfig(enabled=True, class_prompt="a cat", num_images=1)
    ensure_class_images(config, None, tmp_path, 64, 0)  # nothing to generate, so no model needed
    assert (split / "metadata.jsonl").read_text().count("class-") == 1


def test_two_processes_under_accelerate_launch(tiny_dataset, tiny_model, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "cxrgen",
        "train",
        "--preset",
        "cpu-smoke",
        "--data",
        str(tiny_dataset),
        "--model.base",
        str(tiny_model),
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["processes"] == 2 and (tmp_path / LORA).is_file()


# -- bad input ---------------------------------------------------------------------------------------------------


def test_missing_or_empty_dataset(tiny_model, tmp_path, capsys):
    assert train(tmp_path / "nothing", tiny_model, tmp_path / "out") == 1
    assert "run `cxrgen prepare` first" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "metadata.jsonl").write_text("")
    assert train(tmp_path / "empty", tiny_model, tmp_path / "out") == 1
    assert "has no images" in capsys.readouterr().err


def test_missing_text_column(tiny_dataset, tiny_model, tmp_path, capsys):
    assert train(tiny_dataset, tiny_model, tmp_path, "--text-column", "caption") == 1
    assert "no 'caption' field" in capsys.readouterr().err


def test_model_without_safetensors(tiny_model, tiny_dataset, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(unet), model / "unet" / "diffusion_pytorch_model.bin")
    unet.unlink()
    assert train(tiny_dataset, model, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no .safetensors weights" in err and "--model.allow-pickle" in err
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path)]) == 2
    assert "--model.base is required" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    real = trainer_module.Trainer._objective

    def poisoned(self, step, micro, seed_stream=0):
        loss, logs = real(self, step, micro, seed_stream)
        return (loss * float("nan"), logs) if step >= 2 else (loss, logs)

    monkeypatch.setattr(trainer_module.Trainer, "_objective", poisoned)
    assert train(tiny_dataset, tiny_model, tmp_path) == 3
    out = capsys.readouterr().out
    assert "loss became nan at step 3" in out and "step-0000002" in out and "--resume latest" in out
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000002"]


def test_out_of_memory_names_the_fix(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    def oom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module.Trainer, "fit", oom)
    assert train(tiny_dataset, tiny_model, tmp_path) == 4
    out = capsys.readouterr().out
    assert "--preset gpu-8gb" in out and "--gradient-checkpointing" in out


def test_optional_features_fail_clearly(tiny_dataset, tiny_model, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        assert train(tiny_dataset, tiny_model, tmp_path / "a", "--optim.optimizer", "adamw8bit") == 2
        assert "bitsandbytes" in capsys.readouterr().err
    assert train(tiny_dataset, tiny_model, tmp_path / "b", "--attention", "xformers") == 2
    assert "xformers" in capsys.readouterr().err


def test_preset_layers_under_flags(tiny_dataset, tiny_model, capsys):
    assert (
        main(
            [
                "train",
                "--preset",
                "gpu-8gb",
                "--data",
                "d",
                "--model.base",
                "m",
                "--out",
                "o",
                "--lora.rank",
                "4",
                "--print-config",
            ]
        )
        == 0
    )
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["mixed_precision"] == "fp16" and cfg["gradient_checkpointing"] and cfg["lora"]["rank"] == 4
    assert cfg["optim"]["optimizer"] == "adamw8bit"


def test_cpu_smoke_trains_at_64_px_on_larger_images(tiny_model, tmp_path, capsys):
    """cpu-smoke checks a setup in seconds: a 128 px dataset trains at the tiny model's 64 px unless told otherwise."""
    data = prepare_phantoms(tmp_path, n=20, seed=5, resolution=128)
    assert train(data, tiny_model, tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["resolution"] == 64
    capsys.readouterr()
    argv = ["train", "--preset", "cpu-smoke", "--data", "d", "--model.base", "m", "--out", "o", "--print-config"]
    assert main(argv) == 0 and yaml.safe_load(capsys.readouterr().out)["resolution"] == 64
    assert main([*argv, "--resolution", "128"]) == 0 and yaml.safe_load(capsys.readouterr().out)["resolution"] == 128


def test_training_far_above_the_models_size_is_warned_of(caplog):
    trainer_module._warn_far_above_native(64, 64, from_data=True)
    trainer_module._warn_far_above_native(96, 64, from_data=True)
    assert not caplog.records
    trainer_module._warn_far_above_native(512, 64, from_data=True)
    message = caplog.records[-1].getMessage()
    assert "512 px (the prepared images' size" in message and "8x the model's own 64 px" in message
    assert "64x as much" in message and "Pass --resolution 64" in message


def test_full_with_ema_resumes_exactly(tiny_dataset, tiny_model, tmp_path):
    args = [
        "--method",
        "full",
        "--full.ema",
        "--full.ema-decay",
        "0.9",
        "--grad-accum",
        "2",
        "--max-steps",
        "4",
        "--optim.lr-scheduler",
        "cosine",
        "--optim.learning-rate",
        "1e-4",
    ]
    assert train(tiny_dataset, tiny_model, tmp_path / "reference", *args) == 0
    with training_stops_after(3):
        assert train(tiny_dataset, tiny_model, tmp_path / "resumed", *args) == 130
    assert train(tiny_dataset, tiny_model, tmp_path / "resumed", *args, "--resume", "latest") == 0
    unet = "pipeline/unet/diffusion_pytorch_model.safetensors"
    assert same(weights(tmp_path / "resumed" / unet), weights(tmp_path / "reference" / unet))  # the EMA weights


def test_compiled_unet_trains_like_eager_and_saves_plain_names(
    lora_run, tiny_dataset, tiny_model, tmp_path, monkeypatch
):
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend="eager"))  # no inductor: seconds
    assert train(tiny_dataset, tiny_model, tmp_path, "--max-steps", "6", "--compile") == 0
    compiled, eager = weights(tmp_path / LORA), weights(lora_run / LORA)
    assert compiled.keys() == eager.keys()
    assert all(torch.allclose(compiled[k], eager[k], atol=1e-6) for k in eager)
    state = load_file(tmp_path / "checkpoints" / "step-0000006" / "trainable.safetensors")
    assert state and not any("_orig_mod" in k for k in state)  # checkpoints resume into an uncompiled model


@pytest.mark.parametrize("file", ["pytorch_lora_weights.safetensors", "lora_kohya.safetensors"])
def test_saved_lora_keeps_its_alpha(tiny_model, tmp_path, file):
    """A LoRA trained with alpha != rank acts the same once saved and loaded by diffusers, from either file, on
    attention projections beside 1x1 convolutions and the feed-forward (kohya's targets), and the text encoder."""
    from cxrgen.model.loading import ModelConfig, load_components
    from cxrgen.model.lora import save_lora_files
    from cxrgen.train.methods.lora import TRAIN, LoraOptions
    from cxrgen.train.methods.lora_layers import adapter_state_dict, add_lora

    kohya_targets = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    trained = load_components(ModelConfig(base=str(tiny_model)))
    add_lora(trained.denoiser, kohya_targets, TRAIN, rank=4, alpha=8, dropout=0.0)
    # all four projections: diffusers reads a kohya file's text-encoder part by its out_proj keys
    add_lora(trained.text_encoders[0], LoraOptions().text_encoder_targets, TRAIN, rank=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    for model in (trained.denoiser, trained.text_encoders[0]):
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.1)  # trained B is not zero
    layers = {
        "unet": adapter_state_dict(trained.denoiser),
        "text_encoder": adapter_state_dict(trained.text_encoders[0]),
    }
    save_lora_files(trained.family, tmp_path, layers, {}, trained.denoiser.config)
    loaded = load_components(ModelConfig(base=str(tiny_model)))
    loaded.pipeline().load_lora_weights(tmp_path, weight_name=file)
    plain = load_components(ModelConfig(base=str(tiny_model)))
    config = trained.denoiser.config
    inputs = (
        torch.randn(1, config.in_channels, config.sample_size, config.sample_size),
        torch.tensor([500]),
        torch.randn(1, 77, config.cross_attention_dim),
    )
    ids = trained.tokenizer(["chest x-ray"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got, base = (m.denoiser(*inputs).sample for m in (trained, loaded, plain))
        text = [m.text_encoders[0](ids)[0] for m in (trained, loaded, plain)]
    assert (want - base).abs().max() > 1e-3 and torch.allclose(got, want, atol=1e-5)
    assert (text[0] - text[2]).abs().max() > 1e-3 and torch.allclose(text[1], text[0], atol=1e-5)


def test_model_and_lora_identities_follow_content(tmp_path, monkeypatch):
    """Cache keys and provenance name what was loaded: a hub repo by the commit in the local hub cache, a LoRA by
    its file's hash, so a retrained LoRA at the same path gets fresh class images and text embeddings."""
    import hashlib

    import huggingface_hub.constants

    from cxrgen.model.loading import ModelConfig, model_identity
    from cxrgen.model.lora import lora_digest

    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, file in (("org--model", "model_index.json"), ("org--lora", "pytorch_lora_weights.safetensors")):
        snapshot = tmp_path / "hub" / f"models--{repo}" / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / file).write_bytes(b"weights of " + repo.encode())
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    assert model_identity("org/model") == f"org/model@{commit}"
    assert model_identity("org/model", "v2") == "org/model@v2"  # a revision not in the cache stays as named
    assert model_identity("org/absent") == "org/absent@main"
    assert lora_digest("org/lora") == hashlib.sha256(b"weights of org--lora").hexdigest()[:16]
    assert lora_digest("org/absent") == "org/absent@uncached"

    assert (
        ModelConfig(base="org/model", prediction_type="v_prediction").identity() == f"org/model@{commit}+v_prediction"
    )

    local = tmp_path / "mine.safetensors"
    local.write_bytes(b"first")
    first = lora_digest(str(local))
    local.write_bytes(b"retrained")
    assert lora_digest(str(local)) != first == hashlib.sha256(b"first").hexdigest()[:16]


def test_text_cache_stores_each_window_once_and_pads_like_the_encoder(tiny_model, tmp_path):
    import torch

    from cxrgen.model.loading import ModelConfig, load_components
    from cxrgen.train.cache import ArrayCache, TextCache

    m = load_components(ModelConfig(base=str(tiny_model)), torch.float32)
    long = "chest x-ray, " + ", ".join(f"diagnosis finding {i}, loc left" for i in range(40))
    prompts = sorted({"chest x-ray", long, long + ", loc right"})
    text = TextCache(m, prompts, True, ArrayCache(tmp_path, "key", "run"))
    text.fill(batch=2)
    windows = [text.spans[p][1] // 77 for p in prompts]
    rows = np.load(tmp_path / "key.npy", mmap_mode="r").shape[0]
    assert rows == 77 * (1 + sum(windows)) and max(windows) >= 3  # no prompt stored padded to the longest
    for batch in (["chest x-ray", long], [long + ", loc right", "chest x-ray"], ["chest x-ray"]):
        with torch.no_grad():
            direct = m.encode(batch, long=True).embeds.numpy()
        cached = text.conditioning(batch).embeds.numpy()
        assert cached.shape == direct.shape and np.abs(cached - direct).max() < 1e-2  # float16 storage


def test_local_model_digest_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    import os

    from cxrgen.model.loading import weights_digest

    monkeypatch.setenv("CXRGEN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights")
    (model / "model_index.json").write_text("{}")
    first = weights_digest(model)
    (memo,) = (tmp_path / "cache" / "model-digests").glob("*.txt")
    memo.write_text("remembered000000")  # what a second process reads instead of hashing gigabytes
    assert weights_digest(model) == "remembered000000"
    weights.write_bytes(b"retrain")  # same size: the modification time tells
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert weights_digest(model) not in (first, "remembered000000")


def test_latent_cache_key_follows_the_images(tiny_dataset, tmp_path):
    """Re-preparing with other image settings rewrites the PNGs, not metadata.jsonl; cached latents must go."""
    import shutil

    from cxrgen.train.data import PreparedSplit

    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    split = PreparedSplit.load(data, "train")
    before = split.files_digest()
    image = split.folder / split.files[0]
    image.write_bytes(image.read_bytes() + b"\0")  # another conversion of the same image
    assert PreparedSplit.load(data, "train").digest == split.digest and split.files_digest() != before


def test_runs_sharing_a_cache_key_fill_their_own_files(tmp_path):
    """Two runs of a sweep that start together both fill the same cache: neither truncates the other's rows."""
    from cxrgen.train.cache import ArrayCache

    a, b = ArrayCache(tmp_path, "key", "run-a"), ArrayCache(tmp_path, "key", "run-b")
    a.create(4, (2,))
    a.fill(lambda rows: torch.ones(len(rows), 2), [0, 1], 2)
    b.create(4, (2,))  # starts while a is half way
    a.fill(lambda rows: torch.ones(len(rows), 2), [2, 3], 2)
    a.mark_complete({})
    assert b.complete and (b.open() == 1).all()  # b now reads a's complete cache
    b.fill(lambda rows: torch.full((len(rows), 2), 2.0), [0, 1, 2, 3], 2)
    b.mark_complete({})
    assert (a.open() == 2).all() and not list(tmp_path.glob(".key.*"))


def test_safetensors_metadata_is_written_in_one_order(tmp_path):
    """safetensors keeps metadata in a hash map, ordered differently in each process; sorted, the bytes repeat."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cxrgen.fileio import sort_safetensors_metadata

    metadata = {k: f"value {k}" for k in ("ss_network_module", "cxrgen_steps", "ss_base_model_version", "cxrgen_é")}
    save_file({"b": torch.ones(3), "a": torch.zeros(2)}, tmp_path / "x.safetensors", metadata=metadata)
    size = (tmp_path / "x.safetensors").stat().st_size
    sort_safetensors_metadata(tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted(metadata) and len(raw) == size
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as fh:
        assert fh.metadata() == metadata and torch.equal(fh.get_tensor("b"), torch.ones(3))


def test_every_output_of_a_resumed_run_is_the_same_bytes(tiny_dataset, tiny_model, tmp_path):
    """Weights, card and sample grids byte for byte; the records of time (logs, run.json's speeds) aside."""
    import yaml

    args = ["--max-steps", "4", "--checkpoint-every", "2", "--sample-every", "2"]
    whole, resumed = tmp_path / "a" / "run", tmp_path / "b" / "run"  # same name and depth: the same card
    assert train(tiny_dataset, tiny_model, whole, *args) == 0
    with training_stops_after(3):
        assert train(tiny_dataset, tiny_model, resumed, *args) == 130
    assert train(tiny_dataset, tiny_model, resumed, *args, "--resume", "latest") == 0

    def files(run):  # but TensorBoard's logs, whose files are named and stamped by the clock
        return {
            f for p in run.rglob("*") if p.is_file() and not (f := p.relative_to(run).as_posix()).startswith("logs/")
        }

    timed = {"run.json", "config.yaml", "metrics.jsonl"}
    assert files(whole) == files(resumed)
    same_bytes = files(whole) - timed
    assert {"README.md", "lora/lora_kohya.safetensors", "samples/step-0000004.png"} <= same_bytes
    assert any(f.startswith("checkpoints/") for f in same_bytes)
    for name in sorted(same_bytes):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    assert {**yaml.safe_load((resumed / "config.yaml").read_text()), "resume": None} == yaml.safe_load(
        (whole / "config.yaml").read_text()
    )

    def untimed(path):
        return [
            {k: v for k, v in json.loads(line).items() if k != "time" and not k.startswith("perf/")}
            for line in path.read_text().splitlines()
        ]

    assert untimed(whole / "metrics.jsonl") == untimed(resumed / "metrics.jsonl")
    a, b = (json.loads((run / "run.json").read_text()) for run in (whole, resumed))
    speeds = ("images_per_s", "mfu", "seconds", "peak_rss_gb")
    for doc in (a, b):
        doc["config"]["resume"] = None
        doc["figures"] = {k: v for k, v in doc["figures"].items() if k not in speeds}
        doc.pop("created", None)
    assert a == b
