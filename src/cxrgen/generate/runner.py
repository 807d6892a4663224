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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging
from tqdm import tqdm

from ..config import ConfigError, to_dict
from ..distributed import cpu_processes
from ..fileio import read_jsonl_lines, remove_stale_temps, stat_digest, write_json, write_jsonl
from ..models import ModelConfig, ModelError, load_components, set_offline_if_local
from ..prompts import PromptBuilder, PromptConfig
from ..provenance import provenance
from ..sampling import make_pipeline, sample_images, to_uint
from ..text_encoding import chunk_token_ids, count_over_window
from ..train.adapters import lora_digest, lora_source
from ..vocabulary import Vocabulary, load_vocabulary
from . import conditions as cond
from .config import GenerateConfig
from .writer import save_dicom, save_png

log = logging.getLogger(__name__)
JOURNAL = ".journal"


@dataclass
class Source:
    """Where the model comes from and how it was trained."""

    base: ModelConfig
    adapters: list[tuple[str, float]]
    prompts: PromptConfig
    long_prompts: bool
    size: int | None
    data: Path | None  # the training data, for the vocabulary check


def resolve_source(config: GenerateConfig) -> Source:
    prompts = config.prompts
    if config.run is None:
        adapters = [_lora_spec(spec) for spec in config.loras]
        return Source(config.model, adapters, prompts or PromptConfig(), bool(config.long_prompts), config.size, None)
    run_dir = Path(config.run)
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise ConfigError(f"--run {run_dir}: no run.json (is it a finished cxrgen train run?)")
    run = json.loads(run_file.read_text())
    trained = run["config"]
    base = ModelConfig(**{**trained["model"], **({"base": config.model.base} if config.model.base else {})})
    stack = trained["lora"]["stack"]
    weights = trained["lora"]["stack_weights"] or [1.0] * len(stack)
    if trained["method"] == "full":
        # the exported pipeline has no variant files (fp16 and the like), whatever training loaded
        base = replace(base, base=str(run_dir / "pipeline"), variant=None)
        adapters = []
    else:
        adapters = [*zip(stack, weights, strict=True), (str(run_dir / "lora"), 1.0)]
    adapters += [_lora_spec(spec) for spec in config.loras]
    if prompts is None:
        # a run prepared before the pseudo-label policy existed stated every label
        prompts = PromptConfig(**{"pseudo_labels": "keep", **run["prompts"]}) if run.get("prompts") else PromptConfig()
    long = run.get("long_prompts", False) if config.long_prompts is None else config.long_prompts
    data = Path(run["data"]["folder"]) if run.get("data") else None
    return Source(base, adapters, prompts, long, config.size or run.get("resolution"), data)


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


def image_id(index: int) -> str:
    return f"syn{index:07d}"


def image_file(index: int) -> str:
    return f"{index // 1000:04d}/{image_id(index)}.png"


class Generator:
    # On a GPU, files are written on a thread while the next batch samples; on a CPU every core is busy sampling
    # and the thread would only contend for the GIL. None: decide by the device.
    overlap_writes: bool | None = None

    def __init__(self, config: GenerateConfig):
        from accelerate import PartialState

        self.c = config
        self.out = Path(config.out)
        self.state = PartialState(cpu=cpu_processes())
        if not self.state.is_main_process:  # every process plans the same images: one copy of each warning
            logging.getLogger(__package__).setLevel(logging.ERROR)
        self.source = resolve_source(config)
        self.items = plan_items(config)
        if not self.items:
            raise ConfigError("nothing to generate")
        set_offline_if_local(self.source.base.base)

    # -- planning ----------------------------------------------------------------------------------------------
    def batches(self) -> list[list[int]]:
        n, b = len(self.items), self.c.batch_size
        if not self.source.long_prompts:
            return [list(range(i, min(n, i + b))) for i in range(0, n, b)]
        # a batch pads its prompts to one number of encoder windows, which changes the conditioning of the shorter
        # ones: batch together only prompts of the same length, so that an image depends on its own prompt alone
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(self.prompts):
            groups.setdefault(len(chunk_token_ids(self.tokenizer, prompt, long=True)), []).append(i)
        return [group[k : k + b] for group in groups.values() for k in range(0, len(group), b)]

    def my_batches(self, batches: list[list[int]] | None = None) -> list[list[int]]:
        # batches go to shards first, then to this launch's processes: shards launched with different process
        # counts still add up to the whole
        shard_i, shard_n = self.c.shard_index()
        mine = [batch for k, batch in enumerate(batches or self.batches()) if k % shard_n == shard_i]
        return mine[self.state.process_index :: self.state.num_processes]

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
            or (self.c.dicom and "dicom_file" not in row)
        ):
            return False
        planned = {
            "text": self.prompts[i],
            "seed": self.seeds[i],
            "batch": self.batch_of[i],
            **self._labels(i),
        }
        if not all(row.get(key) == value for key, value in planned.items()):
            return False
        try:
            return row.get("files") == self._files_identity(i)
        except OSError:  # a file is gone
            return False

    def _files_identity(self, i: int) -> str:
        """Size and modification time of image i's files: cheap to check for every image on each rerun."""
        png = self.out / self.c.split / image_file(i)
        return stat_digest([png, png.with_suffix(".dcm")] if self.c.dicom else [png], root=png.parent)

    def _labels(self, i: int) -> dict[str, Any]:
        conditions = self.items[i].conditions
        return conditions.structured() if conditions is not None else {}

    # -- model -------------------------------------------------------------------------------------------------
    def dtype(self) -> torch.dtype:
        device = self.state.device
        if self.c.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        if self.c.dtype in ("fp16", "bf16") and device.type != "cuda":
            raise ConfigError(f"--dtype {self.c.dtype} needs a CUDA GPU; use fp32 (or auto) here")
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.c.dtype]

    def load(self) -> None:
        dtype = self.dtype()
        self.loras_merged = merge = self.c.merge_loras and bool(self.source.adapters)
        # merging in the sampling precision would round each LoRA update onto the base weights' bf16/fp16 grid
        # on top of the one rounding of the cast: merge at full precision, then cast once
        m = load_components(self.source.base, torch.float32 if merge else dtype)
        self.tokenizer = m.tokenizer
        pipe = make_pipeline(m.tokenizer, m.text_encoder, m.vae, m.unet, m.scheduler.config, self.c.sampler)
        names = [f"lora{i}" for i in range(len(self.source.adapters))]
        quiet = diffusers_logging.get_verbosity()
        # quiet: "no text-encoder keys" for UNet-only LoRAs, and a cast warning that lists no modules
        diffusers_logging.set_verbosity_error()
        try:
            for name, (path, _) in zip(names, self.source.adapters, strict=True):
                folder, weight_name = lora_source(path)
                try:
                    pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
                except (OSError, ValueError) as exc:
                    raise ModelError(f"cannot load LoRA {path}: {exc}") from exc
            if names:
                pipe.set_adapters(names, adapter_weights=[w for _, w in self.source.adapters])
            if merge:  # no adapter layers left to run at each step
                pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
                pipe.unload_lora_weights()  # drops the adapter layers, keeps the merged weights
                pipe.to(dtype=dtype)
        finally:
            diffusers_logging.set_verbosity(quiet)
        self.pipe = pipe.to(self.state.device)
        if self.c.compile:
            if not names or merge:
                pipe.fuse_qkv_projections()  # one matrix product for q, k and v (not with LoRA layers in place)
            pipe.unet = torch.compile(pipe.unet)
            pipe.vae.decoder = torch.compile(pipe.vae.decoder)
        self.size = self.source.size or m.unet.config.sample_size * m.vae_scale

    def identities(self) -> dict[str, Any]:
        adapters = [
            {"path": path, "weight": weight, "sha256": lora_digest(path)} for path, weight in self.source.adapters
        ]
        return {
            "model": self.source.base.identity(),
            "adapters": adapters,
        }

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.c
        self.load()
        # the data the model was trained on (else --like's): known names for the warnings, and the finding counts
        # that rank findings when a prompt must drop some (keep_findings rarest/commonest), as prepare ranked them
        reference = self.source.data if self.source.data is not None and self.source.data.is_dir() else c.like
        vocabulary = load_vocabulary(reference) if reference else Vocabulary()
        labels = vocabulary.label_counts()
        if self.source.prompts.keep_findings != "first" and not labels:
            log.warning(
                "keep_findings %s ranks findings by their counts in the training data, which is not at "
                "hand: findings are dropped last first",
                self.source.prompts.keep_findings,
            )
        if vocabulary.labels:  # before the prompts: names are spelled as training spelled them
            cond.check_names(self.items, vocabulary, c.allow_unknown_names)
        elif any(item.conditions is not None and item.conditions.findings for item in self.items):
            log.warning(
                "finding names are not checked against the training data (%s): give --like DATASET to check them",
                self.source.data or "not recorded",
            )
        builder = PromptBuilder(self.source.prompts, tokenizer=self.tokenizer, label_counts=labels)
        self.prompts = prompts = [
            item.prompt if item.prompt is not None else builder.build(item.conditions).text for item in self.items
        ]
        if not all(prompts):
            raise ConfigError(
                f"the prompt template {builder.config.template_text!r} makes no words "
                "from these conditions (a model trained "
                "on captions?): give --prompt, a conditions file with a prompt column, or --prompts.level"
            )
        self.seeds = seeds = [
            item.seed if item.seed is not None else cond.image_seed(c.seed, i) for i, item in enumerate(self.items)
        ]
        self._warn_long(prompts)
        ids = self.identities()
        sampler = {
            "name": c.sampler,
            "steps": c.steps,
            "guidance": c.guidance,
            "negative_prompt": c.negative_prompt,
            "size": self.size,
            "batch_size": c.batch_size,
            "bits": c.bits,
            "dtype": str(self.dtype()).replace("torch.", ""),
            "long_prompts": self.source.long_prompts,
            "compiled": c.compile,
            "loras_merged": self.loras_merged,
        }
        settings = json.dumps([sampler, ids, to_dict(self.source.prompts), c.seed], sort_keys=True)
        self.settings_digest = hashlib.sha256(settings.encode()).hexdigest()[:16]  # a journal row counts only for these
        batches = self.batches()
        self.batch_of = {i: batch for batch in batches for i in batch}
        done = self.done()
        if len(done) < len(self.items) and self.state.is_main_process:
            # they describe a finished run, and this one is another or is not finished: images change under them
            (self.out / c.split / "metadata.jsonl").unlink(missing_ok=True)
            (self.out / "generate.json").unlink(missing_ok=True)
        todo = [b for b in self.my_batches(batches) if not all(i in done for i in b)]
        targets = [self.out / c.split / image_file(i) for b in todo for i in b]
        remove_stale_temps(targets + [t.with_suffix(".dcm") for t in targets])
        journal = self.out / JOURNAL / f"{c.shard_index()[0]}-{self.state.process_index}.jsonl"
        journal.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=sum(len(b) for b in todo),
            desc="generate",
            unit="img",
            dynamic_ncols=True,
            disable=not self.state.is_local_main_process,
        )
        start = time.perf_counter()

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
                    self.size,
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
        summary = {
            "made": made,
            "seconds": round(seconds, 2),
            "images_per_s": round(made / seconds, 3) if made else None,
            # after the first batch (which warms up, or compiles): the rate a long run settles at
            "steady_images_per_s": (
                round(sum(len(b) for b in todo[1:]) / (sampled[-1] - sampled[0]), 3) if len(todo) > 1 else None
            ),
        }
        if self.state.is_main_process:
            summary |= self._finish(ids, sampler)
        return summary

    def _warn_long(self, prompts: list[str]) -> None:
        if not self.source.long_prompts:
            over = count_over_window(self.tokenizer, list(dict.fromkeys(prompts)))
            if over:
                log.warning(
                    "%d prompt(s) exceed %d tokens and will be cut; use --long-prompts (or a model trained with it)",
                    over,
                    self.tokenizer.model_max_length,
                )
            if count_over_window(self.tokenizer, [self.c.negative_prompt]):
                log.warning("the negative prompt exceeds %d tokens and will be cut", self.tokenizer.model_max_length)

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
        target = self.out / self.c.split / image_file(i)
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
        if self.c.dicom:
            save_dicom(target.with_suffix(".dcm"), pixels, prov, labels)
            row["dicom_file"] = image_file(i)[:-4] + ".dcm"
        row["files"] = self._files_identity(i)
        return row

    def _finish(self, ids: dict[str, Any], sampler: dict[str, Any]) -> dict[str, Any]:
        done = self.done()
        missing = len(self.items) - len(done)
        if missing:
            return {"complete": False, "remaining": missing}
        journal_only = ("settings", "files", "batch")
        rows = [{k: v for k, v in done[i].items() if k not in journal_only} for i in range(len(self.items))]
        write_jsonl(self.out / self.c.split / "metadata.jsonl", rows)
        self._remove_strays(rows)
        write_json(
            self.out / "generate.json",
            {
                **provenance(),
                "config": to_dict(self.c),
                **ids,
                "sampler": sampler,
                "images": len(rows),
                "prompt_settings": to_dict(self.source.prompts),
                "synthetic": True,
            },
        )
        return {"complete": True, "images": len(rows)}

    def _remove_strays(self, rows: list[dict[str, Any]]) -> None:
        """Files of an earlier plan in this folder (a larger --n, or --dicom since dropped): not in the metadata,
        and their provenance describes another run. Only names this command writes are touched."""
        split = self.out / self.c.split
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


def run_generate(config: GenerateConfig) -> int:
    gen = Generator(config)
    summary = gen.run()
    if gen.state.is_main_process:
        out = Path(config.out)
        rate = f" at {summary['images_per_s']:.2f} img/s" if summary.get("images_per_s") else ""
        print(f"generated {summary['made']} image(s) in {summary['seconds']:.1f} s{rate}")
        if summary.get("complete"):
            print(f"  {summary['images']} synthetic images: {out / config.split / 'metadata.jsonl'}")
            print(f"  provenance: {out / 'generate.json'}")
        else:
            print(f"  {summary['remaining']} image(s) remain for other shards; rerun without --shard when all are done")
    return 0
