"""A real HTTP/1.1 receiver for webhook tests: records each POST, answers in one send."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender killed or cut off mid-request (the soak's faults) is not the receiver's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_port: int

    def json(self) -> Any:
        return json.loads(self.body)


Reply = Callable[[Received], tuple[int, float]]  # → (status, seconds to wait before answering)


class Receiver:
    """Listens on 127.0.0.1 (``port`` 0 = any free one); every response goes out in one send."""

    def __init__(self, reply: Reply | None = None, port: int = 0, host: str = "127.0.0.1") -> None:
        self.reply: Reply = reply or (lambda _: (200, 0.0))
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    self.client_address[1],
                )
                with receiver._lock:
                    receiver.received.append(got)
                status, delay = receiver.reply(got)
                if delay:
                    time.sleep(delay)
                answer = b'{"ok":true}' if status < 300 else b'{"error":"no"}'
                head = (
                    f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(answer)}\r\n\r\n"
                ).encode()
                self.wfile.write(head + answer)  # one send: no Nagle/delayed-ACK stall

            do_GET = do_POST  # a client that reads (CI's describe) is answered the same way

            def log_message(self, *args: Any) -> None:
                return None

        self.host = host
        self.server = _Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def open_connections(self) -> int:
        """Connections the receiver holds open now (what a client's pool keeps)."""
        with self._lock:
            return len(self._connections)

    def url(self, path: str = "/asr") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def by_job(self) -> dict[str, list[Received]]:
        with self._lock:
            out: dict[str, list[Received]] = {}
            for r in self.received:
                out.setdefault(r.headers.get("idempotency-key", ""), []).append(r)
            return out

    def close(self) -> None:
        """Stop listening and cut open keep-alive connections: the target is really gone."""
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
