"""The sidecar HTTP API (FastAPI on uvicorn, in a thread of the daemon's process).

``GET /healthz`` (process up), ``GET /readyz`` (subscribed and connected — with workers, all of
them — and the intake reachable), ``GET /metrics`` (Prometheus text), ``GET /openapi.json``,
``POST /v1/jobs`` (submit, recorded in the ledger), ``GET /v1/jobs?state=&since=&limit=`` (the
ledger's jobs),
``GET /v1/jobs/{id}`` (the job as CI has it now, which sinks asrd delivered it to, and its
timeline in the ledger),
``POST /v1/callbacks/{token}`` (URL callbacks onto the Pulsar topic, when ``[intake.url]`` is set),
and the operator console's pages under ``/ui/`` (the ``console`` package).

Every error is ``{"error": "<one line>"}``. ``/v1/*`` needs ``Authorization: Bearer <token>``
when ``[http] token`` is set (required off loopback), except ``/v1/callbacks/{token}``, which
CI calls with the secret in its path. Bodies are bounded by ``Content-Length`` before they are
read. asyncio sets TCP_NODELAY on every connection, so no response waits on Nagle's algorithm.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import structlog
import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

from .callback import JOB_ID
from .ci import CiClient, CiError
from .config import CiSettings
from .console import ConsoleContext, build_router
from .intake.url import UrlReceiver
from .jobs import SINCE_DURATION, JobService
from .ledger import Ledger
from .result import InvalidResult, normalise
from .tracing import trace_id

log = structlog.get_logger("asrd.api")
JOB_ID_PATTERN = f"^{JOB_ID.pattern}$"  # a path pattern is searched, not matched: anchor it
# Module level: FastAPI resolves dependencies in annotations from the module's names.
BEARER = HTTPBearer(auto_error=False, description="[http] token; required off loopback.")


@dataclass
class ApiContext:
    ci: CiClient
    ci_settings: CiSettings
    ready: Callable[[], bool]
    metrics: Callable[[], bytes]
    callbacks: UrlReceiver | None = None
    ledger: Ledger | None = None  # where "delivered to" comes from
    jobs: JobService | None = None  # submission and the ledger's job list
    token: str = ""  # bearer token for /v1/*; empty = none needed (loopback only)
    not_ready: Callable[[], str] = lambda: ""  # why work is paused ("" when it is not)
    max_body_bytes: int = 64 * 1024
    console: ConsoleContext | None = None  # the pages under /ui/


# -- models (the OpenAPI document is generated from these) ---------------------------------
class ApiError(BaseModel):
    error: str = Field(description="What is wrong, in one line.")
    code: str | None = Field(default=None, description="CI's error code, when CI refused.")
    client_token: str | None = Field(default=None, description="The submit's client token.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    reason: str | None = Field(default=None, description="Why work is paused, when it is.")


# No control characters (CI's request is XML, which should not carry them) and no whitespace
# at either end (XML text is trimmed: " a" would name another object, " " none). Classes are
# spelled out because \s differs between the regex dialects that read this pattern.
_END = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_TEXT = rf"^{_END}([^\x00-\x1f\x7f-\x9f]*{_END})?$"


class JobRequest(BaseModel):
    """Exactly one of ``input`` (an object key in the configured bucket) and ``url``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # no true for 1, no "2" for 2
        json_schema_extra={
            "oneOf": [
                {"required": [key], "properties": {key: {"type": "string"}}}
                for key in ("input", "url")
            ]
        },
    )
    input: str | None = Field(default=None, max_length=850, pattern=_TEXT)
    # No brackets: an IPv6 literal host is not accepted (and a stray one breaks URL parsers).
    url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\x00-\x20\x7f\[\]]+$"
    )
    output: str | None = Field(default=None, max_length=850, pattern=_TEXT)
    output_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9-]+-\d+$")
    output_region: str | None = Field(default=None, pattern=r"^[a-z]+-[a-z0-9-]+$")
    # CI's 1,024 characters of UserData less "asrd:", the longest client token and a space.
    user_data: str | None = Field(default=None, max_length=954, pattern=r"^[ -~]*$")
    template_id: str | None = Field(default=None, max_length=128, pattern=_TEXT)
    client_token: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    job_level: int | None = Field(default=None, ge=0, le=2, strict=False, description="2 = soonest")

    @field_validator("job_level", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        # JSON Schema's integer: 1 and 1.0, never true or "1".
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ValueError("must be an integer")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.input is None) == (self.url is None):
            raise ValueError("give exactly one of an input object or an input URL")
        return self


class JobSubmitted(BaseModel):
    job_id: str | None
    client_token: str
    status: str = Field(description="submitted, adopted, or skipped (the token was seen before)")


class JobList(BaseModel):
    jobs: list[dict[str, Any]]


class JobRecord(BaseModel):
    """The normalised result record (docs/configuration.md), plus which sinks asrd delivered
    it to."""

    model_config = ConfigDict(extra="allow")
    schema_version: int
    job_id: str
    state: str
    transcript: str
    segments: list[dict[str, Any]]
    delivered_to: list[str] = Field(description="Sinks that have this job, per the ledger.")
    events: list[dict[str, Any]] = Field(
        default_factory=list, description="The job's timeline in the ledger, oldest first."
    )
    trace_id: str | None = Field(
        default=None, description="The job's trace id (32 hex digits) when it was traced."
    )


# What CI (a JSON or XML TaskFinish) and a CMQ topic's HTTP push send, read raw and never parsed
# here; an XML body may come with any content type.
_NON_BLANK = {"type": "string", "pattern": r"\S"}
CALLBACK_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {}},
        "text/plain": {"schema": _NON_BLANK},
    },
}


class Accepted(BaseModel):
    accepted: bool


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ApiError} for code in codes}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- the application -------------------------------------------------------------------------
def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="asrd sidecar API",
        version="1",
        description="Health, metrics, job submission and lookup; URL callbacks from CI. "
        'Every error answers {"error": "<one line>"}.',
        docs_url=None,
        redoc_url=None,
    )

    async def authorised(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        given = creds.credentials.encode() if creds is not None else b""
        if not hmac.compare_digest(given, ctx.token.encode()):
            raise HTTPException(401, "a valid bearer token is required")

    # Only a server with a token documents and enforces one (loopback may go without).
    guard = [Depends(authorised)] if ctx.token else []

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of one route; a path may have several (/v1/jobs).
            path = request.url.path
            methods = {
                m
                for r in app.routes
                if isinstance(r, APIRoute) and r.path_regex.match(path)
                for m in r.methods or ()
            }
            headers["Allow"] = ", ".join(sorted(methods))
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return _error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        if first.get("type") == "literal_error" and loc:
            expected = first.get("ctx", {}).get("expected", "")
            return _error(400, f"{loc[-1]} must be one of {expected}")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return _error(400, f"{'.'.join(loc)}: {message}")

    @app.middleware("http")
    async def body_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Decided on the header, before any byte of the body is read; the server holds the body
        # to exactly Content-Length.
        if request.method in ("POST", "PUT", "PATCH"):
            limit = ctx.max_body_bytes
            if request.url.path.startswith("/v1/callbacks/") and ctx.callbacks is not None:
                limit = ctx.callbacks.max_bytes
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "a Content-Length header is required")
            if int(length) > limit:
                return _error(413, f"body larger than {limit} bytes", {"Connection": "close"})
        return await call_next(request)

    @app.get("/healthz", response_model=Health, tags=["probes"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready"}},
        tags=["probes"],
    )
    def readyz() -> JSONResponse:
        ready = ctx.ready()
        body: dict[str, Any] = {"ready": ready}
        reason = ctx.not_ready()
        if reason:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["probes"],
    )
    def metrics() -> Response:
        return Response(ctx.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def jobs_answer(status: int, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(body, status_code=status)

    @app.post(
        "/v1/jobs",
        status_code=201,
        response_model=JobSubmitted,
        responses={
            200: {"model": JobSubmitted, "description": "Already submitted (same client_token)"},
            **_errors(400, 401, 411, 413, 502, 503),
        },
        dependencies=guard,
        tags=["jobs"],
    )
    def create_job(req: JobRequest) -> JSONResponse:
        """Recorded in the ledger before CI is asked; a repeated client_token is not sent again."""
        if ctx.jobs is None:
            return _error(503, "job submission is not available here")
        return jobs_answer(*ctx.jobs.submit(req.model_dump(exclude_none=True)))

    @app.get(
        "/v1/jobs",
        response_model=JobList,
        responses=_errors(400, 401, 503),
        dependencies=guard,
        tags=["jobs"],
    )
    def list_jobs(
        state: Literal["owed", "settled", "overdue", "failed"] | None = None,
        since: Annotated[
            str | None,
            Query(
                description="90s, 30m, 2h, 1d ago, or an RFC 3339 time (with its UTC offset)",
                # As parse_since reads it: the pattern alone would let through days that do
                # not exist, which the server refuses.
                json_schema_extra={
                    "anyOf": [
                        {"type": "string", "pattern": f"^{SINCE_DURATION}$"},
                        {"type": "string", "format": "date-time"},
                    ]
                },
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> JSONResponse:
        """The jobs the ledger knows, as ``asrd jobs`` lists them."""
        if ctx.jobs is None:
            return _error(503, "the job ledger is not available here")
        query = {"state": state or "", "limit": str(limit)}
        if since is not None:  # an empty one is refused, as the document says
            query["since"] = since
        return jobs_answer(*ctx.jobs.listing(query))

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobRecord,
        responses=_errors(400, 401, 404, 502),
        dependencies=guard,
        tags=["jobs"],
    )
    def get_job(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="s + 32 hex digits")],
    ) -> dict[str, Any] | JSONResponse:
        try:
            detail = ctx.ci.get_job(job_id)
            if detail is None:
                return _error(404, f"CI does not know job {job_id}")
            record = normalise(detail).to_dict()
        except CiError as exc:
            return _error(502 if exc.transient else 400, str(exc))
        except InvalidResult as exc:
            return _error(502, f"invalid result from CI: {exc}")
        delivered = ctx.ledger.delivered(job_id) if ctx.ledger is not None else set()
        events = ctx.ledger.events(job_id) if ctx.ledger is not None else []
        kept = ctx.ledger.trace_parents([job_id]) if ctx.ledger is not None else {}
        return {
            **record,
            "delivered_to": sorted(delivered),
            "events": [event.to_dict() for event in events],
            "trace_id": trace_id(kept.get(job_id)),
        }

    @app.post(
        "/v1/callbacks/{token}",
        response_model=Accepted,
        responses=_errors(400, 404, 411, 413, 503),
        tags=["callbacks"],
        openapi_extra={"requestBody": CALLBACK_BODY},
    )
    async def url_callback(
        token: Annotated[str, Path(max_length=256)], request: Request
    ) -> JSONResponse:
        receiver = ctx.callbacks
        if receiver is None or not receiver.token_matches(token):
            # 404, not 401: a wrong token must not tell a scanner that the endpoint exists.
            return _error(404, "no such callback endpoint")
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = await run_in_threadpool(receiver.accept, token, body, headers)
        return JSONResponse(answer.body, status_code=answer.status)

    if ctx.console is not None:
        # The console follows the API's token rule: the same token signs in.
        console = replace(ctx.console, token=ctx.token, metrics=ctx.metrics)
        app.include_router(build_router(console), prefix="/ui")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            # Validation errors answer 400 with the one error shape, never FastAPI's 422.
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class ApiServer:
    """uvicorn serving the app from a daemon thread, on a socket bound before it starts (so a
    taken port is a config error at start-up, and early clients wait in the backlog)."""

    def __init__(self, listen: str, app: FastAPI) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, int(port)))
            self.sock.listen(1024)
        except OSError:
            self.sock.close()
            raise
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", server_header=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, name="asrd-api", daemon=True
        )
        self._thread.start()
        log.info("http api listening", listen=f"{host}:{self.sock.getsockname()[1]}")

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self.sock.close()


def serve(listen: str, ctx: ApiContext) -> ApiServer:
    """Start the API; the caller shuts it down. Raises ``OSError`` if it cannot listen."""
    return ApiServer(listen, create_app(ctx))
