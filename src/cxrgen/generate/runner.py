"""Generation: plan the images, load the model once, sample batch by batch, write atomically, merge metadata.

Image i always has the same prompt, seed and batch (batches are consecutive runs of `batch_size` indices), and
shards take whole batches, so shards together produce exactly what one unsharded run produces. Each finished
image is journaled; a rerun skips batches whose images are all done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import ConfigError, to_dict
from ..contracts import GenerateManifest, metadata_path, write_metadata
from ..distributed import cpu_processes
from ..fileio import read_jsonl_lines, remove_stale_temps, stat_digest
from ..model.loading import set_offline_if_local
from ..model.lora import lora_digest
from ..model.sampling import image_seed, sample_images, text_windows, to_uint
from ..model.source import ModelSource, PipelineLoader, load_sampling_pipeline
from ..prompts import PromptBuilder, PromptConfig
from ..provenance import portable
from ..sharing.cards import README, dataset_card
from ..sharing.hub import check_push
from ..sharing.terms import data_source
from ..vocabulary import Vocabulary, load_vocabulary
from . import conditions as cond
from .config import GenerateConfig
from .dicom import SeriesPlace, Study, open_study, plan_series, require_highdicom, save_dicom
from .writer import save_png

log = logging.getLogger(__name__)
JOURNAL = ".journal"


def resolve_source(config: GenerateConfig) -> ModelSource:
    """The model to sample from: a training run's (its base, LoRAs and prompt settings) or the flags', with any
    further --loras on top and the flags' prompt settings, prompt encoding and resolution where given."""
    if config.run is None:
        source = ModelSource(config.model, [], None, bool(config.long_prompts), config.resolution)
    else:
        source = ModelSource.from_run(config.run, config.model.base or None)
        if config.long_prompts is not None:
            source.long_prompts = config.long_prompts
        source.resolution = config.resolution or source.resolution
    source.adapters += [_lora_spec(spec) for spec in config.loras]
    source.prompts = config.prompts or source.prompts or PromptConfig()
    return source


def _lora_spec(spec: str) -> tuple[str, float]:
    path, sep, weight = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            return path, float(weight)
        except ValueError:
            pass
    return spec, 1.0


def plan_items(config: GenerateConfig) -> list[cond.Item]:
    if config.conditions:
        return cond.from_file(config.conditions)
    if config.like:
        return cond.like_dataset(
            config.like, config.like_split, config.n, config.seed, cond.parse_reweight(config.reweight)
        )
    if config.prompt:
        return [cond.Item(None, p, "prompt") for p in config.prompt for _ in range(config.n)]
    return cond.from_flags(
        config.age, config.sex, config.view, config.projection, config.modality, config.finding, config.n
    )


def plan_prompts(
    items: list[cond.Item],
    source: ModelSource,
    like: str | None,
    tokenizer: Any,
    allow_unknown: bool = False,
    vocabulary: Vocabulary | None = None,
) -> list[str]:
    """The prompt of each item, in the words the model was trained with: findings are named as the training data
    (else --like's) names them, unknown names are refused with the closest ones, and a prompt too long for the
    tokenizer drops what the prompt settings say to drop. Used by `Generator` and by the app's prompt preview,
    which passes that data's `vocabulary` read once (it asks at every keystroke)."""
    # the data the model was trained on (else --like's): known names for the warnings, and the finding counts
    # that rank findings when a prompt must drop some (keep_findings rarest/commonest), as prepare ranked them
    data = source.data
    reference = data if data is not None and data.is_dir() else like
    if vocabulary is None:
        vocabulary = load_vocabulary(reference) if reference else Vocabulary()
    labels = vocabulary.label_counts()
    prompts = source.prompts
    assert prompts is not None  # resolve_source always settles them
    if prompts.keep_findings != "first" and not labels:
        log.warning(
            "keep_findings %s ranks findings by their counts in the training data, which is not at "
            "hand: findings are dropped last first",
            prompts.keep_findings,
        )
    if vocabulary.labels:  # before the prompts: names are spelled as training spelled them
        cond.check_names(items, vocabulary, allow_unknown)
    elif any(item.conditions is not None and item.conditions.findings for item in items):
        log.warning(
            "finding names are not checked against the training data (%s): give --like DATASET to check them",
            data or "not recorded",
        )
    builder = PromptBuilder(prompts, tokenizer=tokenizer, label_counts=labels)
    texts = [item.prompt if item.prompt is not None else builder.build(item.conditions).text for item in items]
    if not all(texts):
        raise ConfigError(
            f"the prompt template {builder.config.template_text!r} makes no words from these conditions (a model "
            "trained on captions?): give --prompt, a conditions file with a prompt column, or --prompts.level"
        )
    return texts


def image_id(index: int) -> str:
    return f"syn{index:07d}"


def image_file(index: int) -> str:
    return f"{index // 1000:04d}/{image_id(index)}.png"


@dataclass
class GenerateResult:
    out: Path
    split: str
    made: int  # images this process made in this call
    seconds: float
    images_per_s: float | None
    steady_images_per_s: float | None  # after the first batch, which warms up (or compiles)
    is_main: bool = True  # only the main process writes the metadata and manifest
    manifest: GenerateManifest | None = None  # None until every shard's images are done
    remaining: int = 0  # images left for other shards
    pushed: str | None = None  # the Hub commit's URL, with --push-to-hub


def assign_batches(batches: list[list[int]], shard: tuple[int, int], process: int, processes: int) -> list[list[int]]:
    """The batches one process makes: batches go to shards first, then to a launch's processes, so shards launched
    with different process counts still add up to the whole."""
    shard_i, shard_n = shard
    mine = [batch for k, batch in enumerate(batches) if k % shard_n == shard_i]
    return mine[process::processes]


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name in ("fp16", "bf16") and device.type != "cuda":
        raise ConfigError(f"--dtype {name} needs a CUDA GPU; use fp32 (or auto) here")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class Generator:
    """A generation run, complete when built: the plan (prompts, seeds, batches), the loaded model and the settings
    that identify its images are all set here; `run` samples what is not done yet and writes it."""

    # On a GPU, files are written on a thread while the next batch samples; on a CPU every core is busy sampling
    # and the thread would only contend for the GIL. None: decide by the device.
    overlap_writes: bool | None = None

    def __init__(self, config: GenerateConfig, load: PipelineLoader = load_sampling_pipeline):
        """`load` makes the pipeline (the app passes one that keeps a loaded model between requests)."""
        from accelerate import PartialState

        if config.dicom:
            require_highdicom()
        if config.push_to_hub:
            check_push(config.push_to_hub)
        self.config = config
        self.out = Path(config.out)
        self.state = PartialState(cpu=cpu_processes())
        if not self.state.is_main_process:  # every process plans the same images: one copy of each warning
            logging.getLogger(__package__).setLevel(logging.ERROR)
        self.source = resolve_source(config)
        self.items = plan_items(config)
        if not self.items:
            raise ConfigError("nothing to generate")
        set_offline_if_local(self.source.base.base)
        self.dtype = compute_dtype(config.dtype, self.state.device)
        self.pipe, components, self.loras_merged = load(
            self.source, config.sampler, self.dtype, self.state.device, config.merge_loras
        )
        if config.compile:
            denoiser = components.family.denoiser
            if not self.source.adapters or self.loras_merged:
                # one matrix product for q, k and v (not with LoRA layers in place)
                getattr(self.pipe, denoiser).fuse_qkv_projections()
            setattr(self.pipe, denoiser, torch.compile(getattr(self.pipe, denoiser)))
            self.pipe.vae.decoder = torch.compile(self.pipe.vae.decoder)
        self.components = components
        self.tokenizer = components.tokenizer
        self.resolution = self.source.resolution or components.native_resolution
        self.prompts = plan_prompts(self.items, self.source, config.like, self.tokenizer, config.allow_unknown_names)
        self.seeds = [
            item.seed if item.seed is not None else image_seed(config.seed, i) for i, item in enumerate(self.items)
        ]
        self._warn_long(self.prompts)
        self.identities = {
            "model": self.source.base.identity(),
            # local paths as seen from the output folder: a shared set does not tell the user's directory layout
            "adapters": [
                {"path": portable(p, self.out), "weight": w, "sha256": lora_digest(p)} for p, w in self.source.adapters
            ],
        }
        self.sampler = {
            "name": config.sampler or components.family.default_sampler,
            "steps": config.steps,
            "guidance": config.guidance,
            "negative_prompt": config.negative_prompt,
            "resolution": self.resolution,
            "batch_size": config.batch_size,
            "bits": config.bits,
            "dtype": str(self.dtype).replace("torch.", ""),
            "long_prompts": self.source.long_prompts,
            "compiled": config.compile,
            "loras_merged": self.loras_merged,
        }
        settings = json.dumps(
            [self.sampler, self.identities, to_dict(self.source.prompts), config.seed], sort_keys=True
        )
        self.settings_digest = hashlib.sha256(settings.encode()).hexdigest()[:16]  # a journal row counts only for these
        self.batches = self._batches()
        self.batch_of = {i: batch for batch in self.batches for i in batch}
        self.series: list[SeriesPlace] = (
            plan_series([self._labels(i) for i in range(len(self.items))], self.prompts) if config.dicom else []
        )
        self.study: Study | None = None  # opened when the run starts: its date is when generation began

    # -- planning ----------------------------------------------------------------------------------------------
    def _batches(self) -> list[list[int]]:
        n, b = len(self.items), self.config.batch_size
        if not self.source.long_prompts:
            return [list(range(i, min(n, i + b))) for i in range(0, n, b)]
        # a batch pads its prompts to one number of encoder windows, which changes the conditioning of the shorter
        # ones: batch together only prompts of the same length, so that an image depends on its own prompt alone
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(self.prompts):
            groups.setdefault(text_windows(self.pipe, prompt, long=True), []).append(i)
        return [group[k : k + b] for group in groups.values() for k in range(0, len(group), b)]

    def my_batches(self) -> list[list[int]]:
        return assign_batches(
            self.batches, self.config.shard_index(), self.state.process_index, self.state.num_processes
        )

    def done(self) -> dict[int, dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        folder = self.out / JOURNAL
        if folder.is_dir():
            for path in sorted(folder.glob("*.jsonl")):
                for row in read_jsonl_lines(path):
                    if self._finished(row):
                        rows[row["index"]] = row
        return rows

    def _finished(self, row: dict[str, Any]) -> bool:
        """A journal row stands for image i when it was made with these settings from the same plan row, in the
        batch the plan puts it in (a batch of other images may differ in the last bit), and its files are still
        the ones it wrote (another run, interrupted between an image and its journal line, may have replaced them
        since). So a run extended from --n 100 to 200 keeps the first 100 where their batches are unchanged."""
        i = row.get("index")
        if (
            not isinstance(i, int)
            or not 0 <= i < len(self.items)
            or row.get("settings") != self.settings_digest
            or (self.config.dicom and "dicom_file" not in row)
        ):
            return False
        planned = {
            "text": self.prompts[i],
            "seed": self.seeds[i],
            "batch": self.batch_of[i],
            **self._labels(i),
        }
        if self.config.dicom:  # a changed plan may renumber a kept image's series: its DICOM is made again
            planned["dicom_series"] = self._dicom_series(i)
        if not all(row.get(key) == value for key, value in planned.items()):
            return False
        try:
            return row.get("files") == self._files_identity(i)
        except OSError:  # a file is gone
            return False

    def _files_identity(self, i: int) -> str:
        """Size and modification time of image i's files: cheap to check for every image on each rerun."""
        png = self.out / self.config.split / image_file(i)
        return stat_digest([png, png.with_suffix(".dcm")] if self.config.dicom else [png], root=png.parent)

    def _dicom_series(self, i: int) -> list[int]:
        return [self.series[i].number, self.series[i].instance]

    def _labels(self, i: int) -> dict[str, Any]:
        conditions = self.items[i].conditions
        return conditions.structured() if conditions is not None else {}

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, int], None] | None = None) -> GenerateResult:
        """Sample and write what is not done yet; `progress(steps done, steps in all)` after each sampling step."""
        c = self.config
        prompts, seeds, ids, sampler = self.prompts, self.seeds, self.identities, self.sampler
        done = self.done()
        if len(done) < len(self.items) and self.state.is_main_process:
            # they describe a finished run, and this one is another or is not finished: images change under them
            metadata_path(self.out, c.split).unlink(missing_ok=True)
            GenerateManifest.path(self.out).unlink(missing_ok=True)
        todo = [b for b in self.my_batches() if not all(i in done for i in b)]
        targets = [self.out / c.split / image_file(i) for b in todo for i in b]
        remove_stale_temps(targets + [t.with_suffix(".dcm") for t in targets])
        journal = self.out / JOURNAL / f"{c.shard_index()[0]}-{self.state.process_index}.jsonl"
        journal.parent.mkdir(parents=True, exist_ok=True)
        if c.dicom:
            self.study = open_study(journal.parent, self.settings_digest)
        bar = tqdm(
            total=sum(len(b) for b in todo),
            desc="generate",
            unit="img",
            dynamic_ncols=True,
            disable=not self.state.is_local_main_process,
        )
        start = time.perf_counter()
        steps_done, steps_total = 0, len(todo) * c.steps

        def on_step() -> None:
            nonlocal steps_done
            steps_done += 1
            if progress is not None:
                progress(steps_done, steps_total)

        def write_batch(batch: list[int], images: Any) -> None:
            for i, pixels in zip(batch, to_uint(images, c.bits), strict=True):
                row = self._write(i, batch, pixels, prompts[i], seeds[i], ids, sampler)
                fh.write(json.dumps(row) + "\n")  # the journal line comes after the image is in place
                fh.flush()
                bar.update()

        overlap = self.state.device.type == "cuda" if self.overlap_writes is None else self.overlap_writes
        # leaving the `with` waits for a write still under way, also when sampling was interrupted
        with open(journal, "a", encoding="utf-8") as fh, ThreadPoolExecutor(1) as writer:
            if fh.tell() > 0 and not journal.read_bytes().endswith(b"\n"):
                fh.write("\n")
            writing: Future | None = None
            sampled: list[float] = []  # when each batch finished sampling
            for batch in todo:
                images = sample_images(
                    self.pipe,
                    [prompts[i] for i in batch],
                    [seeds[i] for i in batch],
                    c.steps,
                    c.guidance,
                    c.negative_prompt,
                    self.source.long_prompts,
                    self.resolution,
                    on_step=on_step,
                )
                sampled.append(time.perf_counter())
                if writing is not None:
                    writing.result()  # a failed write stops the run here; at most one batch waits in memory
                if overlap:
                    writing = writer.submit(write_batch, batch, images)
                else:
                    write_batch(batch, images)
            if writing is not None:
                writing.result()
        bar.close()
        seconds = time.perf_counter() - start
        made = sum(len(b) for b in todo)
        self.state.wait_for_everyone()
        result = GenerateResult(
            out=self.out,
            split=c.split,
            made=made,
            seconds=round(seconds, 2),
            images_per_s=round(made / seconds, 3) if made else None,
            # after the first batch (which warms up, or compiles): the rate a long run settles at
            steady_images_per_s=(
                round(sum(len(b) for b in todo[1:]) / (sampled[-1] - sampled[0]), 3) if len(todo) > 1 else None
            ),
            is_main=self.state.is_main_process,
        )
        if self.state.is_main_process:
            result.manifest, result.remaining = self._finish()
        return result

    def _warn_long(self, prompts: list[str]) -> None:
        family, tokenizers, long = self.components.family, self.components.tokenizers, self.source.long_prompts
        over = family.count_cut(tokenizers, list(dict.fromkeys(prompts)), long)
        if over:
            log.warning(
                "%d prompt(s) exceed %s and will be cut%s",
                over,
                family.limit(long),
                "" if long else "; use --long-prompts (or a model trained with it)",
            )
        if family.count_cut(tokenizers, [self.config.negative_prompt], long):
            log.warning("the negative prompt exceeds %s and will be cut", family.limit(long))

    def _write(
        self,
        i: int,
        batch: list[int],
        pixels: Any,
        prompt: str,
        seed: int,
        ids: dict[str, Any],
        sampler: dict[str, Any],
    ) -> dict[str, Any]:
        item = self.items[i]
        labels = self._labels(i)
        prov = {"prompt": prompt, "seed": seed, "index": i, **ids, "sampler": sampler}
        target = self.out / self.config.split / image_file(i)
        save_png(target, pixels, prov)
        row = {
            "file_name": image_file(i),
            "text": prompt,
            "id": image_id(i),
            "index": i,
            "seed": seed,
            "synthetic": True,
            **labels,
            "origin": item.origin,
            **ids,
            "sampler": sampler,
            "settings": self.settings_digest,
            "batch": batch,
        }
        if self.config.dicom:
            assert self.study is not None  # opened by run()
            save_dicom(target.with_suffix(".dcm"), pixels, prov, labels, self.study, self.series[i])
            row["dicom_file"] = image_file(i)[:-4] + ".dcm"
            row["dicom_series"] = self._dicom_series(i)
        row["files"] = self._files_identity(i)
        return row

    def _finish(self) -> tuple[GenerateManifest | None, int]:
        """When every image of the plan is done (by any shard): the metadata and the manifest; else what remains."""
        done = self.done()
        missing = len(self.items) - len(done)
        if missing:
            return None, missing
        journal_only = ("settings", "files", "batch", "dicom_series")
        rows = [{k: v for k, v in done[i].items() if k not in journal_only} for i in range(len(self.items))]
        write_metadata(self.out, self.config.split, rows)  # type: ignore[arg-type]
        self._remove_strays(rows)
        manifest = GenerateManifest(
            config=to_dict(self.config, relative_to=self.out),
            model=self.identities["model"],
            adapters=self.identities["adapters"],
            sampler=self.sampler,
            images=len(rows),
            prompt_settings=to_dict(self.source.prompts),
        )
        manifest.write(self.out)
        source = data_source(self.source.data) if self.source.data is not None else None
        card = dataset_card(self.out, self.config.split, rows, manifest, source)  # type: ignore[arg-type]
        (self.out / README).write_text(card)
        return manifest, 0

    def _remove_strays(self, rows: list[dict[str, Any]]) -> None:
        """Files of an earlier plan in this folder (a larger --n, or --dicom since dropped): not in the metadata,
        and their provenance describes another run. Only names this command writes are touched."""
        split = self.out / self.config.split
        keep = {r["file_name"] for r in rows} | {r["dicom_file"] for r in rows if "dicom_file" in r}
        strays = [
            path
            for path in split.glob("[0-9][0-9][0-9][0-9]/syn[0-9]*.*")
            if path.suffix in (".png", ".dcm") and path.relative_to(split).as_posix() not in keep
        ]
        for path in strays:
            path.unlink()
        if strays:
            log.info("removed %d file(s) an earlier plan left in %s", len(strays), split)
