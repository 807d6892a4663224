"""SDXL and SD 3.5 on their tiny random models: conditioning as diffusers' pipelines make it, every training option,
LoRA files that plain diffusers loads, exact resume, reproducible generation. (SD 1.x/2.x: test_train.py.)"""

import json

import numpy as np
import pytest
import torch
from helpers import training_stops_after
from safetensors.torch import load_file

from cxrgen.cli import main

FAMILIES = ["sdxl", "sd3"]
LORA = "lora/pytorch_lora_weights.safetensors"
PROMPTS = ["chest x-ray, age 47 male, view PA, diagnosis pleural effusion, loc right", "a bird sitting on a tree"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from cxrgen.model.random_weights import TinyModelConfig, make_tiny_model

    out = tmp_path_factory.mktemp("models") / request.param
    return request.param, make_tiny_model(TinyModelConfig(out=str(out), family=request.param))


def train(data, model, out, *args):
    argv = ["train", "--preset", "cpu-smoke", "--data", str(data), "--model.base", str(model), "--out", str(out)]
    return main([*argv, *args])


@pytest.fixture(scope="module")
def family_run(family_model, tiny_dataset, tmp_path_factory):
    family, model = family_model
    out = tmp_path_factory.mktemp(f"{family}-run") / "run"
    assert train(tiny_dataset, model, out, "--max-steps", "4", "--optim.learning-rate", "1e-2") == 0
    return family, model, out


def test_family_is_read_from_the_folder_and_encodes_as_its_pipeline(family_model):
    from cxrgen.model.loading import ModelConfig, load_components
    from cxrgen.model.sampling import make_pipeline

    family, model = family_model
    m = load_components(ModelConfig(base=str(model)))
    assert m.family.name == family and m.native_resolution == 64
    cond = m.encode(PROMPTS, long=False)
    pipe = make_pipeline(m)
    extra = {"prompt_2": PROMPTS, "prompt_3": PROMPTS, "max_sequence_length": 77} if family == "sd3" else {}
    with torch.no_grad():
        ref = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, **extra
        )
    assert torch.allclose(cond.embeds, ref[0], atol=1e-5) and torch.allclose(cond.pooled, ref[2], atol=1e-5)


def test_text_cache_reads_as_the_encoder(family_model, tmp_path):
    from cxrgen.model.loading import ModelConfig, load_components
    from cxrgen.train.cache import ArrayCache, TextCache

    _, model = family_model
    m = load_components(ModelConfig(base=str(model)))
    long = "chest x-ray, " + ", ".join(f"diagnosis finding {i}, loc left" for i in range(40))
    text = TextCache(m, [*PROMPTS, long], True, ArrayCache(tmp_path, "key", "run"))
    text.fill(batch=2)
    for batch in ([PROMPTS[0], long], [long], PROMPTS):
        with torch.no_grad():
            direct = m.encode(batch, long=True)
        cached = text.conditioning(batch)
        assert cached.embeds.shape == direct.embeds.shape
        assert (cached.embeds - direct.embeds).abs().max() < 1e-2  # float16 storage
        assert (cached.pooled - direct.pooled).abs().max() < 1e-2


def test_sd3_reads_long_prompts_with_t5(tmp_path):
    """SD 3.5's T5 reads 77 tokens by default and 256 with --long-prompts; its CLIPs read 77 either way."""
    from cxrgen.model.families import FAMILIES as REGISTRY
    from cxrgen.model.families.t5_tokenizer import tiny_t5_tokenizer
    from cxrgen.tokens import clip_tokenizer

    family = REGISTRY["sd3"]
    tokenizers = [clip_tokenizer(), clip_tokenizer("!"), tiny_t5_tokenizer()]
    long = ", ".join(["diagnosis pleural effusion, loc right"] * 10)
    assert family.count_cut(tokenizers, [long, "chest x-ray"], False) == 1
    assert family.count_cut(tokenizers, [long, "chest x-ray"], True) == 0


OPTIONS = {
    "lora": [],
    "lora-uncached": ["--no-cache-latents", "--no-cache-text"],
    "lora-text-encoders": ["--lora.text-encoder"],
    "lora-prior": ["--prior.enabled"],
    "lora-long-prompts": ["--long-prompts"],
    "lora-dropout-checkpointing-accumulation": [
        "--lora.dropout",
        "0.1",
        "--gradient-checkpointing",
        "--grad-accum",
        "2",
    ],
    "lora-loss-weighting": [],  # the family's own: min-SNR for SDXL, cosmap for SD 3.5
    "lora-noise-offset": ["--noise-offset", "0.05"],
    "full": ["--method", "full"],
    "full-text-encoders-ema": ["--method", "full", "--full.train-text-encoder", "--full.ema"],
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_training_option_trains(family_model, tiny_dataset, tmp_path, option):
    family, model = family_model
    args = ["--max-steps", "2", "--sample-every", "-1", "--val-images", "2", *OPTIONS[option]]
    if option == "lora-loss-weighting":
        args += ["--snr-gamma", "5"] if family == "sdxl" else ["--flow-weighting", "cosmap"]
    assert train(tiny_dataset, model, tmp_path, *args) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["base_model"]["family"] == family and np.isfinite(run["figures"]["train_loss_last50"])
    state = load_file(tmp_path / "checkpoints" / "step-0000002" / "trainable.safetensors")
    parts = {key.split(".")[0] for key in state}
    denoiser = "unet" if family == "sdxl" else "transformer"
    trains_text = "text-encoder" in option
    assert parts == ({denoiser, "text_encoder", "text_encoder_2"} if trains_text else {denoiser})
    if option.startswith("full"):
        assert (tmp_path / "pipeline" / "model_index.json").is_file()
    else:
        lora = load_file(tmp_path / LORA)
        assert any(k.startswith("text_encoder_2.") for k in lora) == trains_text
        if trains_text:  # diffusers puts the adapters into both CLIP encoders
            pipe = plain_pipeline(family, model)
            pipe.load_lora_weights(tmp_path / "lora")
            for name in ("text_encoder", "text_encoder_2"):
                assert any("lora_A" in n for n, _ in getattr(pipe, name).named_parameters())


def test_stacked_lora_trains_on_top(family_run, tiny_dataset, tmp_path):
    _, model, earlier = family_run
    args = ["--max-steps", "2", "--sample-every", "-1", "--lora.stack", str(earlier / "lora")]
    assert train(tiny_dataset, model, tmp_path, *args) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    stacked, own = (a[0] for a in run["sample_with"]["adapters"])
    assert (tmp_path / stacked).resolve() == (earlier / "lora").resolve() and own == "lora"  # relative to the run


def plain_pipeline(family, model):
    import diffusers

    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd3": diffusers.StableDiffusion3Pipeline}[family]
    pipe = cls.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_images(family, model, lora=None, weight_name=None):
    pipe = plain_pipeline(family, model)
    if lora:
        pipe.load_lora_weights(lora, weight_name=weight_name)
    g = torch.Generator().manual_seed(0)
    return pipe(PROMPTS[0], num_inference_steps=3, height=64, width=64, generator=g, output_type="np").images[0]


def test_lora_loads_in_plain_diffusers_and_changes_its_images(family_run):
    family, model, run = family_run
    base = pipeline_images(family, model)
    tuned = pipeline_images(family, model, run / "lora", "pytorch_lora_weights.safetensors")
    assert np.abs(base - tuned).max() > 1e-3
    kohya = run / "lora" / "lora_kohya.safetensors"
    assert kohya.is_file() == (family == "sdxl")  # ComfyUI reads SD 3 LoRAs in diffusers' format
    if family == "sdxl":  # kohya's SDXL names: the UNet's original block layout, two text encoders
        keys = load_file(kohya).keys()
        assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
        assert not any("down_blocks" in k or "up_blocks" in k for k in keys)
        assert np.abs(pipeline_images(family, model, run / "lora", kohya.name) - tuned).max() < 1e-4


def test_a_family_preset_refuses_another_family(tiny_model, tiny_dataset, tmp_path, capsys):
    argv = ["train", "--preset", "sdxl-12gb", "--data", str(tiny_dataset), "--model.base", str(tiny_model)]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    assert "is a sd model (StableDiffusionPipeline), not sdxl" in capsys.readouterr().err


def test_resume_after_interruption_equals_uninterrupted(family_run, tiny_dataset, tmp_path):
    _, model, reference = family_run
    args = ["--max-steps", "4", "--optim.learning-rate", "1e-2"]
    with training_stops_after(3):
        assert train(tiny_dataset, model, tmp_path, *args) == 130
    assert train(tiny_dataset, model, tmp_path, *args, "--resume", "latest") == 0
    resumed, uninterrupted = load_file(tmp_path / LORA), load_file(reference / LORA)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_generation_from_a_run_repeats_its_pixels(family_run, tmp_path):
    from PIL import Image

    _, _, run = family_run
    args = ["generate", "--run", str(run), "--prompt", PROMPTS[0], "--n", "2", "--steps", "3"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / "train" / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        a, b = (np.asarray(Image.open(tmp_path / n / "train" / row["file_name"])) for n in ("a", "b"))
        assert a.shape == (64, 64) and np.array_equal(a, b) and a.std() > 0


def test_two_processes_under_accelerate_launch(family_model, tiny_dataset, tmp_path):
    import subprocess
    import sys

    _, model = family_model
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv = ["-m", "cxrgen", "train", "--preset", "cpu-smoke", "--data", str(tiny_dataset), "--model.base", str(model)]
    argv += ["--lora.text-encoder"]  # SDXL: CLIP-L's last layer gets no gradient (its penultimate one is read)
    result = subprocess.run([*launch, *argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["processes"] == 2 and (tmp_path / LORA).is_file()


def test_rectified_flow_noises_as_the_flow_scheduler():
    """The training objective's noising equals diffusers' FlowMatchEulerDiscreteScheduler.scale_noise at the same
    timesteps, draws timesteps from its shifted schedule, and validation's fixed fractions run clean to noisy."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from cxrgen.model.families.objectives import RectifiedFlow

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    objective = RectifiedFlow(scheduler, "logit_normal")
    g = torch.Generator().manual_seed(0)
    timesteps = objective.timesteps(64, g)
    assert set(timesteps.tolist()) <= set(scheduler.timesteps.tolist()) and timesteps.unique().numel() > 32
    latents, noise = torch.randn(64, 16, 8, 8, generator=g), torch.randn(64, 16, 8, 8, generator=g)
    noisy, target = objective.noised(latents, noise, timesteps)
    reference = torch.cat(
        [scheduler.scale_noise(latents[i : i + 1], timesteps[i : i + 1], noise[i : i + 1]) for i in range(64)]
    )
    assert torch.allclose(noisy, reference, atol=1e-6) and torch.equal(target, noise - latents)
    sigmas = [float(objective._sigmas(objective.fixed_timestep(f), 1)) for f in (0.1, 0.5, 0.9)]
    assert sigmas == sorted(sigmas) and sigmas[0] < 0.5 < sigmas[2]
    cosmap = RectifiedFlow(scheduler, "cosmap").weights(timesteps)
    assert cosmap.shape == (64,) and not torch.allclose(cosmap, torch.ones(64))


def test_sd3_refuses_min_snr(family_model, tiny_dataset, tmp_path, capsys):
    family, model = family_model
    if family != "sd3":
        pytest.skip("SD 3.5 only")
    assert train(tiny_dataset, model, tmp_path, "--snr-gamma", "5") == 2
    assert "rectified flow: use --flow-weighting" in capsys.readouterr().err
