"""Image workers: a prepare killed with SIGKILL leaves no worker behind."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import save_png, xray

KILLED_PREPARE = """
import os, sys, time
from cxrgen.prepare import jobs as image_jobs
from cxrgen.cli import main

images, out, how = sys.argv[1:4]

def slow(source, config):  # a conversion that takes long enough to be killed in the middle of
    open(os.path.join(out, f"worker-{os.getpid()}"), "w").close()
    time.sleep(120)

image_jobs.convert_file = slow
if how == "poll":  # the portable fallback, as on a system without prctl
    image_jobs._parent_death_signal = lambda: False
sys.exit(main(["prepare", "--source", "folder", "--images", images, "--out", out, "--workers", "2",
               "--image.resolution", "64", "--qc.min-side", "64", "--patient-key-salt", "x"]))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and Linux")
@pytest.mark.parametrize("how", ["prctl", "poll"])
def test_killing_prepare_ends_its_workers(tmp_path, how):
    import psutil

    for i in range(8):
        save_png(tmp_path / "in" / f"{i}.png", xray(64, 64, seed=i, bits=8))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    log = open(tmp_path / "log.txt", "wb")  # a file, not a pipe: a full pipe would stall the progress bar
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PREPARE, str(tmp_path / "in"), str(out), how], env=env, stdout=log, stderr=log
    )
    workers: list = []
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("worker-*"))) < 2:  # both workers started and busy
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = psutil.Process(proc.pid).children(recursive=True)
        busy = {int(p.name.split("-")[1]) for p in out.glob("worker-*")}
        assert busy <= {w.pid for w in workers} and len(busy) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while [w for w in workers if _alive(psutil, w)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w.pid for w in workers if _alive(psutil, w)]
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if _alive(psutil, w):
                w.kill()


def _alive(psutil, process) -> bool:
    """Still running (a worker that died but was not reaped yet, a zombie, is gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
