"""Generation requests: queued, made one at a time by one worker through `cxrgen generate`'s `Generator`, with
the model kept loaded between requests (one model in memory: another model replaces it, never joins it)."""

from __future__ import annotations

import gc
import io
import itertools
import json
import logging
import queue
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..contracts import GenerateManifest, read_metadata
from ..generate.config import GenerateConfig
from ..generate.runner import Generator
from ..model.lora import lora_digest
from ..model.source import ModelSource, load_sampling_pipeline
from .folders import inside

log = logging.getLogger(__name__)


class ModelKeeper:
    """`load_sampling_pipeline` that keeps the last model: the same model, LoRAs, sampler and precision are not
    loaded again; another drops the kept one before it loads."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.loaded: Any = None
        self.loads = 0  # how many times a model was loaded (the tests check it stays one per model)

    def __call__(self, source: ModelSource, sampler: Any, dtype: torch.dtype, device: Any, merge: bool) -> Any:
        key = json.dumps(
            [to_dict(source.base), [[p, w, lora_digest(p)] for p, w in source.adapters], sampler, str(dtype)]
            + [str(device), merge],
            sort_keys=True,
        )
        if key != self.key:
            self.key, self.loaded = None, None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.loaded = load_sampling_pipeline(source, sampler, dtype, device, merge)
            self.key = key
            self.loads += 1
        return self.loaded


@dataclass
class Job:
    id: str
    config: GenerateConfig
    state: str = "queued"  # queued, loading, sampling, done, failed
    steps_done: int = 0
    steps_total: int = 0
    error: str | None = None
    created: float = field(default_factory=time.time)
    seconds: float | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)


class JobQueue:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.jobs: dict[str, Job] = {}
        self.keeper = ModelKeeper()
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._numbers = itertools.count(_next_number(out))
        self._worker = threading.Thread(target=self._work, name="cxrgen-app-generate", daemon=True)
        self._worker.start()

    def folder(self) -> Path:
        """A new set's folder: set-0001, set-0002, ... after those already in --out."""
        with self._lock:
            return self.out / f"set-{next(self._numbers):04d}"

    def waiting(self) -> int:
        with self._lock:
            return sum(1 for j in self.jobs.values() if j.state == "queued")

    def submit(self, config: GenerateConfig) -> Job:
        job = Job(Path(config.out).name, config)
        with self._lock:
            self.jobs[job.id] = job
        self._pending.put(job)
        return job

    def position(self, job: Job) -> int:
        """How many requests are ahead of this one (0 when it is being made)."""
        with self._lock:
            waiting = [j for j in self.jobs.values() if j.state in ("queued", "loading", "sampling")]
        return sum(1 for j in waiting if j.created < job.created)

    def close(self) -> None:
        self._pending.put(None)

    def _work(self) -> None:
        while (job := self._pending.get()) is not None:
            start = time.perf_counter()
            try:
                job.state = "loading"
                generator = Generator(job.config, load=self.keeper)
                job.state = "sampling"
                generator.run(progress=lambda done, total, job=job: self._progress(job, done, total))
                job.state = "done"
            except Exception as exc:  # shown on the page; the worker goes on with the next request
                log.exception("generation %s failed", job.id)
                job.state, job.error = "failed", str(exc) or type(exc).__name__
            job.seconds = round(time.perf_counter() - start, 2)

    @staticmethod
    def _progress(job: Job, done: int, total: int) -> None:
        job.steps_done, job.steps_total = done, total


def _next_number(out: Path) -> int:
    numbers = [int(p.name[4:]) for p in out.glob("set-[0-9][0-9][0-9][0-9]") if p.name[4:].isdigit()]
    return max(numbers, default=0) + 1


def job_view(jobs: JobQueue, job: Job) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job.id,
        "state": job.state,
        "steps_done": job.steps_done,
        "steps_total": job.steps_total,
        "ahead": jobs.position(job),
        "error": job.error,
        "seconds": job.seconds,
    }
    if job.state == "done":
        rows = read_metadata(job.out, job.config.split)
        manifest = GenerateManifest.read(job.out)
        view["images"] = [
            {
                "url": f"/files/out/out/{job.id}/{job.config.split}/{row['file_name']}",
                "seed": str(row["seed"]),  # 63 bits: more than a JavaScript number holds exactly
                "text": row["text"],
                "id": row["id"],
            }
            for row in rows
        ]
        view["provenance"] = {"model": manifest.model, "adapters": manifest.adapters, "sampler": manifest.sampler}
        view["download"] = f"/api/jobs/{job.id}/download"
    return view


def zipped(folder: Path) -> bytes:
    """The set in the prepared layout (metadata, images, generate.json, card): the files the app would serve from
    it, so no journal or other dot file, and nothing a link leads to outside it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if inside(folder, relative) is not None:
                archive.write(path, f"{folder.name}/{relative}")
    return buffer.getvalue()
