"""Model and dataset cards in the Hugging Face format: a YAML header (through huggingface_hub's card data, so the
Hub and `ModelCard.load` read it) and a Markdown body. A card holds nothing that changes between two identical
runs (no times, no speeds), so a resumed run writes the same bytes as an uninterrupted one."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..contracts import RunManifest, read_metadata
from ..model.families import FAMILIES
from ..prompts import LEVELS, PromptBuilder, PromptConfig
from ..provenance import file_sha256
from ..records import Record, age_band
from ..synthetic_mark import DIGITAL_SOURCE_TYPE
from .terms import data_source, terms_of

README = "README.md"
HOMEPAGE = "cxrgen"
LICENSE = {"license": "other", "license_name": "research-use-only"}  # the data's terms bind what is made from it
BASE_LICENSES = {  # what the common base models' own licenses are called on the Hub
    "stable-diffusion-v1-5/": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2": "openrail++",
    "stabilityai/stable-diffusion-xl": "openrail++",
    "stabilityai/stable-diffusion-3.5": "stabilityai-ai-community",
}
FAMILY_TAGS = {"sd": "stable-diffusion", "sdxl": "stable-diffusion-xl", "sd3": "sd3"}
LIMITS = """## Intended use and limits
- **Research only.** Not a medical device; not for diagnosis, treatment, triage or any clinical decision.
- What it draws follows its training data: the source's population, devices and reporting habits, and labels
  taken from reports, partly by automatic extraction, with their errors. Rare findings are drawn from few examples.
- A generative model can reproduce training images. Check a synthetic set with `cxrgen evaluate --train` (nearest
  neighbours and re-identification) before sharing it.
- Synthetic images are marked as such: the IPTC digital source type `trainedAlgorithmicMedia` in each PNG's XMP,
  `SYNTHETIC` text chunks, and in DICOM `ConversionType SYN` with cxrgen as synthesizing equipment.

"""


def _header(data: Any) -> str:
    return f"---\n{data.to_yaml()}\n---\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def _hub_id(source: str, folder: Path) -> str | None:
    """The base model's hub id, or None for a local folder (the Hub's base_model field takes hub ids only)."""
    if (folder / source).exists() or Path(source).is_absolute() or source.count("/") != 1:
        return None
    return source


# -- model card --------------------------------------------------------------------------------------------------
def model_card(run_dir: Path, run: RunManifest, sample_prompts: list[str], repo_id: str | None = None) -> str:
    """README.md of a training run: what was trained on what, how to use it and ask it, its samples and limits."""
    from huggingface_hub import ModelCardData

    c, family = run.config, run.base_model["family"]
    base = run.base_model["source"]
    hub_base = _hub_id(base, run_dir)
    source = data_source(run_dir / run.data["folder"])
    what = f"LoRA (rank {c['lora']['rank']})" if run.method == "lora" else "full fine-tune"
    tags = ["cxrgen", "text-to-image", "diffusers", FAMILY_TAGS.get(family, family), "medical-imaging"]
    tags += ["chest-x-ray", "radiology", *(["lora"] if run.method == "lora" else [])]
    data = ModelCardData(
        base_model=hub_base,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=tags,
        inference=False,
        **LICENSE,
    )
    name = repo_id or run_dir.name
    parts = [
        _header(data),
        f"# {name}: a chest X-ray {what} of {run.base_model['identity']}\n\n",
        f"Trained with cxrgen {__version__} on {run.data['images']:,} images of the {run.data['split']} split of "
        f"{_source_name(source)} for {run.figures['steps']:,} steps at {run.resolution} px. "
        "**Research use only: not for diagnosis or any clinical use.**\n\n",
        _use(run, name, hub_base or base),
        _prompt_section(run, run_dir),
        _samples(run_dir, run, sample_prompts),
        _training(run),
        f"## Data and its terms\n{terms_of(source)} This model was trained on those images: check that the terms "
        "allow sharing it, and with whom, before you do.\n\n",
        _base_license(hub_base),
        LIMITS,
        _files(run_dir, run),
    ]
    return "".join(parts)


def _source_name(source: str | None) -> str:
    return terms_of(source).split(":", 1)[0]


def _use(run: RunManifest, name: str, base: str) -> str:
    family = FAMILIES[run.base_model["family"]]
    if run.method == "lora":
        load = (
            f'pipe = {family.pipeline_class}.from_pretrained("{base}")\n'
            f'pipe.load_lora_weights("{name}", weight_name="pytorch_lora_weights.safetensors")'
        )
    else:
        load = f'pipe = {family.pipeline_class}.from_pretrained("{name}", subfolder="pipeline")'
    example = "chest x-ray, age 60 female, view PA, projection PA, modality DX, diagnosis pleural effusion, loc left"
    return (
        "## How to use\n"
        f"```python\nfrom diffusers import {family.pipeline_class}\n\n{load}\n"
        f'image = pipe("{example}").images[0]\n```\n'
        f"Or with labels, marks and provenance: `cxrgen generate --run {name} --age 60 --sex F "
        "--finding 'pleural effusion@left' --n 8 --out synthetic` (a local copy of this folder).\n\n"
    )


def _prompt_section(run: RunManifest, run_dir: Path) -> str:
    settings = PromptConfig(**(run.prompts or {}))
    text = (
        f"## Prompt format\nTrained on prompts at the **{settings.level}** level: `{settings.template_text}`"
        f"{' (encoded beyond 77 tokens in windows)' if run.long_prompts else ''}. Ask it in the same words. "
    )
    rows = read_metadata(run_dir / run.data["folder"], run.data["split"])
    if not rows:
        return text + "\n\n"
    record = Record.from_metadata(rows[0])
    examples = []
    for level in LEVELS:
        if level == "caption" and not record.caption:
            continue
        built = PromptBuilder(PromptConfig(level=level, pseudo_labels=settings.pseudo_labels)).text(record)
        examples.append([level, f"`{built}`"])
    return (
        text + "The first training image's conditions at each level:\n\n" + _table(["level", "prompt"], examples) + "\n"
    )


def _samples(run_dir: Path, run: RunManifest, prompts: list[str]) -> str:
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    if not grids:
        return ""
    seeds = ", ".join(str(s) for s in run.config["sample_seeds"])
    listed = "".join(f"{i}. `{p}`\n" for i, p in enumerate(prompts, 1))
    grid = grids[-1].relative_to(run_dir).as_posix()
    return (
        f"## Samples\n![samples at the last step]({grid})\n\nRows, top to bottom (columns: seeds {seeds}):\n{listed}\n"
    )


def _training(run: RunManifest) -> str:
    c, f = run.config, run.figures
    rows = [
        ["method", run.method],
        ["base model", f"{run.base_model['identity']} ({run.base_model['family']})"],
        ["steps", f["steps"]],
        ["images per step", f"{c['batch_size']} x {c['grad_accum']} accumulation x {run.processes} process(es)"],
        ["learning rate", f"{c['optim']['learning_rate']} ({c['optim']['lr_scheduler']}, {c['optim']['optimizer']})"],
        ["resolution", f"{run.resolution} px"],
        ["mixed precision", c["mixed_precision"]],
        ["seed", c["seed"]],
    ]
    if run.method == "lora":
        lora = c["lora"]
        targets = ", ".join(lora["targets"]) or "the family's default"
        rows.append(["LoRA", f"rank {lora['rank']}, alpha {lora['alpha'] or lora['rank']}, targets {targets}"])
    if c["prior"]["enabled"]:
        rows.append(["prior preservation", f"{c['prior']['num_images']} images of '{c['prior']['class_prompt']}'"])
    if run.stack:
        rows.append(["trained on top of", ", ".join(f"{s['identity']} x {s['weight']}" for s in run.stack)])
    rows += [
        ["train loss (last 50 steps)", f["train_loss_last50"]],
        ["validation loss", f["val_loss"] if f["val_loss"] is not None else "-"],
        ["data", f"{run.data['images']:,} images, metadata sha256 {run.data['metadata_sha256'][:16]}"],
    ]
    return (
        "## Training\n" + _table(["setting", "value"], rows) + "\nEvery setting is in `run.json` and `config.yaml`.\n\n"
    )


def _base_license(hub_base: str | None) -> str:
    known = next((lic for prefix, lic in BASE_LICENSES.items() if hub_base and hub_base.startswith(prefix)), None)
    if known is None:
        return "## License\nThe base model's license applies as well as the data's terms above.\n\n"
    return f"## License\nThe base model's license (`{known}`) applies as well as the data's terms above.\n\n"


def _files(run_dir: Path, run: RunManifest) -> str:
    rows = []
    for name, path in run.outputs.items():
        target = run_dir / path
        if target.is_file():
            rows.append([f"`{Path(path).as_posix()}`", name, file_sha256(target)])
    return "## Files\n" + _table(["file", "what", "sha256"], rows) if rows else ""


# -- dataset card ------------------------------------------------------------------------------------------------
def dataset_card(out: Path, split: str, rows: list[dict[str, Any]], manifest: Any, source: str | None) -> str:
    """README.md of a generated set (beside <split>/metadata.jsonl, the `datasets` layout): what made it, what it
    holds, its marks and the source data's terms."""
    from huggingface_hub import DatasetCardData

    n = len(rows)
    data = DatasetCardData(
        pretty_name=f"Synthetic chest X-rays ({n:,} images, cxrgen)",
        size_categories=[_size_category(n)],
        task_categories=["image-classification", "text-to-image"],
        tags=["synthetic", "chest-x-ray", "medical-imaging", "cxrgen", "trainedAlgorithmicMedia"],
        **LICENSE,
    )
    dicom = any("dicom_file" in r for r in rows)
    adapters = [[a["path"], a["weight"], a["sha256"][:16]] for a in manifest.adapters]
    sampler = [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in manifest.sampler.items()]
    parts = [
        _header(data),
        f"# Synthetic chest X-rays: {n:,} images from {manifest.model}\n\n",
        f"**Every image in this set is synthetic**, made by a generative model with cxrgen {__version__}; none is a "
        "radiograph of a person. Each PNG says so in its XMP (IPTC digital source type "
        f"`{DIGITAL_SOURCE_TYPE}`) and in its text chunks (`cxrgen:synthetic`, `cxrgen:provenance` with its prompt, "
        "seed, model and sampler)"
        + (
            "; each DICOM file is a Secondary Capture with `ConversionType SYN`, one study for the set and one "
            "series per condition set"
            if dicom
            else ""
        )
        + ". **Research use only: not for diagnosis or any clinical use.**\n\n",
        "## Load\n```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("imagefolder", data_dir="PATH/TO/THIS/FOLDER", split="{split}")\n```\n'
        f"Each row holds the image, its prompt (`text`), its seed and its structured labels (age, sex, view, "
        "projection, modality, findings with locations), as a prepared real dataset does.\n\n",
        "## Made with\n",
        _table(["", ""], [["base model", manifest.model], ["images", n], ["run seed", manifest.config["seed"]]]),
        "\n" + (_table(["LoRA", "weight", "sha256"], adapters) + "\n" if adapters else ""),
        _table(["sampler", "value"], sampler),
        "\nEvery setting is in `generate.json`; each image's own prompt and seed make it again with "
        "`cxrgen generate`.\n\n",
        _contents(rows),
        f"## Source data and its terms\nThe model learned from {terms_of(source)} Check that these terms allow "
        "sharing images made from it, and with whom, before you do.\n\n",
        LIMITS,
    ]
    return "".join(parts)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _contents(rows: list[dict[str, Any]]) -> str:
    def counts(title: str, values: list[Any], top: int = 25) -> str:
        tally = Counter("-" if v is None else v for v in values)
        return f"**{title}**\n\n" + _table([title, "images"], [list(kv) for kv in tally.most_common(top)]) + "\n"

    ages = [age_band(r.get("age")) for r in rows]
    findings = [f["label"] for r in rows for f in r.get("findings") or []]
    text = "## Contents: images per condition\n"
    text += counts("sex", [r.get("sex") for r in rows]) + counts("age", ages)
    for field in ("view", "projection", "modality"):
        text += counts(field, [r.get(field) for r in rows])
    return text + (counts("finding", findings) if findings else "")
