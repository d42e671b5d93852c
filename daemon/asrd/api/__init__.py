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

One router per concern (``probes``, ``jobs``, ``callbacks``; the console's under ``/ui/``),
each reading the process's parts through ``context`` from ``app.state``.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any

import structlog
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ..console import build_router
from . import callbacks, jobs, probes
from .context import ApiContext, context
from .models import error

__all__ = ["ApiContext", "ApiServer", "create_app", "serve"]

log = structlog.get_logger("asrd.api")
# Module level: FastAPI resolves dependencies in annotations from the module's names.
BEARER = HTTPBearer(auto_error=False, description="[http] token; required off loopback.")


async def authorised(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ctx: Annotated[ApiContext, Depends(context)],
) -> None:
    given = creds.credentials.encode() if creds is not None else b""
    if not hmac.compare_digest(given, ctx.token.encode()):
        raise HTTPException(401, "a valid bearer token is required")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of one route; a path may have several (/v1/jobs).
        path = request.url.path
        methods = {
            m
            for r in request.app.routes
            if isinstance(r, APIRoute) and r.path_regex.match(path)
            for m in r.methods or ()
        }
        headers["Allow"] = ", ".join(sorted(methods))
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error(exc.status_code, str(exc.detail), headers)


async def invalid(_: Request, exc: Exception) -> Response:
    """Validation errors answer 400 with the one error shape, never FastAPI's 422."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    if first.get("type") == "literal_error" and loc:
        expected = first.get("ctx", {}).get("expected", "")
        return error(400, f"{loc[-1]} must be one of {expected}")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return error(400, f"{'.'.join(loc)}: {message}")


async def body_limit(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Decided on the header, before any byte of the body is read; the server holds the body
    to exactly Content-Length."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return await call_next(request)
    ctx: ApiContext = request.app.state.ctx
    limit = ctx.max_body_bytes
    if request.url.path.startswith("/v1/callbacks/") and ctx.callbacks is not None:
        limit = ctx.callbacks.max_bytes
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return error(411, "a Content-Length header is required")
    if int(length) > limit:
        return error(413, f"body larger than {limit} bytes", {"Connection": "close"})
    return await call_next(request)


def _document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document without FastAPI's 422 answers and their schemas (validation
    answers 400 with the one error shape)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="asrd sidecar API",
        version="1",
        description="Health, metrics, job submission and lookup; URL callbacks from CI. "
        'Every error answers {"error": "<one line>"}.',
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.middleware("http")(body_limit)
    # Only a server with a token documents and enforces one (loopback may go without).
    guard = [Depends(authorised)] if ctx.token else []
    app.include_router(probes.router)
    app.include_router(jobs.router, dependencies=guard)
    app.include_router(callbacks.router)
    if ctx.console is not None:
        # The console follows the API's token rule: the same token signs in.
        console = replace(ctx.console, token=ctx.token, metrics=ctx.metrics)
        app.include_router(build_router(console), prefix="/ui")
    app.openapi = _document(app)  # type: ignore[method-assign]
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
