"""Minimal HTTP/1.1 server on asyncio: keep-alive, pipelining, one send per response.

Every response is built as one bytes object and written with a single ``transport.write``
on a TCP_NODELAY socket, so keep-alive clients never wait on Nagle + delayed ACK.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

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
    head: bool = False  # HEAD: send Content-Length of the body but not the body
    abort: bool = False  # close the connection without answering (a lost response)

    def encode(self, keep_alive: bool, date: str) -> bytes:
        reason = _REASONS.get(self.status, "")
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            f"Date: {date}",
            "Server: tencent-ci",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if self.head else head + self.body


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def split_query(raw: str) -> dict[str, str]:
    """Decode ``a=b&c=`` without turning ``+`` into a space (COS signs a literal plus)."""
    out: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out[unquote(k)] = unquote(v)
    return out


class _Date:
    """``Date`` header text, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, formatdate(second, usegmt=True)
        return self._text


class BadRequest(Exception):
    pass


Handler = Callable[[Request], Awaitable[Response]]


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, date: _Date) -> None:
        self._handler = handler
        self._date = date
        self._buf = bytearray()
        self._busy = False
        self._closed = False
        self._continued = False  # "100 Continue" already sent for the request being read
        self._transport: asyncio.Transport | None = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Start the next complete request in the buffer, if any (requests are served in order)."""
        try:
            req = self._parse()
        except BadRequest as exc:
            self._send(
                Response(400, f"bad request: {exc}".encode(), content_type="text/plain"), False
            )
            return
        if req is None:
            return
        self._busy = True
        task = asyncio.ensure_future(self._serve(req))
        task.add_done_callback(_log_task_error)

    async def _serve(self, req: Request) -> None:
        try:
            resp = await self._handler(req)
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.target)
            resp = Response(500, b"internal error", content_type="text/plain")
        self._send(resp, req.keep_alive)
        self._busy = False
        if not self._closed and req.keep_alive:
            self._next()

    def _send(self, resp: Response, keep_alive: bool) -> None:
        if self._transport is None:
            return
        if resp.abort:
            self._transport.close()
            self._closed = True
            return
        self._transport.write(resp.encode(keep_alive, self._date.now()))
        if not keep_alive:
            self._transport.close()
            self._closed = True

    def _parse(self) -> Request | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise BadRequest("headers too large")
            return None
        try:
            head = bytes(self._buf[:end]).decode("latin-1")
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
            raise BadRequest("undecodable headers") from exc
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("malformed header line")
            name = name.strip().lower()
            headers[name] = f"{headers[name]},{value.strip()}" if name in headers else value.strip()
        body_start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _dechunk(self._buf, body_start)
            if parsed is None:
                return None
            body, consumed = parsed
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as exc:
                raise BadRequest("bad Content-Length") from exc
            if length < 0 or length > MAX_BODY_BYTES:
                raise BadRequest("bad Content-Length")
            if len(self._buf) < body_start + length:
                expects = headers.get("expect", "").lower() == "100-continue"
                if expects and not self._continued and self._transport:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self._continued = True
                return None
            body = bytes(self._buf[body_start : body_start + length])
            consumed = body_start + length
        del self._buf[:consumed]
        self._continued = False
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        raw_path, _, raw_query = target.partition("?")
        return Request(
            method=method.upper(),
            target=target,
            path=unquote(raw_path),
            query=split_query(raw_query),
            headers=headers,
            body=body,
            keep_alive=keep_alive,
            peer=self._peer,
            closed=lambda: self._closed,
        )


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a complete chunked body starting at ``start``; None while incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise BadRequest("bad chunk size") from exc
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            while trailer_end > pos:  # skip trailer headers
                pos = trailer_end + 2
                trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if len(out) > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        pos += size + 2


def _log_task_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("connection task failed", exc_info=task.exception())


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    date = _Date()
    return await loop.create_server(
        lambda: HttpProtocol(handler, date), host, port, reuse_address=True, backlog=1024
    )
