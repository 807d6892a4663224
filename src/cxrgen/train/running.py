"""Whether a run folder's training is running, finished or interrupted, as another process (the app) sees it.

While `cxrgen train` works, its main process holds an exclusive lock on `<run>/.running`. A reader that can take
the lock knows nobody holds it: the process ended without removing the file (killed, or the machine went down),
so the run was interrupted. Finished runs have `run.json`, written last. The lock is released by the operating
system when the process dies, which a PID check could not tell from a reused PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..contracts import RunManifest
from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the PID in the file is checked instead
    fcntl = None  # type: ignore[assignment]

MARKER = ".running"
State = Literal["running", "finished", "interrupted", "not started"]


@contextlib.contextmanager
def running(out: str | Path) -> Iterator[None]:
    """Mark `out` as being trained until the block ends (on the main process only: one marker per run)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = Path(out) / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:  # not "w": another process's PID stays until the lock is ours
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                raise UserError(
                    f"{out} is being trained by another process ({fh.read().strip()}): two runs in one folder would "
                    "overwrite each other's checkpoints; choose another --out"
                ) from None
        fh.seek(0)
        fh.truncate()
        json.dump({"pid": os.getpid()}, fh)
        fh.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # before the lock goes: a reader never sees an unlocked marker of ours


@dataclass(frozen=True)
class RunState:
    state: State
    resume: str | None = None  # the command that continues an interrupted run


def run_state(out: str | Path) -> RunState:
    out = Path(out)
    marker = out / MARKER
    if marker.is_file() and _held(marker):
        return RunState("running")
    if RunManifest.path(out).is_file():
        return RunState("finished")
    if (out / "config.yaml").is_file():
        # config.yaml records paths relative to the run folder, so the command runs from inside it
        again = f"cd {shlex.quote(str(out))} && cxrgen train --config config.yaml"
        return RunState("interrupted", again + " --resume latest" if any(out.glob("checkpoints/step-*")) else again)
    return RunState("not started")


def _held(marker: Path) -> bool:
    try:
        fh = open(marker, encoding="utf-8")
    except OSError:
        return False
    with fh:
        if fcntl is None:
            return _alive(fh.read())
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _alive(text: str) -> bool:
    try:
        os.kill(int(json.loads(text)["pid"]), 0)
    except (ValueError, KeyError, TypeError, OSError):
        return False
    return True
