"""The emulator's HTTP servers on aiohttp: a declarative route table in, a listening socket out.

Why aiohttp (its ``web.Application``, not the uvicorn + Starlette stack of asrd's own API):
- a route can *lose its answer*: the fault that drops a create's response closes the connection
  without a byte, which a handler can do here through ``request.transport`` but cannot express in
  ASGI, where an app that never starts a response still gets a 500 written for it;
- a CMQ long poll is a coroutine waiting on the queue, not a thread, and aiohttp lets it see its
  client leave (the protocol drops its transport) without cancelling the handler mid-take;
- its C parser (llhttp) keeps the signed hot path well above the 2,000 gets/s the benchmark asks
  for, it sets TCP_NODELAY on every connection (a small answer goes out at once, not held back
  by Nagle's algorithm), answers ``Expect: 100-continue`` and chunked uploads, keep-alive and
  pipelining, and gives the exact ``Host`` header and the raw request target, which COS and CMQ
  signatures are computed over.
The emulator's own ``Request``/``Response`` keep the handlers free of aiohttp types: paths are
percent-decoded once, queries split without turning ``+`` into a space (COS signs a literal plus).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

from aiohttp import web

log = logging.getLogger("asrd.emulator.http")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024 * 1024


@dataclass
class Request:
    method: str
    target: str  # as received
    path: str  # percent-decoded
    query: dict[str, str]  # decoded; a repeated parameter keeps its last value
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool
    peer: str = ""
    # True once the client's connection is gone (a long poll then stops taking messages).
    closed: Callable[[], bool] = field(default=lambda: False, repr=False)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/xml"
    abort: bool = False  # close the connection without answering (a lost response)


H = TypeVar("H")
_AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route(Generic[H]):
    """One row of a route table: ``method`` ("*" for any), an aiohttp path pattern and what the
    application's dispatch function calls. Rows are tried in order and rows of one path must be
    adjacent, so a path's "*" row after its methods answers every other method."""

    method: str
    path: str
    handler: H


# Runs one routed call: authentication, fault injection and error documents live here.
Dispatch = Callable[[Request, H], Awaitable[Response]]


def split_query(raw: str) -> dict[str, str]:
    """Decode ``a=b&c=`` without turning ``+`` into a space (COS signs a literal plus)."""
    out: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out[unquote(k)] = unquote(v)
    return out


async def _request(request: web.Request) -> Request:
    target = request.raw_path
    raw_path, _, raw_query = target.partition("?")
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Request(
        method=request.method,
        target=target,
        path=unquote(raw_path),
        query=split_query(raw_query),
        headers=headers,
        body=await request.read() if request.body_exists else b"",
        keep_alive=request.keep_alive,
        peer=f"{peer[0]}:{peer[1]}" if peer else "",
        closed=lambda: request.transport is None or request.transport.is_closing(),
    )


def _endpoint(handler: H, dispatch: Dispatch[H]) -> _AiohttpHandler:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        resp = await dispatch(await _request(request), handler)
        if resp.abort:
            if request.transport is not None:
                request.transport.close()
            # aiohttp's write of this stand-in fails on the closed transport and is dropped
            # quietly (a ConnectionError while sending is a client gone, not a server error).
            return web.Response(status=resp.status)
        out = web.Response(status=resp.status, body=resp.body, content_type=None)
        out.headers["Content-Type"] = resp.content_type
        out.headers["Server"] = "tencent-ci"
        # COS names the connection's fate on every answer; aiohttp only does so for HTTP/1.0.
        out.headers["Connection"] = "keep-alive" if request.keep_alive else "close"
        for name, value in resp.headers:
            out.headers.add(name, value)
        return out

    return endpoint


def application(routes: Iterable[Route[H]], dispatch: Dispatch[H]) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for route in routes:
        app.router.add_route(route.method, route.path, _endpoint(route.handler, dispatch))
    return app


class Listener:
    """A started aiohttp application on one address; ``address`` is the bound (host, port)."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    async def close(self) -> None:
        await self._runner.cleanup()


async def serve(app: web.Application, host: str, port: int) -> Listener:
    runner = web.AppRunner(
        app,
        access_log=None,  # one log line per request would cost more than the request
        handle_signals=False,  # the CLI owns SIGTERM/SIGINT
        shutdown_timeout=1.0,  # a long poll still waiting at shutdown is not worth waiting for
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True, backlog=1024).start()
    return Listener(runner)
