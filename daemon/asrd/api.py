"""The sidecar HTTP API: health, readiness, metrics, and job submission / lookup for local apps.

``GET /healthz`` (process up), ``GET /readyz`` (subscribed and connected to the broker),
``GET /metrics`` (Prometheus text), ``POST /v1/jobs`` (submit, recorded in the ledger),
``GET /v1/jobs?state=owed|settled|overdue|failed&since=2h`` (the ledger's jobs),
``GET /v1/jobs/{id}``,
``POST /v1/callbacks/{token}`` (URL callbacks onto the Pulsar topic, when ``[intake.url]`` is set).
Each response goes out in one send with TCP_NODELAY: a header-then-body pair of sends stalls
keep-alive clients ~40 ms per request (Nagle + delayed ACK).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog

from .callback import JOB_ID
from .ci import CiClient, CiError
from .config import CiSettings
from .intake.url import UrlReceiver
from .jobs import JobService
from .result import InvalidResult, normalise

log = structlog.get_logger("asrd.api")
MAX_BODY = 64 * 1024


@dataclass
class ApiContext:
    ci: CiClient
    ci_settings: CiSettings
    ready: Callable[[], bool]
    counters: Callable[[], dict[str, int]]
    callbacks: UrlReceiver | None = None
    gauges: Callable[[], dict[str, float]] = dict
    jobs: JobService | None = None


def prometheus(counters: dict[str, int], ready: bool, gauges: dict[str, float]) -> str:
    lines = []
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE asrd_{name} gauge", f"asrd_{name} {value:g}"]
    lines += [
        "# HELP asrd_ready 1 when subscribed and connected to the broker.",
        "# TYPE asrd_ready gauge",
        f"asrd_ready {int(ready)}",
        "# TYPE asrd_events_total counter",
    ]
    for name, value in sorted(counters.items()):
        kind, _, label = name.partition(".")
        lines.append(f'asrd_events_total{{kind="{kind}",name="{label}"}} {value}')
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "asrd"
    ctx: ApiContext  # set on the subclass made by serve()

    def _send(
        self, status: int, body: str | dict[str, Any], content_type: str = "application/json"
    ) -> None:
        if isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            f"Server: asrd\r\n\r\n"
        ).encode()
        self.wfile.write(head + data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        elif self.path == "/readyz":
            ready = self.ctx.ready()
            self._send(200 if ready else 503, {"ready": ready})
        elif self.path == "/metrics":
            text = prometheus(self.ctx.counters(), self.ctx.ready(), self.ctx.gauges())
            self._send(200, text, "text/plain; version=0.0.4")
        elif self.path.startswith("/v1/jobs/"):
            self._get_job(self.path.removeprefix("/v1/jobs/"))
        elif urlsplit(self.path).path == "/v1/jobs" and self.ctx.jobs is not None:
            query = dict(parse_qsl(urlsplit(self.path).query))
            self._send(*self.ctx.jobs.listing(query))
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _get_job(self, job_id: str) -> None:
        if not JOB_ID.fullmatch(job_id):
            self._send(400, {"error": "not a CI job id (s + 32 hex digits)"})
            return
        try:
            detail = self.ctx.ci.get_job(job_id)
            if detail is None:
                self._send(404, {"error": f"CI does not know job {job_id}"})
                return
            self._send(200, normalise(detail).to_dict())
        except CiError as exc:
            self._send(502 if exc.transient else 400, {"error": str(exc)})
        except InvalidResult as exc:
            self._send(502, {"error": str(exc)})

    def _refuse(self, status: int, error: str) -> None:
        self.close_connection = True  # the body, if any, is left unread
        self._send(status, {"error": error})

    def _callback(self, token: str) -> None:
        receiver = self.ctx.callbacks
        if receiver is None or not receiver.token_matches(token):
            self._refuse(404, "no such callback endpoint")
            return
        length = self._length()
        if length is None:
            self._refuse(411, "a Content-Length header is required")
            return
        if length > receiver.max_bytes:
            self._refuse(413, f"body larger than {receiver.max_bytes} bytes")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = receiver.accept(token, self.rfile.read(length), headers)
        self._send(answer.status, answer.body)

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            return None
        return length if length >= 0 else None

    def do_POST(self) -> None:
        if self.path.startswith("/v1/callbacks/"):
            self._callback(self.path.removeprefix("/v1/callbacks/"))
            return
        if self.path != "/v1/jobs":
            self._send(404, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": f"body larger than {MAX_BODY} bytes"})
            return
        if self.ctx.jobs is None:
            self._refuse(503, "job submission is not available here")
            return
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(req, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            self._send(400, {"error": str(exc)})
            return
        self._send(*self.ctx.jobs.submit(req))

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(listen: str, ctx: ApiContext) -> ThreadingHTTPServer:
    """Start the API in a daemon thread; the caller shuts it down."""
    host, _, port = listen.rpartition(":")
    handler = type("AsrdHandler", (Handler,), {"ctx": ctx})
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="asrd-api", daemon=True).start()
    log.info("http api listening", listen=f"{host}:{server.server_address[1]}")
    return server
