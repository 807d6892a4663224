"""`cxrgen app`: a local web page over the library: browse prepared datasets, compose conditions and generate,
watch training runs, read evaluation reports."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, option
from .folders import FolderIndex, discover
from .server import App, Auth, is_local, serve

log = logging.getLogger(__name__)
AUTH_ENV = "CXRGEN_APP_AUTH"


@dataclass
class AppConfig:
    data: list[str] = option([], "prepared datasets to browse (or folders holding them)", path=True)
    runs: list[str] = option([], "training runs to watch and generate from (or folders holding them)", path=True)
    evals: list[str] = option([], "evaluation folders whose reports to open (or folders holding them)", path=True)
    models: list[str] = option(
        [], "base models (hub ids or folders) to offer beside the runs' own, for a base model + LoRAs", path=True
    )
    out: str = option("app-output", "folder for the sets generated in the app (set-0001, ... in the prepared layout)")
    host: str = option("127.0.0.1", "address to listen on; any but a local one needs --auth")
    port: int = option(7860, "port to listen on (0: any free port)")
    auth: str | None = option(
        None,
        f"'user:password' (HTTP basic) or a token (open the page with ?token=...); also read from ${AUTH_ENV}",
    )

    def __post_init__(self) -> None:
        self.auth = self.auth or os.environ.get(AUTH_ENV) or None
        for flag in ("data", "runs", "evals"):
            for path in getattr(self, flag):
                if not Path(path).expanduser().is_dir():
                    raise ConfigError(f"--{flag} {path}: no such folder")
        if not (self.data or self.runs or self.evals):
            raise ConfigError("give at least one of --data, --runs, --evals (e.g. the folders cxrgen demo wrote)")
        if not is_local(self.host) and not self.auth:
            raise ConfigError(
                f"--host {self.host} serves the app to other machines: give --auth USER:PASSWORD or --auth TOKEN "
                f"(or set {AUTH_ENV}), or keep the default --host 127.0.0.1 and reach it through an SSH tunnel"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: give 0-65535")


Config = AppConfig


@dataclass
class AppResult:
    url: str
    seconds: float


WHAT = {
    "data": "prepared dataset (a folder with <split>/metadata.jsonl, as cxrgen prepare writes)",
    "evals": "evaluation (a folder with metrics.json or report.html, as cxrgen evaluate writes)",
}


def start(config: AppConfig) -> tuple[App, object]:
    """The app and its bound server (serving once serve_forever runs), with the generation stack warming up."""
    out = Path(config.out).expanduser()
    index = FolderIndex(config.data, config.runs, config.evals, out)
    for kind, what in WHAT.items():  # runs may start later in a folder of runs; a dataset is there or not
        for given in index.given[kind]:  # type: ignore[index]
            if not discover(kind, [given]):  # type: ignore[arg-type]
                raise ConfigError(f"--{kind} {given}: no {what} in it or in its subfolders")
    app = App(index, out.resolve(), config.models, Auth(config.auth), config.host, config.port)
    try:
        server = serve(app)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {config.port} is in use: give another --port (0: any free one)") from exc
        raise
    threading.Thread(target=app.warm_up, name="cxrgen-app-warm-up", daemon=True).start()
    return app, server


def run(config: AppConfig) -> AppResult:
    began = time.perf_counter()
    app, server = start(config)
    url = app.url
    found = {kind: len(app.index.all(kind)) for kind in ("data", "runs", "evals")}
    if config.runs and not found["runs"]:
        log.warning("no training run in --runs %s yet: runs started there later will show", " ".join(config.runs))
    print(f"cxrgen app: {url}  ({found['data']} dataset(s), {found['runs']} run(s), {found['evals']} report(s))")
    if config.auth and ":" not in config.auth:
        print(f"  open {url}?token=... with your token once; the browser keeps it for the session")
    if not is_local(config.host):
        print("  note: plain HTTP; on a shared network, prefer an SSH tunnel to a local --host")
    print("  Ctrl-C stops it")
    try:
        server.serve_forever()  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()  # type: ignore[attr-defined]
    return AppResult(url, round(time.perf_counter() - began, 1))


def summarize(result: AppResult) -> int:
    print(f"cxrgen app stopped after {result.seconds:.0f} s")
    return 0
