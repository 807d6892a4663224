"""The app's HTTP server: the page, its JSON API and the files of the folders it was given, nothing else.

Standard library only (`http.server`), threads per request; generation goes through one queue. The page is
static HTML, CSS and JavaScript shipped in the package, so it works with no internet. Torch and diffusers are
imported on a background thread after start-up (the browser answers at once; compose waits for them).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import mimetypes
import os
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .browse import Dataset, Filters, whole
from .folders import FolderIndex, shown_name
from .monitor import run_detail, run_overview

log = logging.getLogger(__name__)
STATIC = ("index.html", "app.js", "app.css")
TOKEN_COOKIE = "cxrgen_app_token"
MAX_BODY = 1 << 20
MAX_WAITING = 16  # generation requests in the queue
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-src 'self'; object-src 'none'"
# files from the given folders (a report is HTML): shown, never run
FILE_POLICY = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
TEXT_TYPES = {".md": "text/plain", ".jsonl": "text/plain", ".yaml": "text/plain", ".csv": "text/plain"}


def is_local(host: str) -> bool:
    """A loopback address or `localhost`, exactly (a name such as 127.attacker.example is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Auth:
    """--auth USER:PASSWORD (HTTP basic) or --auth TOKEN (a bearer token, or ?token= once, kept as a cookie)."""

    def __init__(self, secret: str | None):
        self.secret = secret
        self.basic = secret is not None and ":" in secret

    def allows(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> bool:
        if self.secret is None:
            return True
        header = handler.headers.get("Authorization", "")
        if self.basic:
            scheme, _, value = header.partition(" ")
            try:
                given = base64.b64decode(value, validate=True).decode() if scheme.lower() == "basic" else ""
            except (ValueError, UnicodeDecodeError):
                given = ""
            return hmac.compare_digest(given.encode(), self.secret.encode())
        cookies = dict(
            part.strip().split("=", 1) for part in handler.headers.get("Cookie", "").split(";") if "=" in part
        )
        offered = [header.removeprefix("Bearer ").strip(), cookies.get(TOKEN_COOKIE, ""), query.get("token", "")]
        return any(hmac.compare_digest(o.encode(), self.secret.encode()) for o in offered if o)


class App:
    """What the handlers share: the folders, the generation queue (made on first use) and the compose caches."""

    def __init__(self, index: FolderIndex, out: Path, bases: list[str], auth: Auth, host: str, port: int):
        self.index, self.out, self.bases, self.auth = index, out, bases, auth
        self.host, self.port = host, port
        self._jobs: Any = None
        self._words: Any = None
        self._lock = threading.Lock()
        self.ready = threading.Event()  # the generation stack is imported

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def warm_up(self) -> None:
        """After start-up, on a thread: read the datasets (the first page shows one), then import the generation
        stack (seconds), so that neither waits for the first click."""
        for folder in self.index.all("data"):
            try:
                Dataset(folder).summary()
            except Exception:  # a dataset that does not read is reported when it is opened
                log.debug("reading %s ahead failed", folder.path, exc_info=True)
        try:
            self.jobs()
        finally:
            self.ready.set()

    def jobs(self) -> Any:
        with self._lock:
            if self._jobs is None:
                from .compose import Vocabularies
                from .jobs import JobQueue

                self._jobs, self._words = JobQueue(self.out), Vocabularies()
            return self._jobs

    def close(self) -> None:
        """Stop the generation worker once the request it makes is done."""
        if self._jobs is not None:
            self._jobs.close()

    def words(self) -> Any:
        self.jobs()
        return self._words


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass made per server
    server_version = "cxrgen-app"
    timeout = 60  # seconds a connection may stay silent (slow or cut-short requests do not hold a thread)

    def log_message(self, format: str, *args: Any) -> None:
        text = format % args
        path = getattr(self, "path", "")
        log.debug("%s %s", self.address_string(), text.replace(path, urlsplit(path).path) if path else text)

    # -- dispatch ------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        if not self._host_allowed():
            return self._send_json({"error": "unknown host"}, HTTPStatus.FORBIDDEN)
        # ?token= opens the page once (then the cookie carries it); elsewhere it would end up in logs and history
        page = url.path in ("/", "/index.html")
        if not self.app.auth.allows(self, query if page else {}):
            return self._unauthorized()
        parts = [p for p in url.path.split("/") if p]
        try:
            if method == "POST":
                return self._post(parts)
            return self._get(parts, query, set_token=bool(query.get("token")))
        except ConnectionError:  # the browser left (a page changed while its images loaded)
            return None
        except Exception as exc:
            from .compose import RequestError

            if isinstance(exc, RequestError):
                return self._send_json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            log.exception("%s %s failed", method, url.path)  # not the query: it may hold the token
            return self._send_json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _host_allowed(self) -> bool:
        """On a local address, only requests for a local name (a page on another site that resolves its name to
        127.0.0.1, DNS rebinding, cannot reach the app)."""
        if not is_local(self.app.host):
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")
        return is_local(name)

    def _get(self, parts: list[str], query: dict[str, str], set_token: bool) -> None:
        app = self.app
        if not parts or parts == ["index.html"]:
            return self._send_static("index.html", set_token)
        head, rest = parts[0], parts[1:]
        if head == "static" and len(rest) == 1 and rest[0] in STATIC:
            return self._send_static(rest[0])
        if head == "files" and len(rest) >= 3:
            path = app.index.file(rest[0], rest[1], "/".join(rest[2:]))
            return self._send_file(path) if path else self._not_found()
        if head != "api" or not rest:
            return self._not_found()
        what, args = rest[0], rest[1:]
        if what == "overview" and not args:
            return self._send_json(self._overview())
        if what == "data" and args:
            folder = app.index.get("data", args[0])
            if folder is None:
                return self._not_found()
            dataset = Dataset(folder)
            if len(args) == 1:
                return self._send_json(dataset.summary(query.get("split") or None))
            if args[1:] == ["images"]:
                filters = Filters.from_query(query)
                return self._send_json(dataset.images(filters, _int(query, "offset", 0), _int(query, "limit", 48)))
            if args[1:] == ["rejected"]:
                return self._send_json(dataset.rejected(_int(query, "offset", 0), _int(query, "limit", 48)))
        if what == "runs" and len(args) == 1 and (folder := app.index.get("runs", args[0])):
            return self._send_json(run_detail(folder))
        if what == "evals" and len(args) == 1 and (folder := app.index.get("evals", args[0])):
            report = folder.path / "report.html"
            url = f"/files/evals/{folder.id}/report.html" if report.is_file() else None
            return self._send_json({"id": folder.id, "name": folder.name, "report": url})
        if what == "models" and not args:
            from .compose import models

            listed = models(app.index, app.bases)
            listed.pop("paths")  # the page names models by id
            return self._send_json(listed)
        if what == "jobs" and args:
            from .jobs import job_view, zipped

            jobs = app.jobs()
            job = jobs.jobs.get(args[0])
            if job is None:
                return self._not_found()
            if len(args) == 1:
                return self._send_json(job_view(jobs, job))
            if args[1:] == ["download"] and job.state == "done":
                attachment = {"Content-Disposition": f'attachment; filename="{job.id}.zip"'}
                return self._send(zipped(job.out), "application/zip", attachment)
        return self._not_found()

    def _overview(self) -> dict[str, Any]:
        from .. import __version__

        index = self.app.index
        return {
            "version": __version__,
            "data": [{"id": f.id, "name": f.name} for f in index.all("data")],
            "runs": [run_overview(f) for f in index.all("runs")],
            "evals": [{"id": f.id, "name": f.name} for f in index.all("evals")],
            "out": shown_name(str(self.app.out)),
            "ready": self.app.ready.is_set(),
        }

    def _post(self, parts: list[str]) -> None:
        # JSON only: a page of another site cannot send it here without a CORS preflight, which is not answered
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._send_json({"error": "send application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        length = whole(self.headers.get("Content-Length") or "0", 12)
        if length is None:
            return self._send_json({"error": "give a Content-Length"}, HTTPStatus.LENGTH_REQUIRED)
        if length > MAX_BODY:
            return self._send_json({"error": "request too large"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._send_json({"error": "the request is not JSON"}, HTTPStatus.BAD_REQUEST)
        if parts[:1] != ["api"] or len(parts) != 2 or not isinstance(body, dict):
            return self._not_found()
        from .compose import build_config, preview
        from .jobs import job_view

        app = self.app
        words = app.words()
        if parts[1] == "vocabulary":
            from ..generate.runner import resolve_source

            config = build_config(app.index, app.bases, {**body, "findings": []}, app.out / "preview")
            return self._send_json(words.words(resolve_source(config), config))
        if parts[1] == "prompt":
            return self._send_json(preview(build_config(app.index, app.bases, body, app.out / "preview"), words))
        if parts[1] == "generate":
            jobs = app.jobs()
            if jobs.waiting() >= MAX_WAITING:
                return self._send_json({"error": "busy: try again when a generation is done"}, 503)
            config = build_config(app.index, app.bases, body, app.out / "pending")
            config.finding = preview(config, words)["findings"]  # refused here, before the queue, if unknown
            config.out = str(jobs.folder())
            return self._send_json(job_view(jobs, jobs.submit(config)), HTTPStatus.ACCEPTED)
        return self._not_found()

    # -- answers -------------------------------------------------------------------------------------------------
    def _send(self, data: bytes, content_type: str, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self._send_headers(content_type, len(data), headers, status)
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_headers(self, content_type: str, length: int, headers: dict[str, str] | None, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        self._send(json.dumps(data).encode(), "application/json", status=status)

    def _send_static(self, name: str, set_token: bool = False) -> None:
        data = resources.files("cxrgen.app").joinpath("static", name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY"}
        if set_token and self.app.auth.secret and not self.app.auth.basic:
            headers["Set-Cookie"] = f"{TOKEN_COOKIE}={self.app.auth.secret}; HttpOnly; SameSite=Strict; Path=/"
        self._send(data, f"{kind}; charset=utf-8", headers)

    def _send_file(self, path: Path) -> None:
        """Streamed: a run folder holds checkpoints of gigabytes."""
        kind = TEXT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        with open(path, "rb") as fh:
            self._send_headers(kind, os.fstat(fh.fileno()).st_size, {"Content-Security-Policy": FILE_POLICY})
            if self.command != "HEAD":
                shutil.copyfileobj(fh, self.wfile, 1 << 20)

    def _not_found(self) -> None:
        self._send_json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _unauthorized(self) -> None:
        headers = {"WWW-Authenticate": 'Basic realm="cxrgen app"'} if self.app.auth.basic else {}
        body = json.dumps({"error": "log in: this app needs --auth credentials"}).encode()
        self._send(body, "application/json", headers, HTTPStatus.UNAUTHORIZED)


def _int(query: dict[str, str], key: str, default: int) -> int:
    found = whole(query.get(key, ""), 9)
    return default if found is None else found


def serve(app: App) -> ThreadingHTTPServer:
    """A server bound to the app's address (not yet serving: call serve_forever)."""
    handler = type("AppHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((app.host, app.port), handler)
    server.daemon_threads = True
    app.port = server.server_address[1]
    return server
