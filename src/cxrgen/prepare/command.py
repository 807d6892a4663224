"""`cxrgen prepare`: a raw release becomes a prepared dataset (its layout and files: docs/data-format.md).

read records -> one spelling per label -> filter -> split by patient -> build and fit prompts -> convert images
(workers, resumable, shardable) -> quality control -> `<out>/<split>/metadata.jsonl` + PNGs, `prepare.json` (with
the dataset's vocabulary and label audit), `rejected.csv`, and the local-only `source_index.csv`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from ..config import ConfigError, option, parse_shard, to_dict, with_groups
from ..contracts import MetadataRow, PrepareManifest, metadata_path, write_metadata
from ..fileio import remove_stale_temps, write_csv, write_json
from ..imaging import ImageConfig, ImageStats
from ..prompts import Prompt, PromptBuilder, PromptConfig
from ..provenance import file_sha256
from ..records import PatientKeyer, Record, Rejection, is_known_view
from ..tables import TableError
from ..tokens import describe, token_stats
from ..vocabulary import Vocabulary, split_side, unify_spellings
from .filters import FilterConfig, apply_filters, keeps_unknown_projections, seeded_rank
from .jobs import JOURNAL_DIR, Job, JobResult, load_journals, png_identity, run_jobs
from .label_audit import audit_line, label_audit
from .qc import QCConfig, contact_sheet, qc_flags
from .readers import READERS, read_source
from .readers.base import resolve_image
from .splits import SPLITS, SplitConfig, assign_splits

log = logging.getLogger(__name__)
REJECTED_DIR = "rejected"  # QC-rejected PNGs, kept for inspection and contact sheets
# Output id -> source row and path: the way back from an image to its report. It names source paths (which for
# some releases hold patient ids) and undoes the salted ids, so it stays on this machine like the salt.
SOURCE_INDEX = "source_index.csv"


@dataclass
class PrepareSettings:
    source: str = option(help=f"release format, a registered reader: {', '.join(READERS)}")
    out: str = option(help="output folder of the prepared dataset", path=True)
    csv: str | None = option(
        None, "the release's main table: PadChest CSV(.gz), MIMIC metadata CSV or CheXpert CSV", path=True
    )
    images: str | None = option(
        None, "images root (PadChest: the folder holding 0..54/; MIMIC: the folder holding files/)", path=True
    )
    seed: int = option(0, "seed for splits, subsets and per-patient choices")
    workers: int = option(0, "image worker processes (0: all cores)")
    shard: str | None = option(None, "convert only shard i of n ('i/n', 0-based); run once more without it to finish")
    metadata_only: bool = option(False, "write metadata and prompts without reading images")
    patient_key_salt: str | None = option(None, "secret for patient keys (else kept in <out>/.patient_key_salt)")
    filters: FilterConfig = option(factory=FilterConfig, help="record filters")
    prompts: PromptConfig = option(factory=PromptConfig, help="prompt building")
    image: ImageConfig = option(factory=ImageConfig, help="image conversion")
    qc: QCConfig = option(factory=QCConfig, help="quality control")
    splits: SplitConfig = option(factory=SplitConfig, help="patient-level splits")

    def __post_init__(self) -> None:
        if self.source not in READERS:
            raise ConfigError(f"--source {self.source!r} is not a release reader; choose one of {', '.join(READERS)}")
        if self.shard is not None:
            self.shard_index()
        if not self.metadata_only and self.images is None:
            raise ConfigError("--images is required to convert images (or pass --metadata-only)")

    def shard_index(self) -> tuple[int, int]:
        return parse_shard(self.shard)

    @property
    def source_options(self) -> Any:
        """The chosen reader's own settings (`--<source>.*`), or None when it has none."""
        return getattr(self, self.source, None)


# each release reader's options are a group of their own: --mimic.labels-csv, --folder.captions, ...
PrepareConfig = Config = with_groups(PrepareSettings, READERS.option_groups(lambda reader: reader.help))


@dataclass
class PrepareResult:
    out: Path
    manifest: PrepareManifest | None  # None for a shard run: the final unsharded run writes the metadata
    shard: dict[str, Any] | None = None  # a shard run's counts: shard, images, rejected

    @property
    def finished(self) -> bool:
        return self.manifest is not None


def image_file(record_id: str) -> str:
    """Where a record's PNG lives inside its split folder (256 subfolders keep directories small)."""
    return f"{record_id[:2]}/{record_id}.png"


def escapes_root(relative: str) -> bool:
    """True when a path from a release's table is absolute or climbs above the images root with '..'."""
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute():
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else part != "."
        if depth < 0:
            return True
    return False


def run(config: PrepareSettings) -> PrepareResult:
    """Prepare a release as `config` says; the result names the manifest written (None for a shard run)."""
    with _cyclic_gc_paused():
        return _run_prepare(config)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Hold Python's cycle collector while a release's records live: each of its full passes scans every live
    object, and with a PadChest's million findings alive those passes cost as much as writing the metadata.
    Records, prompts and rows make no reference cycles, so nothing waits for it; forked image workers inherit
    the pause, which also keeps them from touching (and so copying) the parent's pages."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run_prepare(config: PrepareSettings) -> PrepareResult:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked after the tokenizer ran
    if not config.metadata_only and config.images and not Path(config.images).is_dir():
        # said now, not after minutes of reading and filtering a large release
        raise ConfigError(f"images root {config.images} does not exist")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    clock = time.perf_counter()
    shard_i, shard_n = config.shard_index()
    if shard_n > 1 and not config.patient_key_salt and not (out / ".patient_key_salt").exists():
        log.warning(
            "sharded run without --patient-key-salt: shards on other machines must share %s",
            out / ".patient_key_salt",
        )
    keyer = PatientKeyer.for_output(out, config.patient_key_salt)

    read = read_source(config.source, keyer, csv=config.csv, images=config.images, options=config.source_options)
    timing["read_s"] = time.perf_counter() - clock
    log.info("read %d rows: %d records, %d rejected", read.stats["rows"], len(read.records), len(read.rejections))
    if not read.stats["rows"]:
        raise TableError(f"{_input_name(config)} has no data rows: nothing to prepare")
    spellings = unify_spellings(read.records)

    clock = time.perf_counter()
    kept, filtered = apply_filters(read.records, config.filters, config.seed)
    split_of = assign_splits(kept, config.splits, config.seed)
    label_counts = Counter(label for r in kept for label in r.labels)
    builder = PromptBuilder(config.prompts, label_counts=label_counts)
    prompts = {r.id: builder.build(r) for r in kept}
    empty = [r for r in kept if not prompts[r.id].text]
    if empty:  # e.g. the caption level on records without a caption
        kept = [r for r in kept if prompts[r.id].text]
        filtered += [
            Rejection(r.row, r.image, f"prompt: empty with template {config.prompts.template_text!r}") for r in empty
        ]
    timing["filter_prompt_s"] = time.perf_counter() - clock
    kept, escaped = _reject_escaping_paths(kept)
    rejections = read.rejections + filtered + escaped

    results: dict[str, JobResult] = {}
    if not config.metadata_only:
        clock = time.perf_counter()
        results = _convert_images(config, out, kept, split_of, shard_i, shard_n)
        timing["images_s"] = time.perf_counter() - clock
        if shard_n > 1:
            summary = {
                "shard": config.shard,
                "images": len(results),
                "rejected": sum(r.status != "ok" for r in results.values()),
            }
            write_json(out / "shards" / f"{shard_i}-of-{shard_n}.json", summary | {"timing": timing})
            log.info("shard %s done; run the same command without --shard to write the metadata", config.shard)
            return PrepareResult(out, None, summary)

    clock = time.perf_counter()
    manifest = _finish(config, out, read, kept, rejections, split_of, prompts, results, builder, timing, spellings)
    manifest.timing["write_s"] = round(time.perf_counter() - clock, 2)
    manifest.write(out)
    return PrepareResult(out, manifest)


def _input_name(config: PrepareSettings) -> str:
    csv, images = (Path(p) if p else None for p in (config.csv, config.images))
    return READERS[config.source]().input_name(csv, images, config.source_options)


def _reject_escaping_paths(records: list[Record]) -> tuple[list[Record], list[Rejection]]:
    """Image paths come from the release's tables: one that climbs out of the images root is refused."""
    kept, rejected = [], []
    for r in records:
        if escapes_root(r.image):
            rejected.append(Rejection(r.row, r.image, "path: escapes the images root"))
        else:
            kept.append(r)
    return kept, rejected


def _convert_images(config, out, kept, split_of, shard_i, shard_n) -> dict[str, JobResult]:
    root = Path(config.images)
    if not root.is_dir():
        raise ConfigError(f"images root {root} does not exist")
    digest = config.image.digest()
    done = load_journals(out, digest)
    jobs, linked_out, retries = [], {}, 0
    for r in sorted(kept, key=lambda r: r.id)[shard_i::shard_n]:
        previous = done.get(r.id)
        if previous is not None and (previous.status == "rejected" or _converted(out, previous)):
            continue
        source = resolve_image(root, r.image)
        if source is None:
            linked_out[r.id] = JobResult(r.id, digest, "rejected", "path: escapes the images root through a link")
            continue
        jobs.append(Job(r.id, str(source), str(out / split_of[r.id] / image_file(r.id))))
        retries += previous is not None and previous.status == "failed"
    log.info(
        "images: %d to convert, %d to try again (missing or undecodable last time), %d already done",
        len(jobs) - retries,
        retries,
        len(done) - retries,
    )
    remove_stale_temps(job.target for job in jobs)
    journal = out / JOURNAL_DIR / (f"shard-{shard_i}-of-{shard_n}.jsonl" if shard_n > 1 else "main.jsonl")
    workers = config.workers or os.cpu_count() or 1
    try:
        run_jobs(jobs, config.image, journal, min(workers, max(1, len(jobs))))
    except KeyboardInterrupt:
        log.warning("interrupted; finished images are kept: rerun the same command to resume")
        raise
    done = load_journals(out, digest) | linked_out
    return {r.id: done[r.id] for r in kept if r.id in done}


def _converted(out: Path, previous: JobResult) -> bool:
    """Its PNG is there and is the one this result recorded (not another run's, with other image settings).
    Results journaled before PNG identities were recorded trust any PNG."""
    png = _find_png(out, previous.id) if previous.status == "ok" else None
    return png is not None and previous.png in (None, png_identity(png))


def _find_png(out: Path, record_id: str) -> Path | None:
    for folder in (*SPLITS, REJECTED_DIR):
        path = out / folder / image_file(record_id)
        if path.is_file():
            return path
    return None


def _place(out: Path, record_id: str, folder: str) -> None:
    """Move a converted PNG to the folder the current settings give it (split or rejected). An earlier run with
    other image settings may have left a copy in another folder: the newest conversion is kept, the rest go."""
    copies = [path for f in (*SPLITS, REJECTED_DIR) if (path := out / f / image_file(record_id)).is_file()]
    if not copies:
        return
    newest = max(copies, key=lambda path: path.stat().st_mtime_ns)
    for path in copies:
        if path != newest:
            path.unlink()
    target = out / folder / image_file(record_id)
    if newest != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(newest, target)


def _finish(
    config, out, read, kept, rejections, split_of, prompts, results, builder, timing, spellings
) -> PrepareManifest:
    rows: dict[str, list[MetadataRow]] = {s: [] for s in SPLITS}
    qc_rejected: list[tuple[Record, str]] = []
    final: list[Record] = []
    for r in kept:
        flags: list[str] = []
        if not config.metadata_only:
            result = results[r.id]
            if result.status != "ok":
                rejections.append(Rejection(r.row, r.image, result.reason))
                continue
            flags = qc_flags(ImageStats(**result.stats), config.qc)
            if flags and config.qc.reject:
                kept_at = f"{REJECTED_DIR}/{image_file(r.id)}"
                rejections.append(Rejection(r.row, r.image, "qc: " + "; ".join(flags), kept_at))
                qc_rejected.append((r, flags[0]))
                _place(out, r.id, REJECTED_DIR)
                continue
            _place(out, r.id, split_of[r.id])
        final.append(r)
        prompt = prompts[r.id]
        row: MetadataRow = {"file_name": image_file(r.id), "text": prompt.text, **r.metadata(), "tokens": prompt.tokens}
        if r.caption is not None:
            row["caption"] = r.caption
        if prompt.dropped:
            row["prompt_dropped"] = prompt.dropped
        if flags:
            row["qc_flags"] = flags
        rows[split_of[r.id]].append(row)
    if not config.metadata_only:
        _remove_stale(out, {r.id for r in final} | {r.id for r, _ in qc_rejected})
    for split in SPLITS:
        rows[split].sort(key=lambda x: x["id"])
        if rows[split] or metadata_path(out, split).exists():
            write_metadata(out, split, rows[split])
    rejections.sort(key=lambda x: (x.row if x.row is not None else -1, x.path))
    write_csv(
        out / "rejected.csv",
        ["row", "path", "reason", "file_name"],
        ((x.row, x.path, x.reason, x.file_name) for x in rejections),
    )
    write_csv(
        out / SOURCE_INDEX,
        ["id", "split", "file_name", "source_row", "source_path"],
        sorted((r.id, split_of[r.id], image_file(r.id), r.row, r.image) for r in final),
        private=True,
    )
    sheets = [] if config.metadata_only else _contact_sheets(config, out, rows, qc_rejected, split_of)
    vocabulary = _vocabulary(final, split_of, spellings)
    return _summary(config, read, final, rejections, rows, prompts, builder, timing, sheets, vocabulary)


def _vocabulary(final: list[Record], split_of: dict[str, str], spellings: dict[str, list[str]]) -> Vocabulary:
    """The kept images' labels and locations with their counts per split; other spellings seen in the release
    (case, spacing, side variants) are recorded as synonyms."""
    synonyms = {name: set(others) for name, others in spellings.items()}
    for r in final:
        for note in r.label_notes:
            kind, _, variant = note.partition(": ")
            if kind == "side variant":
                synonyms.setdefault(split_side(variant)[0], set()).add(variant)
    by_split: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in final:
        by_split[split_of[r.id]].append(r)
    return Vocabulary.from_conditions(by_split, synonyms)


def _remove_stale(out: Path, wanted: set[str]) -> None:
    """PNGs left by an earlier run whose record is no longer selected would confuse image-folder loaders."""
    removed = 0
    for folder in (*SPLITS, REJECTED_DIR):
        for path in (out / folder).glob("??/*.png"):
            if path.stem not in wanted:
                path.unlink()
                removed += 1
    if removed:
        log.info("removed %d images no longer selected by the current settings", removed)


def _contact_sheets(config, out, rows, qc_rejected, split_of) -> list[str]:
    n = config.qc.contact_sheet
    if n <= 0:
        return []
    made = []
    kept_rows = [(split, row) for split in SPLITS for row in rows[split]]
    kept_rows.sort(key=lambda sr: seeded_rank(config.seed, sr[1]["id"]))
    tiles = [
        (np.asarray(Image.open(out / split / row["file_name"])), f"{split} {row['id'][:8]}")
        for split, row in kept_rows[:n]
    ]
    if tiles:
        made.append(contact_sheet(tiles, out / "contact_sheets" / "kept.png").relative_to(out).as_posix())
    qc_rejected = sorted(qc_rejected, key=lambda rf: seeded_rank(config.seed, rf[0].id))[:n]
    tiles = [
        (np.asarray(Image.open(out / REJECTED_DIR / image_file(r.id))), flag.split(" ")[0]) for r, flag in qc_rejected
    ]
    if tiles:
        made.append(contact_sheet(tiles, out / "contact_sheets" / "rejected.png").relative_to(out).as_posix())
    return made


def _summary(config, read, final, rejections, rows, prompts, builder, timing, sheets, vocabulary) -> PrepareManifest:
    by_category = Counter(x.reason.split(":", 1)[0] for x in rejections)
    by_reason = Counter(re.sub(r"\s*\(.*", "", x.reason) for x in rejections)
    kept_prompts = [prompts[r.id] for r in final]
    dropped = Counter(note.split(":", 1)[0] for p in kept_prompts for note in p.dropped)
    config_dict = to_dict(config, relative_to=config.out)
    config_dict["patient_key_salt"] = "<redacted>" if config.patient_key_salt else None
    inputs = {}
    options = to_dict(config.source_options) if config.source_options is not None else {}
    for name, path in {"csv": config.csv, **options}.items():
        if isinstance(path, str) and Path(path).is_file():
            inputs[name] = {"file": Path(path).name, "sha256": file_sha256(path)}
    metadata_hashes = {s: file_sha256(metadata_path(config.out, s)) for s in SPLITS if rows[s]}
    return PrepareManifest(
        config=config_dict,
        inputs=inputs,
        data_hash=metadata_hashes,
        rows_read=read.stats["rows"],
        records_parsed=len(read.records),
        kept=len(final),
        rejected=sum(by_category.values()),
        rejected_by_category=dict(by_category.most_common()),
        rejected_by_reason=dict(by_reason.most_common(25)),
        reader=dict(read.stats),
        splits={
            s: {"images": len(rows[s]), "patients": len({x["patient_key"] or x["id"] for x in rows[s]})} for s in SPLITS
        },
        labels=dict(Counter(label for r in final for label in r.labels).most_common(40)),
        label_audit=label_audit(final, sentence_column=bool(read.stats["layout nested"] + read.stats["layout flat"])),
        vocabulary=vocabulary.to_json(),
        unknown_projection_kept=_unknown_projections(rows, config.filters),
        source_index={
            "file": SOURCE_INDEX,
            "note": "local only, like .patient_key_salt: maps each output id to its source row and path; do not share",
        },
        tokens={
            "tokenizer": describe(builder.counter.tokenizer),
            "prompt": to_dict(config.prompts),
            "before_fitting": token_stats([p.tokens_full for p in kept_prompts], config.prompts.max_tokens),
            "after_fitting": token_stats([p.tokens for p in kept_prompts], config.prompts.max_tokens),
            "prompts_shortened": sum(bool(p.dropped) for p in kept_prompts),
            "dropped_items": dict(dropped),
            **_left_out_of_prompts(final, kept_prompts),
        },
        contact_sheets=sheets,
        metadata_only=config.metadata_only,
        timing={k: round(v, 2) for k, v in timing.items()},
    )


def _unknown_projections(rows: dict[str, list[dict[str, Any]]], filters: FilterConfig) -> dict[str, Any]:
    """The images the frontal filter kept without knowing their projection, named by their files (the first
    100; source_index.csv leads back to their source)."""
    if not keeps_unknown_projections(filters):
        return {"images": 0, "files": []}
    files = [f"{split}/{row['file_name']}" for split in SPLITS for row in rows[split] if row["projection"] is None]
    return {"images": len(files), "files": files[:100]}


def _left_out_of_prompts(final: list[Record], prompts: list[Prompt]) -> dict[str, dict[str, int]]:
    """What the prompts leave out by policy (the metadata keeps it): pseudo-labels, views that name no view."""
    pseudo = Counter(label for p in prompts for label in p.left_out)
    views = Counter(r.view for r in final if r.view is not None and not is_known_view(r.view))
    return {"pseudo_labels_left_out": dict(pseudo.most_common()), "views_left_out": dict(views.most_common())}


def summarize(result: PrepareResult) -> int:
    """Print what was written; the exit code is 1 when nothing was kept."""
    s = result.manifest
    if s is None:
        shard = result.shard or {}
        done = f"{shard['images']} images processed ({shard['rejected']} rejected)"
        print(f"shard {shard['shard']}: {done} in {result.out}")
        print("when every shard is done, run the same command without --shard to write the metadata")
        return 0
    print(f"prepared {s.kept:,} of {s.rows_read:,} rows into {result.out}")
    if s.kept == 0 and s.rejected_by_reason:
        reason, count = next(iter(s.rejected_by_reason.items()))
        print(
            f"  nothing was kept: the commonest reason is '{reason}' ({count:,} rows); "
            "see the --filters.* and --qc.* settings"
        )
    for split, v in s.splits.items():
        if v["images"]:
            print(
                f"  {split:5s} {v['images']:>8,} images  {v['patients']:>7,} patients  "
                f"{metadata_path(result.out, split)}"
            )
    if s.rejected:
        top = ", ".join(f"{k} {v:,}" for k, v in s.rejected_by_category.items())
        print(f"  rejected {s.rejected:,} ({top}): {result.out / 'rejected.csv'}")
    t = s.tokens["before_fitting"]
    if t.get("prompts"):
        print(
            f"  prompts: median {t['median']} tokens, p90 {t['p90']}, max {t['max']}; "
            f"{t['over_limit_fraction']:.1%} over {t['limit']}, {s.tokens['prompts_shortened']:,} shortened"
        )
    if s.kept:
        print(f"  {audit_line(s.label_audit)}")
        vocab = s.vocabulary
        print(
            f"  vocabulary: {len(vocab['labels']):,} labels, {len(vocab['locations']):,} locations "
            f"(cxrgen vocab {result.out})"
        )
    unknown = s.unknown_projection_kept
    if unknown["images"]:
        shown = ", ".join(unknown["files"][:3]) + (", ..." if unknown["images"] > 3 else "")
        print(
            f"  {unknown['images']:,} images of unknown view and projection kept ({shown}; all in prepare.json): the "
            "frontal filter could not check them (--filters.strict-projection drops them)"
        )
    for sheet in s.contact_sheets:
        print(f"  contact sheet: {result.out / sheet}")
    print(f"  summary: {PrepareManifest.path(result.out)}")
    print(
        f"  local only, do not share: {result.out / SOURCE_INDEX} (each id's source row and path), "
        f"{result.out / '.patient_key_salt'}"
    )
    return 0 if s.kept else 1
