"""Credentials: the refresh policy (a fake clock), and what the COS SDK actually sends with keys
that refresh, read from the wire by a small HTTP server and checked with the emulator's own
signature verifier."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from qcloud_cos import CosConfig, CosS3Client

from asrd.ci import CiClient, CiError
from asrd.config import CiSettings
from asrd.credentials import CredentialError, Credentials, Snapshot, StaticSource
from asrd.emulator.http import split_query
from asrd.emulator.keys import Credential
from asrd.emulator.signature import Verifier

from .support import Clock


@dataclass
class Rotating:
    """A provider that gives new keys at every fetch (or fails while ``down``)."""

    life_s: float = 100.0
    clock: Any = time.time
    down: bool = False
    issued: dict[str, Snapshot] = field(default_factory=dict)
    name: str = "test"
    hint: str = "test hint"
    recheck_s: float | None = None
    delay_s: float = 0.0

    def fetch(self) -> Snapshot:
        if self.down:
            raise CredentialError(self.name, "issuer down")
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow metadata service: callers race the refresh
        n = len(self.issued) + 1
        snap = Snapshot(f"AKIDtest{n:08d}", f"key-{n}", f"token-{n}", self.clock() + self.life_s)
        self.issued[snap.secret_id] = snap
        return snap


def no_jitter(low: float, high: float) -> float:
    return low


# -- the refresh policy -----------------------------------------------------------------------


def test_refreshes_ahead_of_expiry_by_the_larger_of_margin_and_share() -> None:
    clock = Clock()
    source = Rotating(life_s=3600, clock=clock)
    creds = Credentials(source, margin_s=300, fraction=0.1, clock=clock, uniform=no_jitter)
    first = creds.snapshot()
    clock.now += 3600 - 360 - 1  # 10 % of an hour (360 s) is more than 300 s
    assert creds.snapshot() is first
    clock.now += 2
    second = creds.snapshot()
    assert second.secret_id != first.secret_id
    assert len(source.issued) == 2


def test_a_failed_refresh_keeps_the_old_keys_until_they_expire_then_raises() -> None:
    clock = Clock()
    source = Rotating(life_s=1000, clock=clock)
    creds = Credentials(source, margin_s=300, clock=clock, uniform=no_jitter, retry_base_s=10)
    first = creds.snapshot()
    source.down = True
    clock.now += 800  # refresh due
    assert creds.snapshot() is first  # the refresh failed; the old keys still work
    fetched = len(source.issued)
    clock.now += 1  # inside the backoff: no new attempt
    assert creds.snapshot() is first
    clock.now += 200  # expired
    with pytest.raises(CredentialError, match="issuer down"):
        creds.snapshot()
    source.down = False
    clock.now += 120  # after the backoff the provider is asked again
    assert creds.snapshot().secret_id != first.secret_id
    assert len(source.issued) == fetched + 1


def test_one_refresh_in_flight_while_the_others_use_the_current_keys() -> None:
    clock = Clock()
    source = Rotating(life_s=100, clock=clock, delay_s=0.3)
    creds = Credentials(source, margin_s=10, clock=clock, uniform=no_jitter)
    creds.snapshot()
    clock.now += 95  # due, not expired
    seen: list[Snapshot] = []
    threads = [threading.Thread(target=lambda: seen.append(creds.snapshot())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(source.issued) == 2  # eight callers, one refresh
    assert all(s.secret_id in source.issued for s in seen)


def test_static_key_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    settings = ci_settings("http://127.0.0.1:1", token_file=str(token))
    source = StaticSource.of(settings)
    creds = Credentials(source)
    assert creds.snapshot().token == "first"
    token.write_text("second\n")  # rewritten in place, as Kubernetes rotates a Secret
    time.sleep(source.recheck_s or 0)
    assert creds.snapshot().token == "second"


# -- what the SDK sends -----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class Capture:
    """An HTTP server that answers CI and COS requests with an empty success and keeps what
    was sent."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw_path, _, raw_query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(
                    self.command,
                    unquote(raw_path),
                    split_query(raw_query),
                    {k.lower(): v for k, v in self.headers.items()},
                )
                with lock:
                    outer.requests.append(seen)
                body = b"<Response></Response>" if raw_path.startswith("/asr_jobs") else b""
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/xml")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[Capture]:
    server = Capture()
    yield server
    server.close()


def ci_settings(endpoint: str, **extra: Any) -> CiSettings:
    return CiSettings.model_validate(
        {
            "region": "ap-guangzhou",
            "bucket": "asrd-test-1250000000",
            "secret_id": "AKIDstatic",
            "secret_key": "static",
            "endpoint": endpoint,
            "callback": {"mq_name": "q"},
            **extra,
        }
    )


def test_the_sdk_alone_drops_a_refreshing_credentials_token(capture: Capture) -> None:
    """The defect worked around: with ``CredentialInstance`` the SDK signs with the instance's
    id and key but never sends its token (if this fails, the SDK was fixed)."""

    class Instance:
        secret_id, secret_key, token = "AKIDinstance", "key", "the-token"

    host, port = capture.endpoint.removeprefix("http://").split(":")
    conf = CosConfig(
        Region="ap-guangzhou", CredentialInstance=Instance(), IP=host, Port=int(port), Scheme="http"
    )
    CosS3Client(conf, retry=0).put_object(Bucket="asrd-test-1250000000", Key="k", Body=b"x")
    (sent,) = capture.requests
    assert "q-ak=AKIDinstance" in sent.headers["authorization"]
    assert "x-cos-security-token" not in sent.headers


def test_every_request_carries_the_token_of_the_key_it_is_signed_with(capture: Capture) -> None:
    source = Rotating(life_s=3.0)
    creds = Credentials(source, margin_s=1.0)
    client = CiClient(ci_settings(capture.endpoint), credentials=creds)
    # Requests go on until the keys have changed twice (a condition, not a time: a busy machine
    # sends fewer requests per second).
    deadline = time.monotonic() + 60.0
    while len(source.issued) < 3 and time.monotonic() < deadline:
        client.put_object("k", b"x")  # COS: x-cos-security-token
        client.get_jobs(["s1"])  # CI: x-ci-security-token
        time.sleep(0.05)
    assert len(source.issued) >= 3  # the keys changed while requests went on
    used = set()
    for sent in capture.requests:
        ak = sent.headers["authorization"].split("q-ak=")[1].split("&")[0]
        header = (
            "x-ci-security-token" if sent.path.startswith("/asr_jobs") else "x-cos-security-token"
        )
        assert sent.headers[header] == source.issued[ak].token, sent.path
        used.add(ak)
    assert len(used) >= 3


def test_a_refresh_racing_requests_never_pairs_an_id_with_another_key(capture: Capture) -> None:
    """Eight threads sign requests while another replaces the keys as fast as it can: every
    request verifies (by the emulator's verifier) with the key and token of its own id."""
    source = Rotating(life_s=3600)
    creds = Credentials(source)
    client = CiClient(ci_settings(capture.endpoint), credentials=creds)
    stop = threading.Event()

    def refresher() -> None:
        while not stop.is_set():
            creds.refresh()

    def requester() -> None:
        while not stop.is_set():
            client.put_object("k", b"x")

    threads = [threading.Thread(target=refresher)] + [
        threading.Thread(target=requester) for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    assert len(source.issued) > 10 and len(capture.requests) > 10
    verifier = Verifier(
        [Credential(s.secret_id, s.secret_key, s.token) for s in source.issued.values()]
    )
    for sent in capture.requests:
        failure = verifier.verify(sent.method, sent.path, sent.query, sent.headers, time.time())
        assert failure is None, failure


def test_refused_keys_are_an_auth_error_not_the_messages(capture: Capture) -> None:
    source = Rotating(life_s=3600)
    creds = Credentials(source)
    client = CiClient(ci_settings(capture.endpoint), credentials=creds)
    source.down = True
    creds._snap = None
    creds._next_try = 0
    with pytest.raises(CiError) as err:
        client.put_object("k", b"x")
    assert err.value.auth and err.value.transient


# -- a message that meets an outage -------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ack(self, m: Any) -> None:
        self.calls.append("ack")

    def retry(self, m: Any, attempt: int, delay_s: float) -> str:
        self.calls.append("retry")
        return ""

    def dead_letter(self, m: Any, reason: str, attempts: int) -> str:
        self.calls.append("dead_letter")
        return ""

    def release(self, m: Any) -> None:
        self.calls.append("release")


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
def test_a_paused_verdict_puts_messages_back_without_spending_attempts(
    tmp_path: Path, batch: bool
) -> None:
    """However many times a message meets refused keys, it is put back unacknowledged, the
    pause is reported, and its attempts stay where they were: it is never dead-lettered."""
    from asrd.broker import Inbound
    from asrd.config import PulsarSettings
    from asrd.ledger import open_ledger
    from asrd.observers import Observers
    from asrd.pipeline import Outcome, Verdict
    from asrd.worker import Worker

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = PulsarSettings(topic="t", max_attempts=2)
    paused: list[tuple[str, str]] = []
    refused = Verdict(Outcome.PAUSED, "CI refused asrd's keys: ExpiredToken", pause="credentials")
    transport = Transport()
    worker = Worker(
        settings,
        lambda bodies: [refused] * len(bodies),
        ledger,
        transport,
        Observers(),
        on_pause=lambda source, reason: paused.append((source, reason)),
    )
    messages = [Inbound(None, b"{}", "t", f"id{i}", 0) for i in range(3)]
    for _ in range(5):  # more than max_attempts
        if batch:
            worker.process_batch(messages)
        else:
            for m in messages:
                worker.process_batch([m])
    assert set(transport.calls) == {"release"} and len(transport.calls) == 15
    assert paused and paused[0] == ("credentials", refused.reason)
    # The next start of each message is its first.
    assert all(c.count == 1 for c in ledger.begin_attempts([m.key for m in messages]).values())
    ledger.close()


def test_an_outage_is_reported_once_and_ends_when_its_probe_passes() -> None:
    from asrd.observers import Observer, Observers
    from asrd.outage import Outage

    changes: list[tuple[str, str]] = []

    class Changes(Observer):
        def outage_changed(self, source: str, reason: str) -> None:
            changes.append((source, reason))

    works = threading.Event()

    def probe() -> None:
        if not works.is_set():
            raise RuntimeError("still refused")

    outage = Outage(Observers([Changes()]), probe_base_s=0.01, probe_max_s=0.05)
    before = time.monotonic()
    for _ in range(5):  # many messages meet the fault: one pause
        outage.pause("credentials", "keys refused", probe=probe)
    assert outage.paused("credentials") and not outage.paused("cmq")
    assert outage.reason() == "credentials: keys refused"
    outage.resume("credentials", started=before)  # a call begun before the pause proves nothing
    assert outage.paused()
    works.set()
    deadline = time.monotonic() + 30
    # The probe's thread resumes, then tells the observers: wait for both.
    while (outage.paused() or len(changes) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not outage.paused() and outage.reason() == ""
    assert changes == [("credentials", "keys refused"), ("credentials", "")]


def test_a_rewritten_token_file_is_sent_by_the_next_requests(
    tmp_path: Path, capture: Capture
) -> None:
    """``token_file`` rewritten in place (a renewed token, a rotated Secret): within a second
    the requests on the wire carry the new token, CI's and COS's alike."""
    token = tmp_path / "token"
    token.write_text("token-one\n")
    client = CiClient(ci_settings(capture.endpoint, token_file=str(token)))
    client.put_object("k", b"x")
    client.get_jobs(["s1"])
    token.write_text("token-two\n")

    def sent_new() -> bool:
        client.put_object("k", b"x")
        return capture.requests[-1].headers.get("x-cos-security-token") == "token-two"

    deadline = time.monotonic() + 30
    while not sent_new() and time.monotonic() < deadline:
        time.sleep(0.1)
    client.get_jobs(["s1"])
    first, *_, last_put, last_get = capture.requests
    assert first.headers["x-cos-security-token"] == "token-one"
    assert last_put.headers["x-cos-security-token"] == "token-two"
    assert last_get.headers["x-ci-security-token"] == "token-two"


def test_every_provider_the_configuration_names_is_registered() -> None:
    from typing import get_args

    from asrd.config import CredentialsProvider
    from asrd.credentials import PROVIDERS

    assert set(PROVIDERS) == set(get_args(CredentialsProvider))


def test_configuration_of_the_providers(tmp_path: Path) -> None:
    """A role needs no key in the configuration; AssumeRole needs its role; an unknown provider
    is one line naming the key (exit 78 in the CLI)."""
    from asrd.config import ConfigError, load

    path = tmp_path / "asrd.toml"

    def write(ci: str) -> Path:
        path.write_text(
            f'[ci]\nregion = "ap-guangzhou"\nbucket = "b-1250000000"\n{ci}\n'
            '[ci.callback]\nmq_name = "q"\n[pulsar]\ntopic = "t"\n'
            '[ledger]\nurl = "sqlite:////tmp/x.db"\n'
            f'[[sinks]]\nname = "f"\ntype = "file"\ndir = "{tmp_path}"\n'
        )
        return path

    settings = load(write('credentials = "cvm-role"'), {})
    assert settings.ci.credentials == "cvm-role" and settings.ci.secret_id is None
    assert settings.ci.metadata_url == "http://metadata.tencentyun.com/latest/meta-data/"
    assert settings.ci.sts_endpoint == "https://sts.tencentcloudapi.com"
    with pytest.raises(ConfigError, match="secret_id"):
        load(write('credentials = "static"'), {})
    with pytest.raises(ConfigError, match="role_arn"):
        load(write('credentials = "sts-assume-role"\nsecret_id = "a"\nsecret_key = "b"'), {})
    with pytest.raises(ConfigError, match=r"ci\.credentials"):
        load(write('credentials = "vault"'), {})
