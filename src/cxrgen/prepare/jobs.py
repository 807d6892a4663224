"""Convert many source images in worker processes, resumably.

Each finished image is first written atomically, then its result (QC statistics or rejection reason, the PNG's
size and modification time, when it was recorded) is appended to a journal. A rerun reads the journals, skips
every image already done with the same image settings whose PNG is still the one recorded, and does the rest; a
kill at any moment leaves at worst one image to redo. The newest entry of an image wins, whichever shard or run
wrote it. QC decisions are taken later from the journal's
statistics, so changing a QC threshold needs no reconversion.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..fileio import read_jsonl_lines, stat_digest
from ..imaging import ImageConfig, ImageRejected, convert_file
from ..imaging.png import write_png

log = logging.getLogger(__name__)
JOURNAL_DIR = ".journal"


@dataclass(frozen=True)
class Job:
    id: str
    source: str  # absolute path of the source image
    target: str  # absolute path of the PNG to write


@dataclass
class JobResult:
    id: str
    digest: str
    status: str  # "ok", "rejected", or "failed" (rejected for now, tried again by a rerun)
    reason: str = ""
    stats: dict[str, Any] | None = None
    png: str | None = None  # size and modification time of the PNG written (its identity across moves)


def png_identity(path: Path) -> str:
    """Which conversion a PNG is: another run with other settings rewrites it; moving it between folders does not."""
    return stat_digest([path], root=path.parent)


_config: ImageConfig | None = None


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _init_worker(config: ImageConfig, parent: int) -> None:
    global _config
    _config = config
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exit_with_parent(parent)


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker when the process that started it (pid `parent`) dies. Without this, a prepare killed
    with SIGKILL (by the OOM killer, a scheduler, `kill -9`) leaves its workers running for good: nothing
    tells them, and they hold the memory and the CPUs a rerun needs.

    On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); the parent may have died
    before the call, so it is checked right after. Elsewhere, or if prctl fails, a daemon thread polls the
    parent's pid: a worker whose parent died is adopted by another process and sees its pid change."""
    if _parent_death_signal():
        if os.getppid() != parent:
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent, poll_s), name="watch-parent", daemon=True).start()


def _parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False where that is not possible.

    The kernel tracks the parent *thread* that forked: the executor forks from the thread that submits work
    (the main thread here, which lives as long as the pool)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def run_job(job: Job, config: ImageConfig | None = None) -> JobResult:
    config = config or _config
    assert config is not None
    digest = config.digest()
    try:
        converted = convert_file(job.source, config)
    except ImageRejected as exc:
        return JobResult(job.id, digest, "rejected" if exc.lasting else "failed", exc.reason)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a 160k-image run
        return JobResult(job.id, digest, "failed", f"image: unexpected {type(exc).__name__}: {exc}")
    write_png(job.target, converted.image)
    return JobResult(job.id, digest, "ok", stats=asdict(converted.stats), png=png_identity(Path(job.target)))


def load_journals(out: Path, digest: str) -> dict[str, JobResult]:
    """Results recorded by earlier runs and shards with the same image settings: each image's newest (a shard's
    "file not found" must not outlive the later run that found the file)."""
    done: dict[str, JobResult] = {}
    when: dict[str, float] = {}
    folder = out / JOURNAL_DIR
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.jsonl")):
        for entry in read_jsonl_lines(path):
            if entry.get("digest") != digest or "id" not in entry:
                continue
            at = float(entry.get("at") or 0.0)  # entries written before times were recorded: file order
            if at >= when.get(entry["id"], 0.0):
                when[entry["id"]] = at
                done[entry["id"]] = JobResult(
                    **{k: entry.get(k) for k in ("id", "digest", "status", "reason", "stats", "png")}
                )
    return done


def run_jobs(
    jobs: list[Job],
    config: ImageConfig,
    journal: Path,
    workers: int,
    on_result: Callable[[JobResult], None] | None = None,
) -> dict[str, JobResult]:
    """Run jobs with a progress bar, appending each result to `journal` as it arrives."""
    results: dict[str, JobResult] = {}
    if not jobs:
        return results
    journal.parent.mkdir(parents=True, exist_ok=True)
    by_id = {j.id: j for j in jobs}
    with (
        open(journal, "a", encoding="utf-8") as fh,
        tqdm(total=len(jobs), unit="img", desc="images", dynamic_ncols=True) as bar,
    ):
        if fh.tell() > 0 and not journal.read_bytes().endswith(b"\n"):
            fh.write("\n")  # a kill cut the last line short: start a fresh one

        def record(result: JobResult) -> None:
            fh.write(json.dumps({**asdict(result), "at": time.time()}) + "\n")
            fh.flush()
            results[result.id] = result
            bar.update()
            if on_result:
                on_result(result)

        if workers <= 1:
            for job in jobs:
                record(run_job(job, config))
            return results
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        # an executor, not a Pool: a worker killed by the OOM killer breaks it with an error, where a Pool waits
        # forever for the lost task
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(config, os.getpid()))
        try:
            chunk = max(1, min(16, len(jobs) // (workers * 8)))
            for result in pool.map(run_job, by_id.values(), chunksize=chunk):
                record(result)
        except BrokenProcessPool as exc:
            raise ChildProcessError(
                "an image worker died (out of memory? try fewer --workers); finished images are kept: rerun to resume"
            ) from exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return results
