"""asrd's CMQ client against the emulator's CMQ endpoint, as production reaches TDMQ: the
documented ``/v2/index.php`` path, the Host that is signed being the one sent, and the proxy and
CA environment honoured. A small forwarding server plays the proxy (or a TLS front) and passes
every request on unchanged, so the emulator checks each signature on its own."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from asrd.cmq import CmqClient, CmqError, request_target
from asrd.config import CmqIntakeSettings, UrlIntakeSettings
from asrd.intake.forward import Forwarder as IntakeForwarder
from asrd.intake.forward import ForwardError, Outgoing
from asrd.intake.queue import QueueIntake, cmq_clients
from asrd.intake.url import UrlReceiver
from asrd.observers import Observer, Observers

from .conftest import Broker
from .support import SECRET_ID, SECRET_KEY, Emulator, official_cmq_queue, quiet_client


@pytest.mark.parametrize(
    ("endpoint", "url", "host"),
    [
        (
            "https://cmq-gz.public.tencenttdmq.com",
            "https://cmq-gz.public.tencenttdmq.com/v2/index.php",
            "cmq-gz.public.tencenttdmq.com",
        ),
        ("https://cmq-gz.x.com:443/", "https://cmq-gz.x.com/v2/index.php", "cmq-gz.x.com"),
        ("http://gz.mqadapter.x:80", "http://gz.mqadapter.x/v2/index.php", "gz.mqadapter.x"),
        ("http://10.0.0.1:8080/", "http://10.0.0.1:8080/v2/index.php", "10.0.0.1:8080"),
        ("https://h:80/gw/cmq", "https://h:80/gw/cmq", "h:80"),
        ("http://[::1]:9100", "http://[::1]:9100/v2/index.php", "[::1]:9100"),
    ],
)
def test_request_target_path_and_signed_host(endpoint: str, url: str, host: str) -> None:
    got_url, got_host, path = request_target(endpoint)
    assert (got_url, got_host) == (url, host)
    assert path == urlsplit(url).path


@dataclass
class Relay:
    """Receives requests (as an HTTP proxy, or as a TLS front) and passes them on to ``target``
    with their Host header, path and body unchanged; remembers what it saw."""

    target: tuple[str, int]
    seen: list[tuple[str, str]] = field(default_factory=list)  # (request target, Host)
    server: ThreadingHTTPServer | None = None

    def start(self, tls: ssl.SSLContext | None = None) -> int:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host = self.headers.get("Host", "")
                outer.seen.append((self.path, host))
                path = urlsplit(self.path).path or self.path  # a proxy gets the absolute URL
                conn = http.client.HTTPConnection(*outer.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type") or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def cmq_target(emulator: Emulator) -> Iterator[Relay]:
    fwd = Relay(("127.0.0.1", emulator.cmq_port))
    yield fwd
    fwd.stop()


def _queue_with_one_message(emulator: Emulator, name: str) -> None:
    emulator.declare_queue(name, visibility=30)
    official_cmq_queue(emulator.cmq_endpoint, name).send_message(_message("hello"))


def _intake_settings(emulator: Emulator, queue: str, **options: Any) -> CmqIntakeSettings:
    return CmqIntakeSettings(
        endpoint=emulator.cmq_endpoint,
        queue=queue,
        secret_id=SecretStr(SECRET_ID),
        secret_key=SecretStr(SECRET_KEY),
        **options,
    )


def _message(body: str) -> object:
    from cmq.queue import Message

    return Message(body)


def test_the_documented_path_through_a_proxy_with_a_default_port(
    emulator: Emulator, cmq_target: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _queue_with_one_message(emulator, "via-proxy")
    port = cmq_target.start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # A host only the proxy can reach, with its default port written out: the Host sent and
    # the host signed must both be without it, or the emulator answers 4100.
    client = CmqClient("http://cmq-gz.example.invalid:80", SECRET_ID, SECRET_KEY)
    try:
        got = client.batch_receive("via-proxy", 16, 0)
    finally:
        client.close()
    assert [m.body for m in got] == ["hello"]
    assert got[0].next_visible_time > 0
    assert cmq_target.seen == [
        ("http://cmq-gz.example.invalid/v2/index.php", "cmq-gz.example.invalid")
    ]


def test_no_proxy_is_honoured(
    emulator: Emulator, cmq_target: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _queue_with_one_message(emulator, "direct")
    port = cmq_target.start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = CmqClient(emulator.cmq_endpoint, SECRET_ID, SECRET_KEY)
    try:
        assert [m.body for m in client.batch_receive("direct", 16, 0)] == ["hello"]
    finally:
        client.close()
    assert cmq_target.seen == []


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_requests_ca_bundle_is_honoured(
    emulator: Emulator, cmq_target: Relay, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _queue_with_one_message(emulator, "over-tls")
    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    port = cmq_target.start(tls)
    for var in ("HTTPS_PROXY", "https_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    endpoint = f"https://127.0.0.1:{port}"
    untrusted = CmqClient(endpoint, SECRET_ID, SECRET_KEY)
    with pytest.raises(CmqError) as err:
        untrusted.batch_receive("over-tls", 16, 0)
    assert err.value.transient and "SSLError" in str(err.value)
    untrusted.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    trusted = CmqClient(endpoint, SECRET_ID, SECRET_KEY)
    try:
        assert [m.body for m in trusted.batch_receive("over-tls", 16, 0)] == ["hello"]
    finally:
        trusted.close()
    assert cmq_target.seen[-1] == ("/v2/index.php", f"127.0.0.1:{port}")


def test_the_intake_warns_when_the_visibility_timeout_is_shorter_than_its_produce_wait(
    emulator: Emulator, broker: Broker, topic: str
) -> None:
    _queue_with_one_message(emulator, "short-visibility")
    emulator.declare_queue("short-visibility", visibility=5)
    settings = _intake_settings(emulator, "short-visibility", produce_timeout_s=20)
    client = quiet_client(broker.service_url)
    forwarder = IntakeForwarder(client, topic)
    intake = QueueIntake(settings, cmq_clients(settings), forwarder, Observers())
    try:
        with capture_logs() as logs:
            report = intake.move_once(wait_s=0)
    finally:
        forwarder.close()
        intake.close()
        client.close()
    assert report.moved == 1
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and "produce_timeout_s" in warned[0]["event"]
    assert 0 <= warned[0]["visible_again_in_s"] <= 5 and warned[0]["produce_timeout_s"] == 20


def test_the_broker_wait_is_bounded_and_the_push_receiver_answers_503_within_10s() -> None:
    """A broker that accepts the connection and never answers: the client alone would wait its
    30 s operation timeout; the intake waits what it is told, the URL receiver 10 s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    client = quiet_client(f"pulsar://127.0.0.1:{silent.getsockname()[1]}")
    forwarder = IntakeForwarder(client, "persistent://public/default/never")
    try:
        started = time.monotonic()
        with pytest.raises(ForwardError, match="did not open a producer"):
            forwarder.send(Outgoing(b"x", {}), wait_s=1.0)
        assert time.monotonic() - started < 8
        token = "push-token-0123456789"
        receiver = UrlReceiver(UrlIntakeSettings(token=SecretStr(token)), forwarder, Observers())
        started = time.monotonic()
        answer = receiver.accept(token, b'{"EventName":"TaskFinish"}', {})
        elapsed = time.monotonic() - started
        assert answer.status == 503
        # At most 10 s, well before CMQ's 15 s and the client's 30 s (sooner when the client's
        # own connection attempt, begun by the first send, gives up first: no lower bound).
        assert elapsed < 20, elapsed
    finally:
        forwarder.close()
        client.close()
        silent.close()


class _Moves(Observer):
    """Each move's size and time, in order, and an event per move."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.times: list[float] = []
        self.moved = threading.Semaphore(0)

    def intake_moved(self, queue: str, count: int) -> None:
        if count:
            self.sizes.append(count)
            self.times.append(time.monotonic())
            self.moved.release()


def test_after_a_partial_batch_the_loop_lingers_so_the_next_receive_carries_many(
    emulator: Emulator, broker: Broker, topic: str
) -> None:
    """One loop: the first message moves alone; the ten sent while the loop lingers all come in
    one receive, no sooner than the linger after the first. (Without a linger the loop is back
    in its long poll at once, and CMQ answers it as soon as the first of the ten arrives.)"""
    _queue_with_one_message(emulator, "linger")
    linger_s = 5.0
    settings = _intake_settings(emulator, "linger", loops=1, polling_wait_s=10, linger_s=linger_s)
    moves = _Moves()
    client = quiet_client(broker.service_url)
    forwarder = IntakeForwarder(client, topic)
    intake = QueueIntake(settings, cmq_clients(settings), forwarder, Observers([moves]))
    stop = threading.Event()
    loop = threading.Thread(target=intake.run, args=(stop,), daemon=True)
    loop.start()
    try:
        assert moves.moved.acquire(timeout=60)
        queue = official_cmq_queue(emulator.cmq_endpoint, "linger")
        for i in range(10):
            queue.send_message(_message(f"m{i}"))
        while sum(moves.sizes) < 11:
            assert moves.moved.acquire(timeout=60), moves.sizes
    finally:
        stop.set()
        forwarder.close()
        intake.close()
        client.close()
    assert moves.sizes == [1, 10]
    assert moves.times[1] - moves.times[0] >= linger_s
